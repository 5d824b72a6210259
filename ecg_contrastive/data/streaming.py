"""Host mode at scale: a split read straight from its TFDS ArrayRecord shards, no full copy on any host.

    source = pipeline.open_source("synthetic_ecg_ja/demo", "train", host_read="stream", reader_threads=4)
    source.read(np.array([3, 1, 4]))   # int16 (3, 5000, 12): the same bytes as the int16 cache's rows

BatchIterator asks each process for the rows of the global batch that its devices hold, so a streamed
process reads only its share of every batch (1 / process count), from shards on local disk or gs://
(array_record reads GCS itself; the path layer names and sizes them). A read groups its records by
shard and splits them over `reader_threads` threads, each calling the shard's thread-safe random-access
reader (`readahead_buffer_size:0`: one zstd chunk per record) and cutting the waveform's bytes out of
the serialized tf.train.Example without decoding the rest (`ecg_bytes`).

Row k of a split is its k-th record that decodes, as in the cache: the record index
(`<dataset dir>/ecg_cache/<split>.meta.json`, the same file the cache writes beside a local dataset)
holds the fingerprint, the metadata columns and the skipped records, and is made once by a full
decode (`cache.scan`, the cache's own rules) by process 0, or by `python -m ecg_contrastive.data.prepare`.
It is small (no waveforms) and lives beside the dataset, on gs:// too.

host_cache="share": records this host has read are kept in a local sparse file (`ShareCache`), so a
record is fetched from the shards once per host. With a global shuffle per epoch a host's share is
a different 1/P of the split every epoch, so the cache fills towards the whole split: after E epochs it
holds 1 - (1 - 1/P)^E of it (P = 16: 6% after one epoch, 96% after 50), and the disk holds that much.
It pays when the shards are remote and a job runs many epochs on one set of hosts; it is not kept
across runs (a fresh unlinked file per process), so no stale rows survive a changed dataset.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import uuid
from collections.abc import Sequence

import numpy as np

from ecg_contrastive import paths
from ecg_contrastive.data import cache
from ecg_contrastive.ecg.signal import NUM_LEADS, NUM_SAMPLES
from ecg_contrastive.errors import DataError

ECG_BYTES = NUM_SAMPLES * NUM_LEADS * 2
READER_OPTIONS = (
  "readahead_buffer_size:0,max_parallelism:0"  # random access; our threads parallelise
)
log = logging.getLogger(__name__)


def index_path(dataset_dir: str, split: str) -> str:
  """The record index of `split`: `<dataset dir>/ecg_cache/<split>.meta.json` (local or gs://)."""
  return paths.join(dataset_dir, "ecg_cache", f"{split}.meta.json")


def is_indexed(builder, split: str) -> bool:
  """Whether the record index of `split` is there and matches the dataset (nothing to scan)."""
  path = index_path(str(builder.data_dir), split)
  return cache.load_meta(path, cache.fingerprint(builder, split)) is not None


def load_or_build_index(builder, split: str) -> tuple[dict, list[dict]]:
  """(record index of `split`, skipped records: the builder's, then those that do not decode), scanning the
  split once (process 0) when the index is missing or stale."""
  path, expected = index_path(str(builder.data_dir), split), cache.fingerprint(builder, split)

  def scan() -> None:
    log.info("indexing %s/%s into %s (once; no waveforms are copied)", builder.name, split, path)
    paths.makedirs(paths.join(str(builder.data_dir), "ecg_cache"))
    cache.write_meta(path, expected, *cache.scan(builder.as_data_source(split=split)))

  paths.one_process_writes(
    f"record index of {builder.info.full_name}:{split}",
    lambda: cache.load_meta(path, expected) is not None,
    scan,
  )
  meta = cache.load_meta(path, expected)
  if meta is None:
    raise DataError(
      f"the record index just written at {path} does not read back; check that folder"
    )
  return meta, cache.split_skips(builder, split, meta)


def record_rows(num_examples: int, meta: dict) -> np.ndarray:
  """int64 (num_records,): the shard record (0..num_examples-1) of each row, skipping the undecodable ones."""
  keep = np.ones(num_examples, bool)
  keep[[s["index"] for s in meta["skipped"]]] = False
  rows = np.flatnonzero(keep)
  if len(rows) != meta["num_records"]:
    raise DataError(
      f"record index: {num_examples} records minus {len(meta['skipped'])} skipped is not "
      f"{meta['num_records']}; delete the ecg_cache folder beside the dataset to rebuild it"
    )
  return rows


class _Shape:
  """What BatchIterator reads of `source.ecg` (shape, dtype); indexing reads records like source.read."""

  def __init__(self, source: StreamingSource):
    self._source = source
    self.dtype, self.ndim = np.dtype(np.int16), 3

  @property
  def shape(self) -> tuple[int, int, int]:
    return (len(self._source), NUM_SAMPLES, NUM_LEADS)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, key) -> np.ndarray:
    """Rows only: ecg[i], ecg[a:b], ecg[[i, j]]."""
    if isinstance(key, (int, np.integer)):
      return self._source.read(np.array([key]))[0]
    return self._source.read(np.arange(len(self._source))[key])

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    """The whole split, read (np.asarray(source.ecg)); what a full copy would hold."""
    ecg = self._source.read(np.arange(len(self._source)))
    return ecg if dtype is None else ecg.astype(dtype)


