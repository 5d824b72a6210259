"""The input pipeline for every dataset: TFDS split -> int16 cache -> shuffled, process-sharded global batches.

    source = open_source("synthetic_ecg_ja/demo", "train")          # builds the dataset if missing
    batches = BatchIterator(source, global_batch_size=256, mesh=mesh, seed=0)
    batch = next(batches)   # {'ecg': int16 (256, 5000, 12) sharded over 'data', 'index': int32 (256,)}

Per-record proto decoding reads ~4k ECG/s on 2 cores, below what training needs, so on first
open a split's array_record shards are decoded once into a contiguous int16 .npy beside the
dataset (memory-mapped; validated against a fingerprint of the shards; rebuilt when stale). A
batch is then one sorted fancy-index of the memmap, read in a background thread and placed on
the mesh as a global jax.Array; int16 travels, the model scales to float on the device.

host_read="stream" (config.data.host_read) reads each process's rows straight from the shards instead,
with no full copy on any host (`streaming.StreamingSource`: same rows, bytes and batches as the cache).
`python -m ecg_contrastive.data.prepare` builds a dataset and its cache or record index before a job.

data_dir may be gs:// for a dataset prepared elsewhere and copied there (array_record writes
local files only); its int16 cache is then on this host (`cache.cache_folder`). With several JAX
processes, process 0 prepares the dataset and builds the cache while the others wait
(`paths.one_process_writes`); docs/data.md, "Many processes, one data build".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from ecg_contrastive import paths
from ecg_contrastive.data import cache, streaming
from ecg_contrastive.data.batches import BatchIterator  # noqa: F401  (public API)
from ecg_contrastive.errors import DataError

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "ecg_contrastive", "tfds")
log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitMeta:
  """Small per-record metadata of one split, in record order (row i of the split)."""

  reports: list[str]
  labels: list[list[str]]
  primary_label: list[str]
  record_id: list[str]
  patient_id: list[str]


class EcgSource:
  """Random access to the ECGs of one split: int16 (n, 5000, 12) memory-mapped, plus its SplitMeta.

  skipped: records left out because they could not be decoded, each {'index', 'record_id', 'reason'}.
  """

  def __init__(self, ecg: np.ndarray, meta: SplitMeta, skipped: list[dict], name: str):
    if len(ecg) != len(meta.record_id):
      raise DataError(
        f"{name}: {len(ecg)} ECGs but {len(meta.record_id)} metadata rows; delete the cache "
        f"folder beside the dataset to rebuild it"
      )
    self.ecg, self.meta, self.skipped, self.name = ecg, meta, skipped, name

  def __len__(self) -> int:
    return len(self.ecg)

  def __repr__(self) -> str:
    return f"EcgSource({self.name}, {len(self)} records, {len(self.skipped)} skipped)"

  def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 (len(indices), 5000, 12) for record rows `indices` (any order; ascending reads fastest).

    out: optional int16 array of that shape to read into (saves allocating fresh pages per batch).
    """
    indices, out = cache.read_target(self, indices, out)
    if np.all(indices[1:] >= indices[:-1]):
      # mode="clip": indices are checked above; the default "raise" buffers the whole output (4-6x slower)
      return np.take(self.ecg, indices, axis=0, out=out, mode="clip")
    order = np.argsort(indices, kind="stable")
    out[order] = self.ecg[indices[order]]
    return out


def known_datasets() -> dict[str, type]:
  """Dataset name -> TFDS builder class, for every dataset the project can open."""
  from ecg_contrastive.data.builders import BUILDERS

  return dict(BUILDERS)


def data_dir_default() -> str:
  """$ECG_CONTRASTIVE_DATA, else ~/.cache/ecg_contrastive/tfds."""
  return os.fspath(paths.path(os.environ.get("ECG_CONTRASTIVE_DATA") or DEFAULT_DATA_DIR))


HOST_READS = ("cache", "stream")  # config.data.host_read
HOST_CACHES = ("none", "share")  # config.data.host_cache (with host_read="stream")


def open_source(
  dataset: str,
  split: str,
  data_dir: str | None = None,
  source_dir: str | None = None,
  *,
  host_read: str = "cache",
  reader_threads: int = 4,
  host_cache: str = "none",
) -> EcgSource | streaming.StreamingSource:
  """Opens `split` of `dataset` ("name" or "name/config"), preparing the dataset and its cache if needed.

  source_dir: the folder of the raw records, for the real-data datasets (ptbxl, mimic_iv_ecg,
  ecg_manifest); used only when the dataset is not prepared yet (TFDS's manual_dir).
  host_read: "cache" (a full int16 copy of the split on this host, memory-mapped) or "stream" (records
  read from the shards as batches need them, `reader_threads` threads; host_cache="share" keeps what
  this host read in a local file). Both give the same rows, bytes and metadata.
  """
  if host_read not in HOST_READS or host_cache not in HOST_CACHES:
    raise DataError(
      f"host_read={host_read!r}, host_cache={host_cache!r}: use host_read in {HOST_READS} and "
      f"host_cache in {HOST_CACHES}"
    )
  builder, _ = prepare_dataset(dataset, data_dir, source_dir)
  if split not in builder.info.splits:
    raise DataError(
      f"{dataset}: no split {split!r}; it has {sorted(builder.info.splits)}; set config.train_split "
      "and config.eval_splits to those"
    )
  if host_read == "stream":
    return _stream(builder, dataset, split, reader_threads, host_cache)
  ecg, meta, skipped = cache.load_or_build(builder, split)
  return EcgSource(ecg, SplitMeta(**meta), skipped, f"{dataset}:{split}")


