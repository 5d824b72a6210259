"""DeviceBatchIterator: a split's int16 waveforms placed on the mesh once; each batch gathered on the devices.

The split is sharded over the mesh axis 'data' as one (N', 5000, 12) int16 array, N' = N padded with zero
rows to a multiple of the device count; device k holds rows [k N'/n, (k+1) N'/n). Each process places only
its own devices' shards, reading those rows from the Source in chunks (host memory: one chunk at a time).

Batches are those of BatchIterator, byte for byte: the same seeded per-epoch order (batches.epoch_order), the
same rows per process (sorted within a process), the same 'index', columns, 'mask' and state, so a run may
resume under either placement. Only the waveforms come from elsewhere: the host builds the (B,) index as
BatchIterator does (tiny), and a jitted shard_map turns it into the batch on the devices. Sorting lines a
batch up with the shards: device j's rows of a sorted batch lie mostly in the shard device j itself holds, a
few in its neighbours'. So each device takes its rows from its own shard, and only the others travel: the
host works out from the index which neighbours send how many rows (batch_routes), and the devices send just
those (ppermute of a few rows, padded to a power of two). Per step a device reads b = B / n rows locally
and the interconnect carries the boundary rows, not the batch.
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
  count; rows N.. are zeros). placed: that array already made by place_split(source, mesh), to share it.
  """

  def __init__(self, source: Source, *, placed: jax.Array | None = None, **kwargs):
    super().__init__(source, **kwargs)
    mesh = self.sharding.mesh
    self.ecg = place_split(source, mesh) if placed is None else placed
    self._devices = mesh.shape[DATA_AXIS]
    self._per_device = resident_rows(len(source), self._devices)
    if (
      self.ecg.shape[:1] != (self._per_device * self._devices,)
      or self.ecg.sharding != self.sharding
    ):
      raise ValueError(
        f"placed: {self.ecg.shape} over {self.ecg.sharding}; use place_split(source, mesh) of this source"
      )
    self._blocks = _process_blocks(self.sharding, self.batch_size)
    self._routes: tuple[tuple[int, int], ...] = ()

  def precompile(self, epochs: int = 1) -> int:
    """Compiles now the gathers that epochs 0..epochs-1 will use (else each compiles when next() first meets
    it); returns how many there are (a few: batch_routes rounds them)."""
    routes = {
      batch_routes(
        global_index(order[start : start + self.batch_size], self.batch_size, self._blocks),
        self._per_device,
        self._devices,
      )
      for order in (self._order(epoch) for epoch in range(epochs))
      for start in range(0, len(self) * self.batch_size, self.batch_size)
    }
    index = self._global(np.zeros(self._rows.stop - self._rows.start, np.int32))
    for route in routes:
      _gather_fn(self.sharding.mesh, self._per_device, route)(self.ecg, index).block_until_ready()
    return len(routes)

  def _make(self, rows: np.ndarray) -> dict[str, jax.Array]:
    self._routes = batch_routes(
      global_index(rows, self.batch_size, self._blocks), self._per_device, self._devices
    )
    return super()._make(rows)

  def __next__(self) -> dict[str, jax.Array]:
    batch = super().__next__()
    batch["ecg"] = batch["ecg"]()  # the gather, dispatched in this thread (see _ecg)
    return batch

  def _ecg(self, rows: np.ndarray, index: jax.Array):
    """The gather of this batch, to be dispatched by __next__ in the consumer's thread. With several processes
    every one must launch computations with collectives in the same order (else two of them may each wait
    in a different one); the trainer's thread launches gather, step, gather, step... on every process."""
    return functools.partial(
      _gather_fn(self.sharding.mesh, self._per_device, self._routes), self.ecg, index
    )


def global_index(rows: np.ndarray, batch_size: int, blocks: list[slice]) -> np.ndarray:
  """The batch's global 'index' (B,) as BatchIterator makes it: the batch's record rows, -1 past their end, each
  process's block of rows (`blocks`) sorted."""
  index = np.full(batch_size, -1, np.int64)
  index[: len(rows)] = rows
  for block in blocks:
    part = index[block]
    valid = int((part >= 0).sum())  # padding sits at the end
    part[:valid] = np.sort(part[:valid])
  return index


