"""TFDS builder `synthetic_ecg_ja`: the built-in Japanese ECG-report dataset (no download).

    import tensorflow_datasets as tfds
    import ecg_contrastive.data.builders  # registers the builder
    tfds.builder("synthetic_ecg_ja/tiny", data_dir=...).download_and_prepare()

Records come from `ecg_contrastive.data.synthetic.synth`; splits are disjoint by patient (each split draws its
own patients). Shards are array_record (random access, no TensorFlow needed) and hold the same
records in the same order for the same version and config (their compressed bytes may differ between
processes). Generation runs chunks in worker processes (2 by default,
`ECG_CONTRASTIVE_WORKERS` to change; a split of one chunk runs inline), in order, so the output does
not depend on the worker count.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing

import tensorflow_datasets as tfds

from ecg_contrastive.data.builders.features import CONTRACT, ecg_report_features
from ecg_contrastive.data.builders.tf_free import plain_file_spill
from ecg_contrastive.data.builders.workers import worker_count
from ecg_contrastive.data.synthetic import synth

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


@dataclasses.dataclass
class SyntheticEcgConfig(tfds.core.BuilderConfig):
  num_records: int = 0  # over all splits
  seed: int = 0


def split_sizes(num_records: int) -> dict[str, int]:
  """Records per split: 80/10/10, the remainder going to train."""
  held_out = {s: int(num_records * f) for s, f in SPLIT_FRACTIONS.items() if s != "train"}
  return {"train": num_records - sum(held_out.values()), **held_out}


class SyntheticEcgJa(tfds.core.GeneratorBasedBuilder):
  """Synthetic 12-lead ECGs (500 Hz, 10 s, int16 microvolts) with Japanese readings."""

  VERSION = tfds.core.Version("1.4.0")
  RELEASE_NOTES = {
    "1.0.0": "Dipole-model ECGs, 32 primary findings, Japanese reports.",
    "1.1.0": "Finer atrial fibrillation waves (0.04-0.1 mV dipole).",
    "1.2.0": "2-4 premature beats per record with atrial / ventricular ectopy (was 1-3).",
    "1.3.0": "Fewer secondary findings: P(0, 1, 2) = 0.65 / 0.28 / 0.07 (was 0.45 / 0.40 / 0.15).",
    "1.4.0": (
      "Wider variety (issue 16). Unlabelled baseline wander (respiration + drift), mains and EMG in most"
      " records; 基線の動揺 / 交流障害 / 筋電図混入 only above a reader's level (noise.SEVERE_*). Normal ECGs"
      " over axis -30..+90, rate 50-99 with sinus arrhythmia, varied P / QRS / T, early repolarisation."
      " PVCs from outflow-tract / left-ventricular / any focus, varied width, a quarter multifocal; AF fine"
      " or coarse at 55-150 per minute; varied RBBB / LBBB timing and LVH strain; wider LAD / RAD; per-record"
      " chest-electrode placement and per-patient heart rotation in the torso."
    ),
  }
  BUILDER_CONFIGS = [
    SyntheticEcgConfig(
      name="tiny", description="320 records: tests and smoke runs.", num_records=320
    ),
    SyntheticEcgConfig(
      name="small", description="2,000 records: end-to-end tests.", num_records=2_000
    ),
    SyntheticEcgConfig(
      name="demo", description="20,000 records: the built-in demo.", num_records=20_000
    ),
    SyntheticEcgConfig(
      name="large",
      description="200,000 records: input-pipeline and scaling runs.",
      num_records=200_000,
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "demo"

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=f"Synthetic {CONTRACT} with Japanese ECG reports.",
      features=ecg_report_features(),
      supervised_keys=None,
      homepage="https://github.com/ecg_contrastive",
    )

  def _download_and_prepare(self, *args, **kwargs):
    with plain_file_spill():  # splits > 1 GB spill to disk while shuffling; no TensorFlow here
      return super()._download_and_prepare(*args, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {
      split: self._generate_examples(split, n)
      for split, n in split_sizes(self.builder_config.num_records).items()
    }

  def _generate_examples(self, split: str, n_records: int):
    seed, chunks = self.builder_config.seed, range(synth.num_chunks(n_records))
    workers = min(worker_count(), len(chunks))
    if workers <= 1:
      parts = (synth.generate_chunk(seed, split, n_records, c) for c in chunks)
      yield from _examples(parts)
      return
    context = multiprocessing.get_context("spawn")  # never fork a process that may run JAX threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      yield from _examples(
        pool.map(synth.generate_chunk, *zip(*[(seed, split, n_records, c) for c in chunks]))
      )


def _examples(parts):
  for records in parts:
    for i, record_id in enumerate(records.record_id):
      yield (
        record_id,
        {
          "ecg": records.ecg[i],
          "report": records.report[i],
          "labels": records.labels[i],
          "primary_label": records.primary_label[i],
          "record_id": record_id,
          "patient_id": records.patient_id[i],
        },
      )