class StreamingSource:
  """Random access to the ECGs of one split read from its shards: the Source of batches.BatchIterator.

  shards: (path, records) per shard in split order; rows: shard record of each row (`record_rows`);
  meta: pipeline.SplitMeta; skipped: as EcgSource.skipped. `ecg` has the shape and dtype only.
  """

  def __init__(
    self,
    shards: Sequence[tuple[str, int]],
    rows: np.ndarray,
    meta,
    skipped: list[dict],
    name: str,
    reader_threads: int = 4,
    share_cache: ShareCache | None = None,
  ):
    if len(rows) != len(meta.record_id):
      raise DataError(f"{name}: {len(rows)} rows but {len(meta.record_id)} metadata rows")
    if reader_threads < 1:
      raise ValueError(f"reader_threads must be >= 1, got {reader_threads}")
    self.meta, self.skipped, self.name, self.reader_threads = meta, skipped, name, reader_threads
    self.rows, self.share_cache = np.asarray(rows, np.int64), share_cache
    self._paths = [os.fspath(p) for p, _ in shards]
    self._starts = np.concatenate([[0], np.cumsum([n for _, n in shards])]).astype(np.int64)
    self._readers: list = [None] * len(shards)
    self._lock = threading.Lock()
    self._pool = (
      concurrent.futures.ThreadPoolExecutor(reader_threads, thread_name_prefix="ecg-reader")
      if reader_threads > 1
      else None
    )
    self.ecg = _Shape(self)

  def __len__(self) -> int:
    return len(self.rows)

  def __repr__(self) -> str:
    return (
      f"StreamingSource({self.name}, {len(self)} records from {len(self._paths)} shard(s), "
      f"{self.reader_threads} reader thread(s), {len(self.skipped)} skipped)"
    )

  def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 (len(indices), 5000, 12) for record rows `indices` (any order, repeats allowed).

    out: optional int16 array of that shape to read into."""
    indices, out = cache.read_target(self, indices, out)
    wanted = np.arange(len(indices))
    if self.share_cache is not None:
      wanted = self.share_cache.take(indices, out)
    if len(wanted):
      self._fetch(indices[wanted], out, wanted)
      if self.share_cache is not None:
        self.share_cache.put(indices[wanted], out[wanted])
    return out

  def close(self) -> None:
    """Closes the shard readers, the thread pool and the share cache (a later read reopens the readers)."""
    if self.share_cache is not None:
      self.share_cache.close()
      self.share_cache = None
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None
    with self._lock:
      for reader in self._readers:
        if reader is not None:
          reader.close()
      self._readers = [None] * len(self._paths)

  # ------------------------------------------------------------------ shard reads

  def _fetch(self, rows: np.ndarray, out: np.ndarray, slots: np.ndarray) -> None:
    """out[slots[i]] = waveform of row rows[i]; records read in shard order, split over the threads."""
    records = self.rows[rows]
    order = np.argsort(records, kind="stable")
    parts = [p for p in np.array_split(order, min(self.reader_threads, len(order))) if len(p)]
    if self._pool is None or len(parts) == 1:
      for part in parts:
        self._fetch_part(records[part], out, slots[part])
      return
    for done in [self._pool.submit(self._fetch_part, records[p], out, slots[p]) for p in parts]:
      done.result()

  def _fetch_part(self, records: np.ndarray, out: np.ndarray, slots: np.ndarray) -> None:
    """One thread's records (ascending): one reader.read(positions) call per shard they fall in."""
    shard_of = np.searchsorted(self._starts, records, side="right") - 1
    for shard in np.unique(shard_of):
      mine = shard_of == shard
      positions = (records[mine] - self._starts[shard]).tolist()
      for slot, record, serialized in zip(
        slots[mine], records[mine], self._reader(shard).read(positions)
      ):
        try:
          waveform = ecg_bytes(serialized)
          if len(waveform) != ECG_BYTES:
            raise ValueError(f"ecg is {len(waveform)} bytes, not {ECG_BYTES}")
        except ValueError as e:
          raise DataError(
            f"{self.name}: record {record} ({self._paths[shard]}) does not read as int16 "
            f"({NUM_SAMPLES}, {NUM_LEADS}) ({e}), although the record index listed it as good: "
            "the shards changed; delete the ecg_cache folder beside the dataset to re-index"
          ) from e
        out[slot] = np.frombuffer(waveform, np.int16).reshape(NUM_SAMPLES, NUM_LEADS)

  def _reader(self, shard: int):
    reader = self._readers[shard]
    if reader is None:
      from array_record.python.array_record_module import ArrayRecordReader

      with self._lock:
        reader = self._readers[shard]
        if reader is None:
          reader = ArrayRecordReader(
            self._paths[shard], READER_OPTIONS, file_reader_buffer_size=32768
          )
          self._readers[shard] = reader
    return reader


