"""On-disk cache of embedding tables, keyed by what determines their rows.

Key = sha256 of (model directory fingerprint, text set fingerprint, pooling, max_length,
dtype, prompt template, pooled layer, cache format). The model fingerprint hashes the contents of every file the model
directory holds except weight formats this project does not read (*.bin, *.h5, ...), so
new weights or a new vocabulary never reuse stale rows. Each entry is `<key>.npy`
(float32 (N, D)) plus `<key>.json` (what was embedded and the precompute summary), each
written whole (local: temporary file, then rename; gs://: one object); the .json is written
last and marks a complete entry. The cache folder may be gs:// (paths.py); the model
directory is local (the text tower loads from files). An 8B model's 16 GB of shards are hashed
once per process (about 10-20 s at 1-2 GB/s; memoised on path, size and mtime). With several processes, process 0
writes an entry and the others wait (precompute.embed_texts, paths.one_process_writes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from ecg_contrastive import paths

CACHE_FORMAT = 1
_UNREAD_WEIGHTS = (".bin", ".h5", ".msgpack", ".pt", ".pth", ".ckpt", ".onnx", ".ot")


def default_cache_dir() -> str:
  """$ECG_CONTRASTIVE_CACHE if set, else ~/.cache/ecg_contrastive/text."""
  return os.environ.get("ECG_CONTRASTIVE_CACHE") or os.path.expanduser(
    "~/.cache/ecg_contrastive/text"
  )


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
  """Content sha256 of one file; memoised per process on (path, size, mtime)."""
  del size, mtime_ns  # part of the memo key only
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def model_fingerprint(model_dir: str) -> str:
  """sha256 over (name, content digest) of the files in model_dir that can affect embeddings."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(model_dir)):
    path = os.path.join(model_dir, name)
    if name.startswith(".") or name.endswith(_UNREAD_WEIGHTS) or not os.path.isfile(path):
      continue
    st = os.stat(path)
    h.update(
      f"{name}\0{_file_digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)}\0".encode()
    )
  return h.hexdigest()


def text_fingerprint(texts: Sequence[str]) -> str:
  """sha256 of the texts in the given order (callers pass the sorted unique set)."""
  h = hashlib.sha256()
  for t in texts:
    h.update(t.encode("utf-8", "surrogatepass") + b"\0")
  return h.hexdigest()


def cache_key(
  model_fp: str,
  text_fp: str,
  pooling: str,
  max_length: int,
  dtype: str,
  template: str = "",
  layer: int = -1,
) -> str:
  return hashlib.sha256(
    f"{CACHE_FORMAT}|{model_fp}|{text_fp}|{pooling}|{max_length}|{dtype}|{template}|{layer}".encode()
  ).hexdigest()[:32]


def load(cache_dir: str, key: str, num_texts: int) -> tuple[np.ndarray, dict] | None:
  """(embeddings (num_texts, D), metadata) for a complete entry, else None. cache_dir may be gs://."""
  meta_path, array_path = (paths.join(cache_dir, f"{key}.{ext}") for ext in ("json", "npy"))
  try:
    meta = json.loads(paths.read_text(meta_path))
    embeddings = paths.np_load(array_path)
  except (FileNotFoundError, ValueError, OSError):
    return None
  if meta.get("key") != key or embeddings.shape[0] != num_texts or embeddings.dtype != np.float32:
    return None
  return embeddings, meta


def complete(cache_dir: str, key: str) -> bool:
  """Whether the entry's `<key>.json` (written last) exists."""
  return paths.exists(paths.join(cache_dir, f"{key}.json"))


def save(cache_dir: str, key: str, embeddings: np.ndarray, meta: dict) -> None:
  """Writes `<key>.npy` then `<key>.json` (meta plus the key), each whole (local: temporary file + rename)."""
  paths.makedirs(cache_dir)
  paths.np_save(paths.join(cache_dir, f"{key}.npy"), embeddings)
  paths.write_text(
    paths.join(cache_dir, f"{key}.json"),
    json.dumps({**meta, "key": key}, indent=2, ensure_ascii=False),
  )
