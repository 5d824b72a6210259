"""The project's own training step (ecg_contrastive.step.make_train_step), timed on device-resident inputs.

The step is lowered and compiled once; the compiled executable is what is timed (same HLO, same
buffer donation as the jitted step the training loop calls) and what gives the XLA FLOP count and
the per-device memory plan.
"""

from __future__ import annotations

import gzip
import logging
import time
from typing import Any

import jax
import numpy as np

from bench import trace_summary
from bench.rows import step_row
from bench.timing import time_windows
from bench.workload import Workload
from bench.xla_stats import compiled_bytes_per_device, compiled_flops, peak_device_bytes
from ecg_contrastive import step as step_lib
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated

log = logging.getLogger("bench")
SCHEDULE_STEPS = 100_000  # length of the learning-rate schedule; speed does not depend on it


def ours_impl(microbatches: int, bn_backward: str = "lean", conv_impl: str = "xla") -> str:
  """The implementation name of our step's rows: "jax (ours)", or with its micro-batch count, its BatchNorm
  backward and/or its blocks' conv_impl (config.train.conv_impl) where these are not the defaults."""
  parts = ["jax (ours)"] + ([f"{microbatches} micro-batches"] if microbatches > 1 else [])
  parts += [f"{bn_backward} BN backward"] if bn_backward != "lean" else []
  return ", ".join(parts + ([f"{conv_impl} conv"] if conv_impl != "xla" else []))


class ProjectStep:
  """State, compiled step and frozen text table of the project's trainer for one workload and batch size."""

  def __init__(
    self,
    workload: Workload,
    batch_size: int,
    table: np.ndarray,
    example_batch: dict[str, Any],
    microbatches: int = 1,
    bn_backward: str = "lean",
    conv_impl: str = "xla",
  ):
    config = workload.config(batch_size)
    config.microbatches = microbatches
    config.train.bn_backward = bn_backward
    config.train.conv_impl = conv_impl
    self.mesh = make_mesh()
    model = step_lib.make_model(config)
    # a row must never time another step than the one it names
    if getattr(model, "conv_impl", "xla") != conv_impl:
      raise ValueError(
        f"conv_impl {conv_impl!r}: this TwoTower ignores config.train.conv_impl; pass it to ResNet1d "
        "(models/two_tower.py)"
      )
    tx, schedule = step_lib.make_optimizer(config, SCHEDULE_STEPS)
    self.state = step_lib.init_state(config, model, tx, workload.text_dim, self.mesh)
    self.table = jax.device_put(table, replicated(self.mesh))
    step = step_lib.make_train_step(config, model, tx, schedule, self.mesh)
    log.info(
      "compiling %s at batch %d", ours_impl(microbatches, bn_backward, conv_impl), batch_size
    )
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.put(example_batch), self.table).compile()
    log.info(
      "compiled in %.1f s; XLA plan %.2f GiB per device",
      time.perf_counter() - start,
      compiled_bytes_per_device(self.compiled) / 2**30,
    )
    self.metrics: dict[str, jax.Array] = {}

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch as a global array sharded over the mesh's 'data' axis."""
    return jax.device_put(batch, data_sharding(self.mesh))

  def __call__(self, batch: dict[str, jax.Array]) -> None:
    self.state, self.metrics = self.compiled(self.state, batch, self.table)

  def sync(self) -> None:
    jax.block_until_ready((self.state, self.metrics))

  def loss(self) -> float:
    return float(self.metrics["loss"])


def bench_project_step(
  workload: Workload,
  batch_size: int,
  host_batches: list[dict[str, np.ndarray]],
  table: np.ndarray,
  *,
  warmup: int,
  windows: int,
  steps: int,
  profile_dir: str | None = None,
  microbatches: int = 1,
  plan_only: bool = False,
  hlo_path: str | None = None,
  bn_backward: str = "lean",
  conv_impl: str = "xla",
) -> dict[str, Any]:
  """One results row for the project's step on device-resident batches (rotated, never zeros).

  microbatches > 1: the gradient-caching step (config.microbatches); its analytic TFLOP/s count the
  useful work only (3x forward per ECG), not the extra forward pass caching costs.
  With `profile_dir`, `steps` more steps are traced there and row["profile"] holds the breakdown.
  With `hlo_path`, the compiled step's optimized HLO (XLA's fusions, as the profile names them) is written
  there, gzipped.
  """
  step = ProjectStep(
    workload, batch_size, table, host_batches[0], microbatches, bn_backward, conv_impl
  )
  impl = ours_impl(microbatches, bn_backward, conv_impl)
  hlo_text = (
    step.compiled.as_text() if hlo_path or profile_dir else None
  )  # the module is large: print it once
  if hlo_path:
    with gzip.open(hlo_path, "wt", encoding="utf-8") as f:
      f.write(hlo_text)
  if plan_only:  # compiled, not run: XLA's memory plan and FLOP count (e.g. what fits, from a CPU)
    flops = compiled_flops(step.compiled)
    return {
      "impl": impl,
      "model": workload.name,
      "batch": batch_size,
      "ecg_per_s": None,
      "plan_gib": compiled_bytes_per_device(step.compiled) / 2**30,
      "gflop_per_ecg_xla": None if flops is None else flops / batch_size / 1e9,
    }
  batches = [step.put(b) for b in host_batches]
  run_step = lambda i: step(batches[i % len(batches)])
  timing = time_windows(run_step, step.sync, warmup=warmup, windows=windows, steps=steps)
  row = step_row(
    impl,
    workload,
    batch_size,
    timing,
    step.loss(),
    peak_device_bytes(list(step.mesh.devices.flat)),
    compiled_bytes_per_device(step.compiled),
    compiled_flops(step.compiled),
  )
  if profile_dir:
    try:
      row["profile"] = trace_summary.trace_steps(run_step, step.sync, steps, profile_dir, hlo_text)
    except Exception as e:  # noqa: BLE001  (the timing stands without its profile)
      log.exception("profiling failed")
      row["profile_error"] = f"{type(e).__name__}: {e}"[:500]
  return row
