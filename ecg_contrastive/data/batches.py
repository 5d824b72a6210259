"""BatchIterator: seeded per-epoch shuffle -> rows of this process -> global jax.Array batches, prefetched.

Every process computes the same order (seed, epoch) and reads only the rows of the global batch
that its devices hold; `jax.make_array_from_process_local_data` assembles the global array,
sharded over the mesh axis 'data'. Within a process's rows, indices are read in ascending order
(one sorted fancy-index of the memmap); the batch's 'index' says which record each row is.
A background thread reads and places batches ahead (`prefetch`); the state is the position of
the next batch to be returned, so a restored iterator continues at exactly that batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from ecg_contrastive.errors import DataError
from ecg_contrastive.sharding import DATA_AXIS, batch_sizes, data_sharding

_END = object()


class Source(Protocol):
  """What BatchIterator reads: pipeline.EcgSource, or anything with these (imports flow pipeline -> batches)."""

  name: str
  ecg: np.ndarray  # (n, 5000, 12) int16; only its shape[1:] is read here

  def __len__(self) -> int: ...

  def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


class BatchIterator:
  """Global batches of one split: dict of jax.Arrays sharded over the mesh axis 'data'.

  'ecg': int16 (B, 5000, 12); 'index': int32 (B,) record rows (-1 on padding); each name in
  `columns`: columns[name][index]; 'mask': bool (B,), only with drop_remainder=False (False on the
  padded rows of the last batch, whose ecg and columns are zeros).
  """

  _thread: threading.Thread | None = None

  def __init__(
    self,
    source: Source,
    *,
    global_batch_size: int,
    mesh: Mesh,
    seed: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    columns: dict[str, np.ndarray] | None = None,
    prefetch: int = 2,
    num_epochs: int | None = None,
  ):
    if DATA_AXIS not in mesh.axis_names:
      raise ValueError(
        f"the mesh needs an axis named {DATA_AXIS!r} to shard batches over; it has {mesh.axis_names}"
      )
    try:
      batch_sizes(
        global_batch_size, mesh
      )  # the one home of the rules: over processes and the mesh's devices
    except ValueError as e:
      raise ValueError(f"global_batch_size {global_batch_size}: {e}") from e
    n = len(source)
    if n == 0 or (drop_remainder and n < global_batch_size):
      raise DataError(
        f"{source.name} has {n} records, fewer than one batch of {global_batch_size}; lower "
        f"the batch size (config.batch_size / eval_batch_size)"
      )
    self.columns = {k: np.asarray(v) for k, v in (columns or {}).items()}
    for name, column in self.columns.items():
      if len(column) != n or name in ("ecg", "index", "mask"):
        raise ValueError(
          f"column {name!r}: needs one row per record ({n}) and a name other than ecg/index/mask; "
          f"got {len(column)} rows"
        )
    if prefetch < 1:
      raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    self.source, self.batch_size, self.seed, self.shuffle = source, global_batch_size, seed, shuffle
    self.drop_remainder, self.prefetch, self.num_epochs = drop_remainder, prefetch, num_epochs
    self.sharding = data_sharding(mesh)
    self._rows = _process_rows(self.sharding, global_batch_size)
    self._position = (0, 0)  # (epoch, batch) of the next batch __next__ returns
    self._ring: list = [
      (None, None),
      (None, None),
    ]  # reader-thread host buffers and their device copies
    self._turn = 0
    self._reuse_host = True

  @property
  def reuses_host_buffers(self) -> bool:
    """False once a device has aliased a host buffer (then every batch gets fresh host memory)."""
    return self._reuse_host

  def __len__(self) -> int:
    """Batches per epoch."""
    n = len(self.source)
    return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._thread is None:
      self._start()
    item = self._queue.get()
    if item is _END:
      self._queue.put(_END)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    position, batch = item
    self._position = self._after(position)
    return batch

  def get_state(self) -> dict:
    """JSON-serialisable position of the next batch (plus what must match on restore)."""
    epoch, batch = self._position
    return {
      "epoch": epoch,
      "batch": batch,
      "seed": self.seed,
      "global_batch_size": self.batch_size,
      "num_records": len(self.source),
      "shuffle": int(self.shuffle),
    }

  def set_state(self, state: dict) -> None:
    """Continues at the batch `state` points to; the order (seed, sizes, shuffle) must be the one saved."""
    mine = self.get_state()
    different = {
      k: (state.get(k), mine[k])
      for k in ("seed", "global_batch_size", "num_records", "shuffle")
      if state.get(k) is None or int(state[k]) != mine[k]
    }
    if different:
      raise DataError(
        f"cannot resume the data order: saved vs current {different}; resume with the run's own "
        "seed, batch size, dataset and shuffle setting (its config.json), or start in a new --workdir"
      )
    self.close()
    self._position = (int(state["epoch"]), int(state["batch"]))

  def close(self) -> None:
    """Stops the reader thread (a later next() restarts it at the current position)."""
    if self._thread is not None:
      self._stop.set()
      while self._thread.is_alive():
        try:
          self._queue.get_nowait()
        except queue.Empty:
          self._thread.join(timeout=0.05)
      self._thread = None

  def __del__(self):
    self.close()

  # ------------------------------------------------------------------ reader thread

  def _after(self, position: tuple[int, int]) -> tuple[int, int]:
    epoch, batch = position
    return (epoch + 1, 0) if batch + 1 >= len(self) else (epoch, batch + 1)

  def _order(self, epoch: int) -> np.ndarray:
    return epoch_order(self.seed, epoch, len(self.source), self.shuffle)

  def _start(self) -> None:
    self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(
      target=self._run, args=(self._position, self._queue, self._stop), daemon=True
    )
    self._thread.start()

  def _put(self, q: queue.Queue, stop: threading.Event, item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, position: tuple[int, int], q: queue.Queue, stop: threading.Event) -> None:
    try:
      epoch, batch = position
      while self.num_epochs is None or epoch < self.num_epochs:
        order = self._order(epoch)
        for b in range(batch, len(self)):
          if not self._put(
            q,
            stop,
            ((epoch, b), self._make(order[b * self.batch_size : (b + 1) * self.batch_size])),
          ):
            return
        epoch, batch = epoch + 1, 0
      self._put(q, stop, _END)
    except BaseException as e:  # noqa: BLE001 (handed to the consumer, raised by __next__)
      self._put(q, stop, e)

  def _make(self, rows: np.ndarray) -> dict[str, jax.Array]:
    """Global batch from the record rows of one batch (fewer than B only for the last, padded one)."""
    index = np.full(self.batch_size, -1, np.int64)
    index[: len(rows)] = rows
    local = index[self._rows]
    valid = int((local >= 0).sum())  # padding (-1) sits at the end
    local[:valid] = np.sort(local[:valid])
    arrays = {"index": local.astype(np.int32)}
    for name, column in self.columns.items():
      values = np.zeros((len(local),) + column.shape[1:], column.dtype)
      values[:valid] = column[local[:valid]]
      arrays[name] = values
    if not self.drop_remainder:
      arrays["mask"] = np.arange(len(local)) < valid
    batch = {k: self._global(v) for k, v in arrays.items()}
    return {"ecg": self._ecg(local[:valid], batch["index"]), **batch}

  def _global(self, local: np.ndarray) -> jax.Array:
    """The global (B, ...) array of which `local` holds this process's rows."""
    return jax.make_array_from_process_local_data(
      self.sharding, local, (self.batch_size,) + local.shape[1:]
    )

  def _ecg(self, rows: np.ndarray, index: jax.Array) -> jax.Array:
    """int16 (B, 5000, 12) of the batch: this process's valid `rows` (ascending; the padded rest is zeros)
    read from the source on the host and copied to the devices. `index`: the batch's global 'index'."""
    ecg = self._host_ecg(self._rows.stop - self._rows.start)
    self.source.read(rows, out=ecg[: len(rows)])
    ecg[len(rows) :] = 0
    placed = self._global(ecg)
    self._release_host_ecg(placed)
    return placed

  def _host_ecg(self, rows: int) -> np.ndarray:
    """A host buffer for the next batch's ECG rows, from a ring of two: the one whose device copy (two
    batches ago) has finished. Fresh memory for every batch once a device has aliased a host buffer."""
    self._turn ^= 1
    buffer, copied = self._ring[self._turn]
    if copied is not None:
      copied.block_until_ready()
    if buffer is None or not self._reuse_host:
      buffer = _copied_buffer((rows,) + self.source.ecg.shape[1:])
    self._ring[self._turn] = (buffer, None)
    return buffer

  def _release_host_ecg(self, ecg: jax.Array) -> None:
    """Remembers which device array copies out of the current buffer. If any shard aliases the buffer
    (zero-copy, as the CPU client does for some host alignments), buffers are never reused again."""
    buffer, _ = self._ring[self._turn]
    self._ring[self._turn] = (buffer, ecg)
    low, high = buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes
    if any(low <= s.data.unsafe_buffer_pointer() < high for s in ecg.addressable_shards):
      self._reuse_host = False


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool = True) -> np.ndarray:
  """The record rows of epoch `epoch` in the order batches take them: a permutation seeded by (seed, epoch),
  or 0..n-1 without shuffle. Every process and every placement (host or device) uses this one order."""
  return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def _copied_buffer(shape: tuple[int, ...]) -> np.ndarray:
  """An int16 host buffer at 16 bytes past a 64-byte boundary. JAX's CPU client aliases 64-byte-aligned
  host memory instead of copying it; a buffer that is overwritten two batches later must be copied."""
  nbytes = int(np.prod(shape)) * 2
  raw = np.empty(nbytes + 64, np.uint8)
  start = (16 - raw.ctypes.data) % 64
  return raw[start : start + nbytes].view(np.int16).reshape(shape)


def _process_rows(sharding: NamedSharding, batch_size: int) -> slice:
  """The contiguous rows of a global batch that this process's devices hold."""
  rows = sorted(
    {
      (s[0].start or 0, s[0].stop or batch_size)
      for s in sharding.addressable_devices_indices_map((batch_size,)).values()
    }
  )
  start, stop = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != stop - start:
    raise ValueError(
      f"this process's devices hold non-contiguous rows {rows} of the batch; order the mesh "
      "devices by process (jax.devices() order does)"
    )
  return slice(start, stop)