# ----------------------------------------------------------------------------- tf.train.Example, ecg only


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("truncated varint")
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      return result, pos
    shift += 7


def _fields(buf: bytes, start: int, end: int):
  """(field number, start, end) of each length-delimited field of the message buf[start:end]."""
  pos = start
  while pos < end:
    tag, pos = _varint(buf, pos)
    kind = tag & 7
    if kind == 2:
      size, pos = _varint(buf, pos)
      if pos + size > end:
        raise ValueError("field runs past its message")
      yield tag >> 3, pos, pos + size
      pos += size
    elif kind == 0:
      _, pos = _varint(buf, pos)
    elif kind in (1, 5):
      pos += 8 if kind == 1 else 4
    else:
      raise ValueError(f"wire type {kind}")


def ecg_bytes(serialized: bytes, key: bytes = b"ecg") -> memoryview:
  """The bytes of feature `key` (a one-value bytes_list, as TFDS stores int16 with Encoding.BYTES) of a
  serialized tf.train.Example; ValueError if it is not there. The other features are not decoded."""
  view = memoryview(serialized)
  for field, start, end in _fields(serialized, 0, len(serialized)):  # Example.features
    if field != 1:
      continue
    for entry, e_start, e_end in _fields(serialized, start, end):  # Features.feature (map entries)
      if entry != 1:
        continue
      name = value = None
      for part, p_start, p_end in _fields(serialized, e_start, e_end):
        if part == 1:
          name = view[p_start:p_end]
        elif part == 2:
          value = (p_start, p_end)
      if name != key or value is None:
        continue
      for kind, l_start, l_end in _fields(serialized, *value):  # Feature.bytes_list
        if kind == 1:
          values = [view[a:b] for f, a, b in _fields(serialized, l_start, l_end) if f == 1]
          if len(values) == 1:
            return values[0]
      raise ValueError(f"feature {key.decode()!r} is not a one-value bytes_list")
  raise ValueError(f"no feature {key.decode()!r}")


# ----------------------------------------------------------------------------- this host's share, on local disk


class ShareCache:
  """Records this process has read, kept in a local sparse file of int16 (5000, 12) rows at row x 120 kB, with a
  bitmap of the rows it holds. The file is unlinked as soon as it is opened: its disk space is what it holds and
  returns to the disk when the process ends, however it ends. Plain reads and writes, not a memory map: a full
  disk is an OSError (logged once; the cache stops growing), not a SIGBUS."""

  def __init__(self, folder: str, num_records: int, name: str):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"share-{os.getpid()}-{uuid.uuid4().hex[:8]}.ecg")
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(self._fd, num_records * ECG_BYTES)  # sparse: no block is written yet
    self.held = np.zeros(num_records, bool)
    self.folder, self.name, self.growing = folder, name, True
    log.info(
      "%s: records read on this host are kept in an unlinked sparse file in %s (host_cache='share')",
      name,
      folder,
    )

  def take(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fills out[i] for each rows[i] held; returns the positions i still to read."""
    held = self.held[rows]
    for i in np.flatnonzero(held):
      if os.preadv(self._fd, [out[i]], int(rows[i]) * ECG_BYTES) != ECG_BYTES:
        raise DataError(
          f"{self.name}: the share cache in {self.folder} read short; set data.host_cache='none'"
        )
    return np.flatnonzero(~held)

  def put(self, rows: np.ndarray, ecg: np.ndarray) -> None:
    """Keeps ecg[i] as row rows[i] (ecg: int16 (len(rows), 5000, 12), C-contiguous rows)."""
    if not self.growing:
      return
    try:
      for row, waveform in zip(rows, ecg):
        os.pwrite(self._fd, np.ascontiguousarray(waveform), int(row) * ECG_BYTES)
        self.held[row] = True
    except OSError as e:
      self.growing = False
      log.warning(
        "%s: the share cache in %s stops growing at %d records: %s",
        self.name,
        self.folder,
        int(self.held.sum()),
        e,
      )

  def close(self) -> None:
    if self._fd >= 0:
      os.close(self._fd)
      self._fd = -1

  def __del__(self):
    if hasattr(self, "_fd"):
      self.close()
