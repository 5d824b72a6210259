"""`step`: the project's training step against the PyTorch step of the same architecture, side by side.

For each global batch size (ascending, so the process-wide peak-memory counters read per size):
the project's step (JAX), then PyTorch eager and torch.compile, all on the same host batches
already copied to the device, then each JAX row's speed-up over each PyTorch mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

from bench import jax_step
from bench.rows import TORCH_MODES
from bench.workload import Workload, random_batches, random_table

log = logging.getLogger("bench")


def add_speedups(rows: list[dict[str, Any]]) -> None:
  """Sets vs_torch_<mode> = ECG/s of each row / ECG/s of torch <mode> at the same batch size."""
  for row in rows:
    for mode in TORCH_MODES:
      ref = [r for r in rows if r["impl"] == f"torch {mode}" and r["batch"] == row["batch"]]
      ok = ref and row["ecg_per_s"] and ref[0]["ecg_per_s"]
      row[f"vs_torch_{mode}"] = row["ecg_per_s"] / ref[0]["ecg_per_s"] if ok else None


def run(
  workload: Workload,
  batch_sizes: Sequence[int],
  torch_modes: Sequence[str],
  *,
  warmup: int,
  windows: int,
  steps: int,
  buffers: int,
  seed: int,
  profile_dir: str | None = None,
  microbatches: Sequence[int] = (1,),
  plan_only: bool = False,
  hlo_path: str | None = None,
  bn_backwards: Sequence[str] = ("lean",),
  conv_impls: Sequence[str] = ("xla",),
  on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
) -> list[dict[str, Any]]:
  """Results rows: one per (implementation, batch size). `profile_dir`: trace ours at the largest batch;
  `hlo_path`: write its optimized HLO there (gzipped).

  microbatches: ours once per count that divides the batch per device (gradient caching for k > 1).
  bn_backwards: and once per BatchNorm backward ("lean", "autodiff"; config.train.bn_backward), for A/B runs;
  the profile and the HLO are of the first.
  conv_impls: and once per conv_impl ("xla", "shifted_matmul", "pallas"; config.train.conv_impl); with more than
  one, each is profiled (profile_dir/<impl>/) and its HLO written (hlo_path with "_<impl>" before its suffixes).
  plan_only: compile ours and report XLA's memory plan per device, without running (no PyTorch rows).

  on_row(rows so far) after each row: a run cut short by a time limit still leaves its figures.
  """
  torch_modes = [] if plan_only else list(torch_modes)
  if torch_modes:
    from bench import torch_step  # PyTorch only where it is compared (not a core requirement)
  table = random_table(workload, seed)
  rows = []
  for batch_size in sorted(batch_sizes):
    host_batches = random_batches(workload, batch_size, buffers, seed + batch_size)
    kw = dict(warmup=warmup, windows=windows, steps=steps)
    profile_here = profile_dir if batch_size == max(batch_sizes) else None
    per_device = batch_size // jax.device_count()
    variants = [
      (k, bn, conv)
      for conv in conv_impls
      for bn in bn_backwards
      for k in microbatches
      if per_device % k == 0
    ]
    for k, bn, conv in variants:
      first = k == 1 and (k, bn) == variants[0][:2]  # the first of its conv_impl
      many = len(conv_impls) > 1
      rows.append(
        measured_row(
          jax_step.ours_impl(k, bn, conv),
          batch_size,
          lambda: jax_step.bench_project_step(
            workload,
            batch_size,
            host_batches,
            table,
            profile_dir=_per_impl(profile_here, conv, many, folder=True) if first else None,
            hlo_path=_per_impl(hlo_path, conv, many)
            if first and batch_size == max(batch_sizes)
            else None,
            microbatches=k,
            plan_only=plan_only,
            bn_backward=bn,
            conv_impl=conv,
            **kw,
          ),
        )
      )
      _done(rows, on_row)
    for mode in torch_modes:
      rows.append(
        measured_row(
          f"torch {mode}",
          batch_size,
          lambda: torch_step.bench_torch_step(
            workload, batch_size, mode, host_batches, table, seed=seed, **kw
          ),
        )
      )
      torch_step.release_memory()
      _done(rows, on_row)
  return rows


def _per_impl(path: str | None, conv_impl: str, many: bool, folder: bool = False) -> str | None:
  """path as given for a single conv_impl; with several, profile_dir/<impl> or file_<impl>.suffixes."""
  if path is None or not many:
    return path
  if folder:
    return os.path.join(path, conv_impl)
  head, name = os.path.split(path)
  stem, dot, suffixes = name.partition(".")
  return os.path.join(head, f"{stem}_{conv_impl}{dot}{suffixes}")


def measured_row(
  impl: str, batch_size: int, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
  """measure(), or a row that records why it failed (out of memory, say) so that the other runs go on."""
  try:
    return measure()
  except Exception as e:  # noqa: BLE001  (any failure of one run is a result to report, not the end)
    log.exception("%s at batch %d failed", impl, batch_size)
    return {
      "impl": impl,
      "batch": batch_size,
      "ecg_per_s": None,
      "error": f"{type(e).__name__}: {e}"[:500],
    }


def _done(rows: list[dict[str, Any]], on_row: Callable[[list[dict[str, Any]]], None]) -> None:
  add_speedups(rows)
  log.info("%s", {k: v for k, v in rows[-1].items() if k != "profile"})
  on_row(rows)
