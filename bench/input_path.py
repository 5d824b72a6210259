"""`pipeline`: the project's step fed by the project's input pipeline, next to the same step on batches
already on the device, with the pipeline's own rate beside them.

The data are a real split opened with data.pipeline.open_source (built on first use; int16
records memory-mapped) and batched by data.pipeline.BatchIterator (shuffled, read by a background
thread, int16 copied to the device). Each record gets a random row of a random frozen text table
(the step costs the same for any rows). Three rows, one compiled step:
  input pipeline alone       next(batches) as fast as it goes (host read + host-to-device copy)
  ours, device-resident      the step on `buffers` batches taken from the pipeline, kept on the device
  ours, input pipeline       the step on next(batches) each step, as the training loop runs it
The runs that read the pipeline warm up for at least prefetch + 2 steps, so a prefetch queue filled
beforehand does not flatter them.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from bench.jax_step import ProjectStep
from bench.results import Column
from bench.rows import step_row, timed_columns
from bench.timing import InputRun, time_windows
from bench.workload import Workload, random_batches, random_table
from bench.xla_stats import compiled_bytes_per_device, compiled_flops, peak_device_bytes

STEP_KEYS = ("ecg", "report_row")  # what the step reads; the iterator's 'index' is not passed

COLUMNS: list[Column] = timed_columns() + [
  ("tflops", "TFLOP/s (analytic)", ".3g"),
  ("peak_gib", "peak GiB", ".2f"),
  ("fraction", "fraction of device-resident", ".3f"),
]


def run(workload: Workload, setup: InputRun, buffers: int = 4) -> list[dict[str, Any]]:
  """Results rows: the pipeline alone, ours on device-resident batches, ours fed by the pipeline."""
  from ecg_contrastive.data import pipeline  # here: the step benchmark does not need the data stack

  batch_size = setup.batch_size
  start = time.perf_counter()
  source = pipeline.open_source(setup.dataset, setup.split, setup.data_dir)
  open_s = time.perf_counter() - start
  report_rows = np.random.default_rng(setup.seed).integers(
    0, workload.table_rows, len(source), dtype=np.int32
  )
  example = random_batches(workload, batch_size, 1, setup.seed)[0]
  step = ProjectStep(workload, batch_size, random_table(workload, setup.seed), example)
  batches = pipeline.BatchIterator(
    source,
    global_batch_size=batch_size,
    mesh=step.mesh,
    seed=setup.seed,
    columns={"report_row": report_rows},
    prefetch=setup.prefetch,
  )
  take = lambda: {k: v for k, v in next(batches).items() if k in STEP_KEYS}
  windows = dict(windows=setup.windows, steps=setup.steps)
  drained = dict(warmup=setup.drained_warmup, **windows)  # past the filled queue
  last: dict[str, jax.Array] = {}
  alone = time_windows(
    lambda i: last.update(take()), lambda: jax.block_until_ready(last), **drained
  )
  resident = [take() for _ in range(buffers)]
  on_device = time_windows(
    lambda i: step(resident[i % buffers]), step.sync, warmup=setup.warmup, **windows
  )
  fed = time_windows(lambda i: step(take()), step.sync, **drained)
  batches.close()
  stats = (
    peak_device_bytes(list(step.mesh.devices.flat)),
    compiled_bytes_per_device(step.compiled),
    compiled_flops(step.compiled),
  )
  rows = [
    step_row("input pipeline alone", workload, batch_size, alone, None, None, None, None),
    step_row("jax (ours), device-resident", workload, batch_size, on_device, step.loss(), *stats),
    step_row("jax (ours), input pipeline", workload, batch_size, fed, step.loss(), *stats),
  ]
  rows[0]["tflops"] = None  # no training step in that row
  for row in rows:
    row.update(
      fraction=row["ecg_per_s"] / rows[1]["ecg_per_s"],
      records=len(source),
      open_s=open_s,
      prefetch=setup.prefetch,
    )
  return rows
