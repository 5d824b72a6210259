"""Host read rate of a split's rows: the ArrayRecord shards streamed (config.data.host_read='stream') with N reader
threads, against the int16 cache's memory map ('cache'), cold-ish and warm, at one batch size.

A batch is what BatchIterator asks a process for: B rows of the epoch's seeded permutation, sorted. Each row
of the table reads the same `--batches` batches twice: pass 'cold' right after the files it reads were dropped
from the page cache (posix_fadvise DONTNEED on those files only: nothing else on the machine is touched; pages
that another process holds mapped stay), pass 'warm' again at once. ECG/s counts rows delivered as int16
(5000, 12) in host memory; MB/s is their int16 bytes (120 kB each); shard MB/s the compressed bytes the
stream read for them (the split's shard bytes per record); CPU us/ECG the process's CPU time (all threads) per
row, which a busy machine inflates less than wall time: 1e6 / it is about what one free core delivers.
Nothing is placed on devices: this is the read alone (`bench pipeline` times the input path with the step).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

COLUMNS = [
  ("read", "read", ""),
  ("threads", "reader threads", ""),
  ("pass", "pass", ""),
  ("ecg_per_s", "ECG/s", ",.0f"),
  ("mb_per_s", "MB/s (int16)", ",.0f"),
  ("shard_mb_per_s", "shard MB/s (zstd)", ",.0f"),
  ("cpu_us_per_ecg", "CPU us/ECG", ",.0f"),
  ("seconds", "s", ".2f"),
]
ECG_BYTES = 5000 * 12 * 2


def _evict(files: list[str]) -> None:
  """Drops the clean page-cache pages of `files` (best effort: Linux honours it for unmapped pages)."""
  for path in files:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def _time(source, batches: list[np.ndarray], out: np.ndarray) -> tuple[float, float]:
  """(wall seconds, CPU seconds of this process, all threads) of reading `batches`."""
  start, cpu = time.perf_counter(), time.process_time()
  for rows in batches:
    source.read(rows, out=out[: len(rows)])
  return time.perf_counter() - start, time.process_time() - cpu


def run(
  dataset: str,
  split: str,
  data_dir: str | None,
  batch_size: int,
  num_batches: int,
  threads: list[int],
  seed: int = 0,
) -> list[dict[str, Any]]:
  from ecg_contrastive.data import cache, pipeline

  cached = pipeline.open_source(
    dataset, split, data_dir
  )  # builds the dataset and its cache if missing
  builder, _ = pipeline.prepare_dataset(dataset, data_dir)
  shards = [str(p) for p in builder.info.splits[split].filepaths]
  shard_bytes = sum(os.path.getsize(p) for p in shards) / builder.info.splits[split].num_examples
  n = len(cached)
  order = np.random.default_rng([seed, 0]).permutation(n)
  batches = [np.sort(order[i * batch_size : (i + 1) * batch_size]) for i in range(num_batches)]
  if len(batches[-1]) < batch_size:
    raise ValueError(f"{split} has {n} records, fewer than {num_batches} batches of {batch_size}")
  out = np.empty((batch_size, 5000, 12), np.int16)
  rows = []

  def measure(name: str, source, count: int | None, files: list[str]) -> None:
    _evict(files)
    for which in ("cold", "warm"):
      seconds, cpu = _time(source, batches, out)
      ecg_per_s = batch_size * num_batches / seconds
      rows.append(
        {
          "read": name,
          "threads": count,
          "pass": which,
          "ecg_per_s": ecg_per_s,
          "mb_per_s": ecg_per_s * ECG_BYTES / 1e6,
          "shard_mb_per_s": ecg_per_s * shard_bytes / 1e6 if name == "stream" else None,
          "seconds": seconds,
          "cpu_us_per_ecg": cpu / (batch_size * num_batches) * 1e6,
          "batch": batch_size,
          "rows": batch_size * num_batches,
        }
      )
      print(f"{name} threads={count} {which}: {ecg_per_s:,.0f} ECG/s ({seconds:.2f} s)", flush=True)

  measure(
    "cache (memmap)", cached, None, [cache.cache_files(builder, split)[0]]
  )  # none of it mapped yet
  for count in threads:
    source = pipeline.open_source(
      dataset, split, data_dir, host_read="stream", reader_threads=count
    )
    measure("stream", source, count, shards)
    source.close()
  return rows