def batch_routes(index: np.ndarray, per_device: int, devices: int) -> tuple[tuple[int, int], ...]:
  """What the gather moves between devices for the batch `index` (global, -1 = padding): ((shift, rows), ...).

  Device j's row held by device j - s (mod n) travels by shift s; every device sends `rows` rows per shift (the
  most any device sends, padding the rest). Routes are rounded so that few distinct ones occur (each is one
  compilation): the shifts are a window +-1, +-2, +-4, ... (all n - 1 once it reaches half the mesh) and the
  rows a power of two, at least b / 8 (b = B / n). A sorted single-process batch needs shifts +-1 only: device
  j's rows lie in its own shard but for a few at the boundaries."""
  b = len(index) // devices
  rows = np.flatnonzero(index >= 0)
  shift = (rows // b - index[rows] // per_device) % devices
  away = shift != 0
  if not away.any():
    return ()
  farthest = int(np.minimum(shift, devices - shift).max())
  reach = 1 << (farthest - 1).bit_length()
  most = int(
    np.unique(np.stack([rows[away] // b, shift[away]]), axis=1, return_counts=True)[1].max()
  )
  count = min(b, 1 << max(most - 1, b // 8 - 1, 0).bit_length())
  shifts = range(1, devices) if 2 * reach >= devices else (*range(1, reach + 1), *range(-reach, 0))
  return tuple(sorted((s % devices, count) for s in shifts))


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
  shard = jnp.zeros((count,) + record, jnp.int16, device=on_device)
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


def _process_blocks(sharding: NamedSharding, batch_size: int) -> list[slice]:
  """The rows of a global batch that each process's devices hold, in row order (all processes)."""
  spans: dict[int, list[tuple[int, int]]] = {}
  for device, index in sharding.devices_indices_map((batch_size,)).items():
    rows = index[0]
    spans.setdefault(device.process_index, []).append((rows.start or 0, rows.stop or batch_size))
  return sorted(
    (slice(min(a for a, _ in s), max(b for _, b in s)) for s in spans.values()),
    key=lambda block: block.start,
  )


@functools.lru_cache(maxsize=64)
def _gather_fn(mesh: Mesh, per_device: int, routes: tuple[tuple[int, int], ...]):
  """jit(ecg (N', ...) over 'data', index (B,) int32 over 'data', -1 = padding) -> (B, ...) over 'data'.

  Each device takes the rows of its block of the batch that its own shard holds (zeros for the rest); then for
  each (shift, count) of `routes` every device sends the (at most `count`) rows that its s-th neighbour wants and
  it holds, with their positions, and the receiver writes them in (ppermute)."""
  devices = mesh.shape[DATA_AXIS]

  def gather(shard: jax.Array, index: jax.Array) -> jax.Array:
    b = index.shape[0]
    index = jax.lax.all_gather(index, DATA_AXIS, tiled=True)  # (B,): the whole batch's rows
    me = jax.lax.axis_index(DATA_AXIS)

    def wanted_by(
      device,
    ):  # rows of `device`'s block as rows of this shard, and which ones it holds
      wanted = jax.lax.dynamic_slice_in_dim(index, device * b, b)
      local = wanted - me * per_device
      return jnp.clip(local, 0, per_device - 1), (wanted >= 0) & (local >= 0) & (local < per_device)

    local, mine = wanted_by(me)
    out = jnp.take(shard, local, axis=0)
    out = jnp.where(mine.reshape((-1,) + (1,) * (out.ndim - 1)), out, jnp.zeros_like(out))
    for shift, count in routes:
      local, mine = wanted_by((me + shift) % devices)
      (positions,) = jnp.nonzero(mine, size=count, fill_value=b)  # b: an empty slot
      rows = jnp.take(shard, local[jnp.minimum(positions, b - 1)], axis=0)
      perm = [(k, (k + shift) % devices) for k in range(devices)]
      rows, positions = (jax.lax.ppermute(x, DATA_AXIS, perm) for x in (rows, positions))
      out = out.at[positions].set(rows, mode="drop")
    return out

  spec = P(DATA_AXIS)
  mapped = jax.shard_map(gather, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
  return jax.jit(mapped, out_shardings=NamedSharding(mesh, spec))
