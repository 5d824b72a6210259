"""What XLA and the device allocator say about a compiled program: FLOPs, memory plan, allocator peak."""

from __future__ import annotations

import jax


def peak_device_bytes(devices: list[jax.Device]) -> int | None:
  """Largest allocator peak over `devices` since the process started (None where not reported, e.g. CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  return max(peaks) if peaks and all(p is not None for p in peaks) else None


def compiled_bytes_per_device(compiled: jax.stages.Compiled) -> int | None:
  """XLA's memory plan per device: arguments + outputs + temporaries - donated (aliased) bytes."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
  """FLOPs of one call by XLA's cost analysis, summed over devices (None if not reported).

  None on GPUs: there the convolutions are cuDNN custom calls that the cost analysis does not count (the
  paper step on an H100, 2026-11-26: 0.11 GFLOP per ECG counted against 10.3 by the analytic count).
  """
  if jax.default_backend() == "gpu":
    return None
  cost = compiled.cost_analysis()
  costs = cost if isinstance(cost, (list, tuple)) else [cost]
  flops = [c.get("flops") for c in costs if c]
  return float(sum(flops)) if flops and all(f and f > 0 for f in flops) else None
