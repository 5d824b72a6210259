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


@dataclasses.dataclass(frozen=True)
class InputRun:
  """A benchmark of the input path (bench pipeline, bench placement): the split it reads, its batches, how its
  windows are timed (time_windows) and the seed of the record order and the inputs."""

  batch_size: int  # global
  dataset: str  # TFDS name/config, built on first use
  split: str
  data_dir: str | None  # None: the pipeline's default data directory
  prefetch: int  # batches an iterator prepares ahead
  warmup: int
  windows: int
  steps: int
  seed: int

  @property
  def drained_warmup(self) -> int:
    """Warm-up steps of a run that reads an iterator: at least prefetch + 2, so that the timed windows start
    past the queue filled beforehand, which would flatter them."""
    return max(self.warmup, self.prefetch + 2)
