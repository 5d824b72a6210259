"""Small helpers of the data tests: a tiny dataset folder, a record broken on purpose, a bad config.data value."""

from __future__ import annotations

import os
import shutil

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

import ecg_contrastive.data.builders  # noqa: F401  (registers the builders with TFDS)
from configs import default
from ecg_contrastive.config_check import ConfigError, check_values
from ecg_contrastive.data.builders.synthetic_ecg_ja import SyntheticEcgJa

DATASET = "synthetic_ecg_ja/tiny"
# the built-in dataset's version: the folder name under DATA_DIR/synthetic_ecg_ja/<config>/
SYNTH_VERSION = str(SyntheticEcgJa.VERSION)


def dataset_folder(data_dir: str) -> str:
  """<data_dir>/synthetic_ecg_ja/tiny/<version>."""
  return str(tfds.builder(DATASET, data_dir=data_dir).data_dir)


def copy_with_corrupt_record(data_dir: str, to: str, split: str = "test", index: int = 5) -> str:
  """A copy of the tiny dataset (without its caches) whose record `index` of `split` is not a tf.Example."""
  shutil.copytree(data_dir, to, ignore=shutil.ignore_patterns("ecg_cache"))
  folder = dataset_folder(to)
  (shard,) = [
    f for f in os.listdir(folder) if f.startswith(f"synthetic_ecg_ja-{split}.array_record")
  ]
  shard = os.path.join(folder, shard)
  reader = ArrayRecordReader(shard)
  records, options = reader.read_all(), reader.writer_options_string()
  reader.close()
  records[index] = b"\x0a\x03not a tf.Example"
  writer = ArrayRecordWriter(shard, options)
  for record in records:
    writer.write(record)
  writer.close()
  return to


def data_value_error(key: str, value) -> str:
  """The message of the ConfigError that check_values raises for the tiny config with config.data[key] = value."""
  config = default.get_config("tiny")
  config.data[key] = value
  try:
    check_values(config)
  except ConfigError as e:
    return str(e)
  raise AssertionError(f"config.data.{key}={value!r} passed check_values")
