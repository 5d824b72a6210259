"""DeviceBatchIterator: a split's int16 waveforms placed on the mesh once; each batch gathered on the devices.

The split is sharded over the mesh axis 'data' as one (N', 5000, 12) int16 array, N' = N padded with zero
rows to a multiple of the device count; device k holds rows [k N'/n, (k+1) N'/n). Each process places only
its own devices' shards, reading those rows from the Source in chunks (host memory: one chunk at a time).

Batches are those of BatchIterator, byte for byte: the same seeded per-epoch order (batches.epoch_order), the
same rows per process (sorted within a process), the same 'index', columns, 'mask' and state, so a run may
resume under either placement. Only the waveforms come from elsewhere: the host builds the (B,) index as
BatchIterator does (tiny), and a jitted shard_map turns it into the batch on the devices. Each device takes
the batch's rows it holds (zeros elsewhere) and a reduce-scatter over 'data' sums the B rows (exactly one
device holds each row, so the sum is that row, bit for bit; int16 pairs travel as int32) and leaves each
device its b = B / n rows, sharded like the host pipeline's batches. Per step that moves B x 120 KB over the
interconnect, and each device needs a transient (B, 5000, 12) int16 buffer (123 MB at B 1024).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from ecg_contrastive.data.batches import BatchIterator, Source
from ecg_contrastive.sharding import DATA_AXIS, data_sharding

PLACE_CHUNK_BYTES = 256 << 20  # host memory per read while placing a shard


class DeviceBatchIterator(BatchIterator):
  """BatchIterator's batches (same arguments, keys, order, state) with the split resident on the devices.

  `ecg`: the placed split, int16 (N', 5000, 12) over 'data' (N' = N rounded up to a multiple of the device
  count; rows N.. are zeros).
  """

  def __init__(self, source: Source, **kwargs):
    super().__init__(source, **kwargs)
    mesh = self.sharding.mesh
    self.ecg = place_split(source, mesh)
    self._gather = _gather_fn(mesh, self.ecg.shape[0] // mesh.shape[DATA_AXIS])

  def _ecg(self, rows: np.ndarray, index: jax.Array) -> jax.Array:
    return self._gather(self.ecg, index)


def resident_rows(num_records: int, devices: int) -> int:
  """Rows each device holds: num_records rounded up to a multiple of `devices`, divided by it."""
  return -(-num_records // devices)


def place_split(source: Source, mesh: Mesh, chunk_bytes: int = PLACE_CHUNK_BYTES) -> jax.Array:
  """int16 (N', 5000, 12) of all of `source`, sharded over 'data' (zero rows pad N to N'); this process
  reads and places only the shards of its own devices, `chunk_bytes` of host memory at a time."""
  record = tuple(source.ecg.shape[1:])
  per_device = resident_rows(len(source), mesh.shape[DATA_AXIS])
  shape = (per_device * mesh.shape[DATA_AXIS],) + record
  sharding = data_sharding(mesh)
  chunk = max(1, min(per_device, chunk_bytes // (int(np.prod(record)) * 2)))
  placed: dict[int, jax.Array] = {}  # first row -> shard (devices on other mesh axes share it)
  shards = []
  for device, index in sharding.addressable_devices_indices_map(shape).items():
    start = index[0].start or 0
    if start not in placed:
      placed[start] = _place_rows(source, start, per_device, chunk, device)
    shards.append(jax.device_put(placed[start], device))
  return jax.make_array_from_single_device_arrays(shape, sharding, shards)


def _place_rows(source: Source, start: int, count: int, chunk: int, device) -> jax.Array:
  """int16 (count,) + record of rows start.. of the source on `device` (zeros past its end), by chunks."""
  record = tuple(source.ecg.shape[1:])
  on_device = SingleDeviceSharding(device)
  shard = jax.jit(lambda: jnp.zeros((count,) + record, jnp.int16), out_shardings=on_device)()
  for offset in range(0, count, chunk):
    rows = np.arange(start + offset, min(start + offset + chunk, start + count, len(source)))
    if not len(rows):
      break
    host = source.read(rows)  # fresh memory each chunk: the CPU client may alias it
    shard = _write(shard, jax.device_put(host, device), offset)
  return shard


@functools.partial(jax.jit, donate_argnums=0)
def _write(shard: jax.Array, rows: jax.Array, offset) -> jax.Array:
  return jax.lax.dynamic_update_slice_in_dim(shard, rows, offset, axis=0)


@functools.lru_cache(maxsize=16)
def _gather_fn(mesh: Mesh, per_device: int):
  """jit(ecg (N', ...) over 'data', index (B,) int32 over 'data', -1 = padding) -> (B, ...) over 'data'."""

  def gather(shard: jax.Array, index: jax.Array) -> jax.Array:
    index = jax.lax.all_gather(index, DATA_AXIS, tiled=True)  # (B,): the whole batch's rows
    local = index - jax.lax.axis_index(DATA_AXIS) * per_device
    mine = (index >= 0) & (local >= 0) & (local < per_device)
    rows = jnp.take(shard, jnp.clip(local, 0, per_device - 1), axis=0)
    rows = jnp.where(mine.reshape((-1,) + (1,) * (rows.ndim - 1)), rows, jnp.zeros_like(rows))
    words = _as_words(
      rows
    )  # int16 pairs as int32: one summand per row is nonzero, the sum is exact
    summed = jax.lax.psum_scatter(words, DATA_AXIS, scatter_dimension=0, tiled=True)
    return _from_words(summed, rows.shape[1:])

  spec = P(DATA_AXIS)
  mapped = jax.shard_map(gather, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
  return jax.jit(mapped, out_shardings=NamedSharding(mesh, spec))


def _as_words(rows: jax.Array) -> jax.Array:
  """int16 (B, ...) -> int32 (B, F/2) (the same bytes) when F, the values per row, is even; else widened."""
  flat = rows.reshape(rows.shape[0], -1)
  if flat.shape[1] % 2:
    return flat.astype(jnp.int32)
  return jax.lax.bitcast_convert_type(flat.reshape(flat.shape[0], -1, 2), jnp.int32)


def _from_words(words: jax.Array, record: tuple[int, ...]) -> jax.Array:
  if int(np.prod(record)) % 2:
    return words.astype(jnp.int16).reshape((words.shape[0],) + record)
  return jax.lax.bitcast_convert_type(words, jnp.int16).reshape((words.shape[0],) + record)
