"""Timed windows: warm up, run several windows of steps each ended by a device sync, take the median.

A window is `steps` consecutive calls with no host sync between them (the device queue stays
full, as in training), then one sync. The step time is median(window time) / steps; the spread
is reported as the fastest and slowest window.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Timing:
  window_s: tuple[float, ...]  # wall time of each timed window
  steps: int  # steps per window

  @property
  def step_s(self) -> float:
    return statistics.median(self.window_s) / self.steps

  @property
  def min_step_s(self) -> float:
    return min(self.window_s) / self.steps

  @property
  def max_step_s(self) -> float:
    return max(self.window_s) / self.steps

  def per_second(self, batch_size: int) -> float:
    return batch_size / self.step_s


def time_windows(
  run_step: Callable[[int], None],
  sync: Callable[[], None],
  *,
  warmup: int,
  windows: int,
  steps: int,
) -> Timing:
  """Times `run_step(i)` (i counts calls from 0, to rotate inputs); `sync()` blocks until the device is idle."""
  if warmup < 1 or windows < 1 or steps < 1:
    raise ValueError(f"warmup, windows and steps must be >= 1, got {warmup}, {windows}, {steps}")
  i = 0
  for _ in range(warmup):
    run_step(i)
    i += 1
  sync()
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      run_step(i)
      i += 1
    sync()
    times.append(time.perf_counter() - start)
  return Timing(tuple(times), steps)


def drained_warmup(warmup: int, prefetch: int) -> int:
  """Warm-up steps of a run that reads an input pipeline prefetching `prefetch` batches: at least prefetch + 2,
  so that the timed windows start past the queue filled beforehand, which would flatter them."""
  return max(warmup, prefetch + 2)
