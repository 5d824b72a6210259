"""One row of the step benchmark, the same for every implementation, and the table's columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.results import Column
from bench.timing import Timing
from bench.workload import Workload

TORCH_MODES = (
  "eager",
  "compile",
  "max-autotune",
)  # the PyTorch steps ours is compared with (bench/torch_step.py)


def timed_columns(
  impl: str = "implementation", step: str = "step ms", after_rate: Sequence[Column] = ()
) -> list[Column]:
  """The columns every timed table starts with (`timed_row`): what ran (header `impl`), global batch, ECG/s,
  `after_rate`, then the time per step (header `step`): median, min and max over the windows."""
  return [
    ("impl", impl, ""),
    ("batch", "global batch", "d"),
    ("ecg_per_s", "ECG/s", ",.0f"),
    *after_rate,
    ("step_ms", f"{step} (median)", ".2f"),
    ("step_ms_min", "min", ".2f"),
    ("step_ms_max", "max", ".2f"),
  ]


def timed_row(impl: str, batch_size: int, timing: Timing) -> dict[str, Any]:
  """The figures of `timed_columns` for one timed run, and its windows and steps per window."""
  return {
    "impl": impl,
    "batch": batch_size,
    "ecg_per_s": timing.per_second(batch_size),
    "step_ms": 1e3 * timing.step_s,
    "step_ms_min": 1e3 * timing.min_step_s,
    "step_ms_max": 1e3 * timing.max_step_s,
    "windows": len(timing.window_s),
    "steps_per_window": timing.steps,
  }


STEP_COLUMNS: list[Column] = timed_columns() + [
  ("tflops", "TFLOP/s (analytic)", ".3g"),
  ("tflops_xla", "TFLOP/s (XLA count)", ".3g"),
  ("peak_gib", "peak GiB", ".2f"),
  ("plan_gib", "XLA plan GiB/device", ".2f"),
  ("vs_torch_eager", "x eager", ".2f"),
  ("vs_torch_compile", "x compile", ".2f"),
]


def step_row(
  impl: str,
  workload: Workload,
  batch_size: int,
  timing: Timing,
  loss: float | None,
  peak_bytes: int | None,
  compiled_bytes: int | None,
  xla_flops: float | None,
) -> dict[str, Any]:
  """A results row: throughput, step time (median and spread), TFLOP/s, memory (GiB), last loss."""
  analytic = workload.train_flops_per_ecg() * batch_size
  return {
    **timed_row(impl, batch_size, timing),
    "model": workload.name,
    "tflops": analytic / timing.step_s / 1e12,
    "tflops_xla": None if xla_flops is None else xla_flops / timing.step_s / 1e12,
    "peak_gib": None if peak_bytes is None else peak_bytes / 2**30,
    "plan_gib": None if compiled_bytes is None else compiled_bytes / 2**30,
    "loss": loss,
  }