def prepare_dataset(
  dataset: str, data_dir: str | None = None, source_dir: str | None = None
) -> tuple[object, bool]:
  """(TFDS builder of the prepared `dataset`, whether this process built it): the dataset's shards are
  written once (process 0; the others wait) when missing. data_dir and source_dir as in open_source."""
  import tensorflow_datasets as tfds

  name = dataset.split("/")[0]
  known = known_datasets()
  if name not in known:
    raise DataError(
      f"unknown dataset {dataset!r}; known datasets: {sorted(known)} (use 'name/config', "
      f"e.g. 'synthetic_ecg_ja/tiny')"
    )
  data_dir = os.fspath(paths.path(data_dir)) if data_dir else data_dir_default()
  builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    if source_dir and needs_source(name):
      _warn_if_other_source(builder, source_dir)
    return builder, False

  def prepare() -> None:
    if paths.is_remote(data_dir):
      raise DataError(
        f"{dataset} is not prepared in {data_dir}: array_record writes local files only, so a "
        "dataset is built into a local data_dir and copied to the bucket (docs/data.md, "
        "'Many processes, one data build')"
      )
    builder.download_and_prepare(download_config=source_download_config(builder, source_dir))

  built = paths.one_process_writes(f"dataset {dataset}", builder.is_prepared, prepare)
  if not built:
    log.info("%s: prepared by process 0 in %s; not built here", dataset, data_dir)
  # reads what was written
  return tfds.builder(dataset, data_dir=data_dir, file_format="array_record"), built


def _stream(builder, dataset: str, split: str, reader_threads: int, host_cache: str):
  """The split read from its shards (streaming.StreamingSource), with its record index."""
  index, skipped = streaming.load_or_build_index(builder, split)
  info = builder.info.splits[split]
  rows = streaming.record_rows(int(info.num_examples), index)
  log.info(
    "%s:%s: %d records read from %d shard(s) in %s as batches need them (host_read='stream', "
    "%d reader threads, host_cache=%r); no full local copy",
    dataset,
    split,
    len(rows),
    len(info.filepaths),
    builder.data_dir,
    reader_threads,
    host_cache,
  )
  share = None
  if host_cache == "share":
    folder = cache.cache_folder(str(builder.data_dir))
    share = streaming.ShareCache(folder, len(rows), f"{dataset}:{split}")
  return streaming.StreamingSource(
    list(zip(map(str, info.filepaths), info.shard_lengths)),
    rows,
    SplitMeta(**{k: index[k] for k in cache.META_COLUMNS}),
    skipped,
    f"{dataset}:{split}",
    reader_threads,
    share,
  )


def needs_source(name: str) -> bool:
  """Whether dataset `name` is built from a local folder of raw records (config.source_dir)."""
  from ecg_contrastive.data.builders.local_source import LocalEcgBuilder

  return issubclass(known_datasets()[name], LocalEcgBuilder)


def source_download_config(builder, source_dir: str | None):
  """TFDS DownloadConfig with manual_dir = source_dir, after checking the folder (real-data datasets)."""
  import tensorflow_datasets as tfds

  from ecg_contrastive.data.builders.local_source import SourceError

  if not needs_source(builder.name):
    return tfds.download.DownloadConfig()
  if not source_dir:
    raise SourceError(
      f"{builder.name} is built from a local folder of records and is not prepared in "
      f"{builder.data_dir_root}: set config.source_dir (--config.source_dir=/path/to/the/folder, "
      f"or source_dir= of open_source); docs/data.md says what each dataset's folder holds"
    )
  type(builder).check_source(source_dir)
  return tfds.download.DownloadConfig(manual_dir=source_dir)


def _warn_if_other_source(builder, source_dir: str) -> None:
  """A prepared dataset is never rebuilt from another folder: say so when source_dir differs."""
  path = paths.join(str(builder.data_dir), cache.BUILD_SKIPS_FILE)
  if not paths.exists(path):
    return
  built_from = json.loads(paths.read_text(path)).get("source_dir")
  if built_from and os.path.abspath(source_dir) != built_from:
    log.warning(
      "%s in %s was built from %s, not from source_dir=%s; delete that folder to rebuild from the new one",
      builder.name,
      builder.data_dir,
      built_from,
      source_dir,
    )
