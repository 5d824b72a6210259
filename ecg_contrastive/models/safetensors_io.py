"""Tensor-by-tensor reading of a Hugging Face safetensors checkpoint, single file or sharded.

A model directory holds `model.safetensors`, or `model.safetensors.index.json` naming the
shard file of every tensor (how every model above ~1B parameters is published). Each
file is memory-mapped and its JSON header parsed here (the format is an 8-byte header
length, a JSON header of name -> dtype, shape, byte offsets, then the raw bytes), so a
tensor is a lazy numpy view: indexing a slice of it reads only the pages of that slice,
and bfloat16 tensors stay bfloat16 (ml_dtypes) without a float32 copy of the model. Nothing
is read until a caller asks for a tensor (or a slice of one); the whole model is never
held in host memory.

Errors name the file: a directory with neither file, a shard named in the index but
absent, a truncated shard, a tensor of a dtype the text tower cannot use (e.g. int8
from a quantised checkpoint).
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from ecg_contrastive.errors import UserError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors dtype codes -> numpy; only floating types hold usable weights for the text tower
_FLOAT_DTYPES = {
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "F64": np.dtype(np.float64),
}
_REDO = "; copy the model directory again (e.g. save_pretrained(dir, safe_serialization=True))"


class TextModelError(UserError, ValueError):
  """A text model directory whose files cannot be used; the message names the file and what to do."""


def checkpoint_files(model_dir: str) -> str | None:
  """Path of the index (sharded) or the single file, whichever the directory holds; None if neither."""
  for name in (INDEX, SINGLE):
    path = os.path.join(model_dir, name)
    if os.path.isfile(path):
      return path
  return None


class _File:
  """One memory-mapped safetensors file: header entries and lazy tensor views."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
      size = os.path.getsize(path)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
      raise TextModelError(
        f"{path}: unreadable safetensors file (header: {type(e).__name__}: {e}){_REDO}"
      ) from None
    header.pop("__metadata__", None)
    self.start = 8 + n
    self.entries = header
    end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if self.start + end > size:
      raise TextModelError(
        f"{path}: unreadable safetensors file (truncated: {size} bytes, its header needs "
        f"{self.start + end}){_REDO}"
      )
    self._map = np.memmap(path, np.uint8, "r") if header else None

  def tensor(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    dtype = _FLOAT_DTYPES.get(entry["dtype"])
    if dtype is None:
      raise TextModelError(
        f"{self.path}: tensor {name} has dtype {entry['dtype']}, not a floating type "
        f"({', '.join(_FLOAT_DTYPES)}); quantised checkpoints are not supported: use the "
        "unquantised (bf16/fp16/fp32) weights"
      )
    lo, hi = entry["data_offsets"]
    return self._map[self.start + lo : self.start + hi].view(dtype).reshape(entry["shape"])


class Checkpoint:
  """The tensors of a model directory's safetensors checkpoint, by name, read lazily.

  `names` lists every tensor; `tensor(name)` is a read-only memory-mapped numpy view in the
  stored dtype (index it to read only a slice); `file_of(name)` names its file for messages.
  """

  def __init__(self, model_dir: str):
    path = checkpoint_files(model_dir)
    if path is None:
      raise FileNotFoundError(
        f"text model directory {model_dir!r} has neither {SINGLE} nor {INDEX}; point the "
        "config at a local Hugging Face model directory saved with safe_serialization=True"
      )
    self.model_dir = model_dir
    self._files: dict[str, _File] = {}
    if os.path.basename(path) == SINGLE:
      self._where = {n: SINGLE for n in self._open(SINGLE).entries}
      return
    try:
      with open(path, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
      raise TextModelError(
        f"{path}: not a safetensors index with a 'weight_map' ({type(e).__name__}: {e}){_REDO}"
      ) from None
    absent = sorted({s for s in weight_map.values() if not os.path.isfile(self._path(s))})
    if absent:
      raise TextModelError(
        f"{path} names shard files that are not in {model_dir!r}: {absent}; copy every shard "
        "of the checkpoint into the directory"
      )
    self._where = dict(weight_map)

  def _path(self, shard: str) -> str:
    return os.path.join(self.model_dir, shard)

  def _open(self, shard: str) -> _File:
    if shard not in self._files:
      self._files[shard] = _File(self._path(shard))
    return self._files[shard]

  @property
  def names(self) -> list[str]:
    return sorted(self._where)

  def file_of(self, name: str) -> str:
    return self._path(self._where[name])

  def _file(self, name: str) -> _File:
    file = self._open(self._where[name])
    if name not in file.entries:
      raise TextModelError(f"{file.path}: has no tensor {name}, which the index names in it{_REDO}")
    return file

  def tensor(self, name: str) -> np.ndarray:
    return self._file(name).tensor(name)

  def dtype_name(self, name: str) -> str:
    """The stored dtype code ('BF16', 'F32', ...)."""
    return self._file(name).entries[name]["dtype"]


def read_params(
  checkpoint: Checkpoint,
  shapes: dict,
  names: dict,
  stored: dict[str, str],
  dtype,
  sharding_of=None,
) -> dict:
  """A module's parameter tree read from `checkpoint`: shapes maps "a/b/c" paths to their abstract arrays,
  names each path to (canonical Hugging Face names, transpose), stored each canonical name to the file's own.
  Paths under "layers/" are stacked over layers; sharding_of(path, shape) places a parameter (None: numpy)."""
  from flax import traverse_util

  flat = {}
  for path, shape in shapes.items():
    hfs, transpose = names[path]
    flat[path] = read_param(
      checkpoint,
      [stored[hf] for hf in hfs],
      transpose,
      stacked=path.startswith("layers/"),
      shape=shape.shape,
      dtype=dtype,
      sharding=sharding_of(path, shape.shape) if sharding_of is not None else None,
    )
  return traverse_util.unflatten_dict(flat, sep="/")


def read_param(
  checkpoint: Checkpoint,
  names: list[str],
  transpose: bool,
  stacked: bool,
  shape: tuple[int, ...],
  dtype,
  sharding=None,
):
  """One parameter from its Hugging Face tensors -> numpy (sharding None) or a jax.Array placed in `sharding`.

  names: one tensor, or (stacked) one per layer, stacked on a new leading axis. transpose:
  PyTorch Linear weights are (out, in); Flax kernels (in, out). With a sharding, each
  device's block is read straight from the memory map by `jax.make_array_from_callback`
  (only the slice that device holds, and only for this process's devices), converted to
  `dtype` slice by slice: no host copy of the whole parameter. A shape that differs from
  `shape` raises TextModelError naming the tensor and its file.
  """
  import jax

  views = [checkpoint.tensor(n) for n in names]
  views = [v.T if transpose else v for v in views]
  got = ((len(views),) if stacked else ()) + views[0].shape
  if got != tuple(shape) or any(v.shape != views[0].shape for v in views):
    bad = next((n for n, v in zip(names, views) if v.shape != views[0].shape), names[0])
    raise TextModelError(
      f"{checkpoint.file_of(bad)}: {bad} gives shape {got} (transposed: {transpose}); "
      f"config.json implies {tuple(shape)}"
    )

  def block(index: tuple[slice, ...]) -> np.ndarray:
    if not stacked:
      return np.asarray(views[0][index], dtype)
    return np.stack([np.asarray(v[index[1:]], dtype) for v in views[index[0]]])

  if sharding is None:
    return block(tuple(slice(None) for _ in shape))
  return jax.make_array_from_callback(tuple(shape), sharding, block)
