"""A split's ECGs decoded once into a contiguous int16 .npy (memory-mapped), with its metadata.

Files, in `<dataset dir>/ecg_cache/` (or, when the dataset is on gs://, in a local folder: a memory map
needs a local file; see `cache_folder`): `<split>.ecg.npy` (int16 (n, 5000, 12)) and `<split>.meta.json`
(fingerprint, metadata columns, skipped records). The fingerprint names the dataset, config,
version, split size and each shard's name and size; a cache whose fingerprint, shape or file size
does not match is rebuilt. Records that cannot be decoded, or whose ECG is not int16 (5000, 12),
are skipped, counted and listed with their reason (a warning names them). The real-data builders
list the records they skipped while building in `<dataset dir>/skipped_records.json`; those come
first in the skip list of their split (with "stage": "build" and no index, as they have no row).

`scan` is the one decode of a split and its skip rules; the streamed source (streaming.py) indexes a split
with it too, writing only the .meta.json.

With several JAX processes, process 0 builds a missing cache while the others wait, then they open
it (a process that cannot see process 0's file, e.g. a host-local folder on another host, builds its
own copy); files are written under a unique temporary name and renamed, so a half-written cache is
never read and no two processes write one file (`paths.one_process_writes`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid

import numpy as np

from ecg_contrastive import paths
from ecg_contrastive.ecg.signal import NUM_LEADS, NUM_SAMPLES
from ecg_contrastive.errors import DataError

CACHE_VERSION = 1
READ_BATCH = 256
META_COLUMNS = ("reports", "labels", "primary_label", "record_id", "patient_id")
BUILD_SKIPS_FILE = "skipped_records.json"
log = logging.getLogger(__name__)


def fingerprint(builder, split: str) -> dict:
  """What the cache of `split` was built from; any change means the cache is stale."""
  info = builder.info.splits[split]
  return {
    "cache_version": CACHE_VERSION,
    "dataset": builder.name,
    "config": builder.builder_config.name if builder.builder_config else None,
    "version": str(builder.version),
    "split": split,
    "num_examples": int(info.num_examples),
    "shards": [[os.path.basename(str(p)), paths.path(p).stat().length] for p in info.filepaths],
  }


def cache_folder(dataset_dir: str) -> str:
  """`<dataset dir>/ecg_cache`, or a local folder when the dataset dir is remote (gs://): the int16
  cache is memory-mapped, which needs a file on this host."""
  if not paths.is_remote(dataset_dir):
    return os.path.join(dataset_dir, "ecg_cache")
  folder = paths.local_dir("ecg_cache", dataset_dir)
  log.info(
    "dataset %s is remote: its int16 cache goes to the local folder %s (a memory map needs a local file)",
    dataset_dir,
    folder,
  )
  return folder


def cache_files(builder, split: str) -> tuple[str, str]:
  """(int16 .npy, .meta.json) of the cache of `split` (local files)."""
  folder = cache_folder(str(builder.data_dir))
  return os.path.join(folder, f"{split}.ecg.npy"), os.path.join(folder, f"{split}.meta.json")


def load_meta(meta_path: str, expected: dict) -> dict | None:
  """The metadata file of a split (local or gs://) when it matches `expected`; None when absent, stale or damaged."""
  try:
    meta = json.loads(paths.read_text(meta_path))
  except (OSError, ValueError):
    return None
  return meta if isinstance(meta, dict) and meta.get("fingerprint") == expected else None


def _load(ecg_path: str, meta_path: str, expected: dict):
  """(memmap, meta) of a valid cache, or None when absent, stale or damaged."""
  meta = load_meta(meta_path, expected)
  if meta is None:
    return None
  try:
    ecg = np.load(ecg_path, mmap_mode="r")  # raises if the file is shorter than its header says
  except (OSError, ValueError):
    return None
  if ecg.dtype != np.int16 or ecg.shape != (meta["num_records"], NUM_SAMPLES, NUM_LEADS):
    return None
  return ecg, meta


def is_built(builder, split: str) -> bool:
  """Whether the cache of `split` is there and matches the dataset (nothing to build)."""
  return _load(*cache_files(builder, split), fingerprint(builder, split)) is not None


def load_or_build(builder, split: str) -> tuple[np.ndarray, dict[str, list], list[dict]]:
  """(int16 memmap (n, 5000, 12), metadata columns, skipped records) of `split`, building the cache if needed."""
  ecg_path, meta_path = cache_files(builder, split)
  expected = fingerprint(builder, split)

  def decode() -> None:
    log.info("decoding %s/%s into %s (once)", builder.name, split, ecg_path)
    build(builder.as_data_source(split=split), ecg_path, meta_path, expected)

  # the barrier name is the same on every process (ecg_path may be host-local)
  paths.one_process_writes(
    f"int16 cache of {builder.info.full_name}:{split}",
    lambda: _load(ecg_path, meta_path, expected) is not None,
    decode,
  )
  loaded = _load(ecg_path, meta_path, expected)
  if loaded is None:
    raise DataError(
      f"the cache just written at {ecg_path} does not read back; check free disk space there "
      "(or set $ECG_CONTRASTIVE_DATA / config.data_dir to a disk with room)"
    )
  ecg, meta = loaded
  return ecg, {k: meta[k] for k in META_COLUMNS}, split_skips(builder, split, meta)


def split_skips(builder, split: str, meta: dict) -> list[dict]:
  """The skipped records of `split`, as a source lists them: the builder's (`build_skips`), then those the scan
  of the split found (meta: its .meta.json, from the int16 cache or the streamed record index); a warning
  names the first few."""
  skipped = build_skips(str(builder.data_dir), split) + meta["skipped"]
  if skipped:
    log.warning(
      "%s/%s: %d record(s) skipped, e.g. %s",
      builder.name,
      split,
      len(skipped),
      [(s["record_id"], s["reason"]) for s in skipped[:3]],
    )
  return skipped


def read_target(
  source, indices: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(int64 indices, array to read into) for a read of record rows `indices` of `source` (pipeline.EcgSource or
  streaming.StreamingSource: name, len, and `ecg` with shape (n, 5000, 12) and dtype int16). IndexError naming
  the source when a row is outside [0, len(source)); `out` is allocated (len(indices), 5000, 12) when None."""
  indices = np.asarray(indices, np.int64)
  if indices.size and (indices.min() < 0 or indices.max() >= len(source)):
    raise IndexError(
      f"{source.name}: record indices must be in [0, {len(source)}), got "
      f"[{indices.min()}, {indices.max()}]"
    )
  if out is None:
    out = np.empty((len(indices),) + tuple(source.ecg.shape[1:]), source.ecg.dtype)
  return indices, out


def build_skips(dataset_dir: str, split: str) -> list[dict]:
  """Records of `split` the builder skipped (from BUILD_SKIPS_FILE, if the builder writes one), each
  {'index': None, 'stage': 'build', 'record_id', 'patient_id', 'path', 'reason'}."""
  path = paths.join(dataset_dir, BUILD_SKIPS_FILE)
  if not paths.exists(path):
    return []
  listed = json.loads(paths.read_text(path))["skipped"]
  return [
    {"index": None, "stage": "build", **{k: v for k, v in s.items() if k != "split"}}
    for s in listed
    if s["split"] == split
  ]


def _problem(example) -> str | None:
  """Why a decoded example cannot be used, or None."""
  if isinstance(example, Exception):
    return f"decode error: {type(example).__name__}: {example}"
  ecg = example["ecg"]
  if ecg.dtype != np.int16 or ecg.shape != (NUM_SAMPLES, NUM_LEADS):
    return f"ecg is {ecg.dtype} {ecg.shape}, expected int16 ({NUM_SAMPLES}, {NUM_LEADS})"
  try:
    for key in ("report", "primary_label", "record_id", "patient_id"):
      example[key].decode("utf-8")
    for label in example["labels"]:
      label.decode("utf-8")
  except (UnicodeDecodeError, AttributeError) as e:
    return f"text field is not UTF-8: {e}"
  return None


def _read(source, indices: list[int]) -> list:
  """Decoded examples of `indices`; a record that fails to decode is returned as its exception."""
  try:
    return source.__getitems__(indices)
  except Exception:  # find the bad record(s) one by one
    out = []
    for i in indices:
      try:
        out.append(source[i])
      except Exception as e:  # noqa: BLE001 (any decoder failure marks the record corrupt)
        out.append(e)
    return out


def scan(source, ecg: np.ndarray | None = None) -> tuple[dict[str, list], list[dict]]:
  """Decodes every record of `source` (a TFDS data source): (metadata columns of the kept records, skipped
  records {'index', 'record_id', 'reason'}). With `ecg` (int16 (len(source), 5000, 12), writable), kept
  record k's waveform goes to ecg[k]. Row k of a split is its k-th kept record, here and in the streamed
  source (streaming.StreamingSource)."""
  n = len(source)
  columns = {k: [] for k in META_COLUMNS}
  skipped = []
  for start in range(0, n, READ_BATCH):
    indices = list(range(start, min(n, start + READ_BATCH)))
    for i, example in zip(indices, _read(source, indices)):
      reason = _problem(example)
      if reason:
        record_id = example["record_id"] if isinstance(example, dict) else b"?"
        skipped.append(
          {"index": i, "record_id": record_id.decode("utf-8", "replace"), "reason": reason}
        )
        continue
      if ecg is not None:
        ecg[len(columns["record_id"])] = example["ecg"]
      columns["reports"].append(example["report"].decode("utf-8"))
      columns["labels"].append([label.decode("utf-8") for label in example["labels"]])
      for key in ("primary_label", "record_id", "patient_id"):
        columns[key].append(example[key].decode("utf-8"))
  return columns, skipped


def write_meta(
  meta_path: str, expected: dict, columns: dict[str, list], skipped: list[dict]
) -> None:
  """The split's metadata file (local or gs://, written whole): fingerprint, record count, skips, columns."""
  paths.write_text(
    meta_path,
    json.dumps(
      {
        "fingerprint": expected,
        "num_records": len(columns["record_id"]),
        "skipped": skipped,
        **columns,
      },
      ensure_ascii=False,
    ),
  )


def build(source, ecg_path: str, meta_path: str, expected: dict) -> None:
  """Decodes every record of `source` (a TFDS data source) into the cache files (local), atomically:
  unique temporary names, then renames, the .meta.json last."""
  os.makedirs(os.path.dirname(ecg_path), exist_ok=True)
  n = len(source)
  tmp = f"{ecg_path}.tmp-{uuid.uuid4().hex}.npy"
  ecg = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(n, NUM_SAMPLES, NUM_LEADS))
  columns, skipped = scan(source, ecg)
  kept = len(columns["record_id"])
  ecg.flush()
  if kept < n:  # drop the rows of skipped records
    compact = np.lib.format.open_memmap(
      tmp + ".compact.npy", mode="w+", dtype=np.int16, shape=(kept, NUM_SAMPLES, NUM_LEADS)
    )
    compact[:] = ecg[:kept]
    compact.flush()
    del compact
    os.replace(tmp + ".compact.npy", tmp)
  del ecg
  os.replace(tmp, ecg_path)
  write_meta(meta_path, expected, columns, skipped)
