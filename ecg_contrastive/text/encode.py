"""Batched, data-parallel forward of the frozen text encoder over length buckets.

Texts are sorted by token count and grouped by bucketed length (`bucket_length`: under
25% padding), then cut into batches of at most `batch_size` within each bucket, so
padding stays small and so does the number of distinct shapes, hence of XLA
compilations (at most two per bucket length). Rows are padded to a
multiple of the local device count and sharded over a 1-D mesh (sharding.make_mesh) of all local
devices; a BERT's parameters are replicated, a Llama-family model's are split over the
same devices (text/model.py). Dispatch is asynchronous: the host packs the
next batch while the devices run the current one.
"""

from __future__ import annotations

import collections
import dataclasses
from functools import partial

import flax.linen as nn
import jax
import numpy as np

from ecg_contrastive.models.pooling import check_pooling, pool
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated


def bucket_length(tokens: np.ndarray | int, max_length: int) -> np.ndarray:
  """Padded length of texts with `tokens` tokens (array or scalar, elementwise).

  Rounds up to a multiple of max(8, 2**(floor(log2(tokens)) - 2)): 8 up to 63 tokens,
  16 up to 127, 32 up to 255, ... (under 25% padding); never beyond max_length.
  """
  n = np.asarray(tokens, np.int64)
  bits = np.floor(np.log2(np.maximum(n, 1))).astype(np.int64) + 1  # n.bit_length()
  step = np.maximum(8, np.left_shift(1, np.maximum(bits - 3, 0)))
  return np.minimum(-(-n // step) * step, max_length)


@dataclasses.dataclass(frozen=True)
class Batch:
  indices: np.ndarray  # (n,) positions in the token-id list, n <= rows
  rows: int  # padded batch rows, a multiple of the device count
  length: int  # padded sequence length


def plan_batches(
  lengths: np.ndarray, batch_size: int, num_devices: int, max_length: int
) -> list[Batch]:
  """lengths (N,) token counts -> batches in increasing length order covering every index once.

  A batch never straddles two bucket lengths: it holds up to `batch_size` texts of one
  bucket, so no text is padded by more than the bucket step. Rows are rounded up to a
  multiple of `num_devices`. Shapes: at most two per bucket length (full batches and
  the bucket's remainder).
  """
  order = np.argsort(lengths, kind="stable")
  buckets = bucket_length(np.asarray(lengths)[order], max_length)
  batches = []
  for length in np.unique(buckets):
    in_bucket = order[buckets == length]  # contiguous: buckets are sorted
    for start in range(0, len(in_bucket), batch_size):
      idx = in_bucket[start : start + batch_size]
      batches.append(Batch(idx, -(-len(idx) // num_devices) * num_devices, int(length)))
  return batches


def pack(ids: list[np.ndarray], batch: Batch, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """-> input_ids, attention_mask, both (rows, length) int32; padding uses the pad token."""
  input_ids = np.full((batch.rows, batch.length), pad_id, np.int32)
  mask = np.zeros((batch.rows, batch.length), np.int32)
  for row, i in enumerate(batch.indices):
    input_ids[row, : len(ids[i])] = ids[i]
    mask[row, : len(ids[i])] = 1
  return input_ids, mask


@partial(jax.jit, static_argnums=(0, 1))
def _embed(
  module: nn.Module, pooling: str, params: dict, input_ids: jax.Array, mask: jax.Array
) -> jax.Array:
  """(rows, L) ids and mask -> (rows, D) float32 pooled embeddings; sharded like the inputs.

  Module-level with the module as a static argument, so calls with the same architecture
  and shapes (e.g. reports, then label prompts) share compilations.
  """
  hidden, pooled = module.apply({"params": params}, input_ids, mask)
  return pool(hidden, pooled, mask, pooling)


class Encoder:
  """Pooled embeddings of padded batches on all devices of `mesh` (default: this process's devices).

  params may be host arrays (replicated onto the mesh here: a BERT) or jax.Arrays already
  placed on the mesh (a Llama-family model split over it, text/model.py), used as they are.
  """

  def __init__(self, module: nn.Module, params: dict, pooling: str, mesh=None):
    check_pooling(pooling, module.with_pooler)
    self.dim = module.config.hidden_size
    self._module, self._pooling = module, pooling
    mesh = mesh if mesh is not None else make_mesh(jax.local_devices())
    self.num_devices = mesh.devices.size
    self._rows = data_sharding(mesh)
    self._params = jax.tree.map(
      lambda p: p if isinstance(p, jax.Array) else jax.device_put(p, replicated(mesh)), params
    )

  def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    """(rows, L) int32 each -> (rows, D) float32, computed asynchronously."""
    return _embed(
      self._module,
      self._pooling,
      self._params,
      jax.device_put(input_ids, self._rows),
      jax.device_put(mask, self._rows),
    )


def embed_token_ids(
  encoder: Encoder,
  ids: list[np.ndarray],
  *,
  batch_size: int,
  max_length: int,
  pad_id: int,
  progress: bool,
) -> tuple[np.ndarray, dict[str, int]]:
  """N token-id arrays -> (N, D) float32 embeddings in input order, and batching counts
  (tokens, padded_tokens, batches, shapes)."""
  from tqdm.auto import tqdm

  lengths = np.array([len(i) for i in ids], np.int64)
  batches = plan_batches(lengths, batch_size, encoder.num_devices, max_length)
  out = np.zeros((len(ids), encoder.dim), np.float32)
  pending = collections.deque()
  with tqdm(total=len(ids), desc="embedding texts", unit="text", disable=not progress) as bar:

    def finish() -> None:
      batch, result = pending.popleft()
      out[batch.indices] = np.asarray(result)[: len(batch.indices)]
      bar.update(len(batch.indices))

    for batch in batches:
      pending.append((batch, encoder(*pack(ids, batch, pad_id))))
      if len(pending) > 1:
        finish()
    while pending:
      finish()
  return out, {
    "tokens": int(lengths.sum()),
    "padded_tokens": sum(b.rows * b.length for b in batches),
    "batches": len(batches),
    "shapes": len({(b.rows, b.length) for b in batches}),
  }
