"""`placement`: the training input in host placement against device placement, side by side in one run.

Same split, batch size, seed and record order for both (they give the same batches, tests/test_device_resident.py):
  host placement     data.batches.BatchIterator: the reader thread reads the batch's rows from the int16 memmap and
                     copies them to the devices (what the trainer uses when the split does not fit the devices)
  device placement   data.resident.DeviceBatchIterator: the split placed on the mesh once (the time it took is
                     reported); per batch the host sends a (B,) index and the devices gather the rows
Timed: next(batches) + block_until_ready of the whole batch, as fast as it goes (the input path only). Windows
of the two alternate (host, device, host, ...) so a change of load on a shared machine hits both. With --step,
the project's step fed by each iterator is timed the same way (one compiled step for both). On CPU devices the
"device" memory is host memory too: device placement there shows the cost of the gather against the cost of the
host read and copy, standing in for HBM.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np

from bench.results import Column
from bench.rows import timed_columns, timed_row
from bench.timing import InputRun, Timing, time_windows
from bench.workload import Workload, random_batches, random_table

log = logging.getLogger("bench")
STEP_KEYS = ("ecg", "report_row")  # what the step reads

COLUMNS: list[Column] = timed_columns(
  "path", "ms per batch", [("gb_per_s", "GB/s of int16", ".2f")]
) + [
  ("vs_host", "x host", ".2f"),
  ("place_s", "placing the split (s)", ".1f"),
]


def run(setup: InputRun, workload: Workload | None = None) -> list[dict[str, Any]]:
  """Rows: each placement's input path alone, then (with a workload) the step fed by each."""
  from ecg_contrastive.data import pipeline
  from ecg_contrastive.data.batches import BatchIterator
  from ecg_contrastive.data.resident import DeviceBatchIterator, place_split
  from ecg_contrastive.sharding import make_mesh

  batch_size = setup.batch_size
  source = pipeline.open_source(setup.dataset, setup.split, setup.data_dir)
  mesh = make_mesh()
  table_rows = workload.table_rows if workload else 1
  report_rows = np.random.default_rng(setup.seed).integers(
    0, table_rows, len(source), dtype=np.int32
  )
  start = time.perf_counter()
  placed = jax.block_until_ready(place_split(source, mesh))
  place_s = time.perf_counter() - start
  log.info(
    "placed %s (%d records) on %d devices in %.1f s", source.name, len(source), mesh.size, place_s
  )
  kwargs = dict(
    global_batch_size=batch_size,
    mesh=mesh,
    seed=setup.seed,
    columns={"report_row": report_rows},
    prefetch=setup.prefetch,
  )
  iterators = {
    "host placement": BatchIterator(source, **kwargs),
    "device placement": DeviceBatchIterator(source, placed=placed, **kwargs),
  }
  start = time.perf_counter()
  gathers = iterators["device placement"].precompile(epochs=1)
  log.info(
    "compiled the %d gathers of the first epoch in %.1f s", gathers, time.perf_counter() - start
  )
  load = [os.getloadavg()[0]]
  timings = _alternating(
    {name: _input_only(batches) for name, batches in iterators.items()},
    lambda: None,
    setup,
  )
  rows = [_row(f"{name}, input alone", batch_size, t) for name, t in timings.items()]
  if workload is not None:
    from bench.jax_step import ProjectStep

    example = random_batches(workload, batch_size, 1, setup.seed)[0]
    step = ProjectStep(workload, batch_size, random_table(workload, setup.seed), example)
    take = lambda batches: {k: v for k, v in next(batches).items() if k in STEP_KEYS}
    fed = _alternating(
      {name: (lambda i, b=batches: step(take(b))) for name, batches in iterators.items()},
      step.sync,
      setup,
    )
    rows += [
      dict(_row(f"jax (ours) step, {name}", batch_size, t), loss=step.loss(), model=workload.name)
      for name, t in fed.items()
    ]
  for batches in iterators.values():
    batches.close()
  load.append(os.getloadavg()[0])
  for row in rows:
    host = next(r for r in rows if r["impl"] == row["impl"].replace("device", "host"))
    row.update(
      vs_host=row["ecg_per_s"] / host["ecg_per_s"],
      place_s=place_s if "device" in row["impl"] else None,
      gathers_compiled=gathers,
      records=len(source),
      dataset=setup.dataset,
      split=setup.split,
      prefetch=setup.prefetch,
      load_average_start=load[0],
      load_average_end=load[1],
    )
  return rows


def _input_only(batches):
  """One timed step of the input path alone: the next batch, fully on the devices."""
  return lambda i: jax.block_until_ready(next(batches))


def _alternating(runs: dict, sync, setup: InputRun) -> dict[str, Timing]:
  """time_windows of each run, one window at a time in turn. Each window first takes prefetch + 1 untimed steps:
  what an iterator's reader thread prepared while the other one was timed does not count."""
  for run in runs.values():
    time_windows(run, sync, warmup=setup.drained_warmup, windows=1, steps=1)
  times: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(setup.windows):
    for name, run in runs.items():
      timing = time_windows(run, sync, warmup=setup.prefetch + 1, windows=1, steps=setup.steps)
      times[name].extend(timing.window_s)
  return {name: Timing(tuple(t), setup.steps) for name, t in times.items()}


def _row(impl: str, batch_size: int, timing: Timing) -> dict[str, Any]:
  row = timed_row(impl, batch_size, timing)
  return dict(row, gb_per_s=row["ecg_per_s"] * 120_000 / 1e9)
