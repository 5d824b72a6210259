"""Where a step's time goes: trace a few steps with jax.profiler and break the device time down by op.

Reads the Perfetto trace JAX writes (perfetto_trace.json.gz, plain JSON: no profiler plugin
needed). Op events: on a GPU, the device's "XLA Ops" line where the trace has one, else its
kernels, grouped by their `hlo_op` argument (a cuDNN convolution with its padding kernels is one op)
except inside a command buffer (a CUDA graph of many fusions: there each kernel is its own op); on a
CPU, XLA's op thunks. Each op is put in a category by name (convolutions, matmuls, reduction fusions
such as BatchNorm statistics, elementwise fusions, layout copies and transposes, collectives).

Given the compiled program's optimized HLO text, each op also gets the bytes of its operands and
results (`hlo_bytes`) and so an achieved rate in GB/s: a fusion near the device's memory bandwidth is
bound by the passes over memory, not by its kernel.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax

CATEGORIES = (  # first match wins; matched against the lower-case op and kernel names ("convert" removed)
  ("fused conv kernel (Pallas: conv + BN statistics + previous BN/ReLU)", ("fused_conv1d",)),
  ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm")),
  ("collective", ("all-reduce", "all-gather", "reduce-scatter", "nccl", "collective")),
  ("matmul", ("gemm", "dot", "cublas", "matmul")),
  ("reduction fusion (BN statistics, BN backward sums)", ("reduce",)),
  ("copy / transpose (layout)", ("copy", "transpose", "memcpy", "memset")),
  ("elementwise fusion (BN apply, ReLU, residual, optimizer)", ("fusion",)),
)


def category(name: str) -> str:
  lower = re.sub("convert", "", name.lower())
  for label, keys in CATEGORIES:
    if any(k in lower for k in keys):
      return label
  return "other"


_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_DEFINITION = re.compile(  # %name = shape op(operands...): the shape an array or a tuple of arrays
  r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?) ([\w\-]+)\((.*?)\)",
  re.M,
)
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _key(name: str) -> str:
  """HLO instruction names and the GPU kernels named after them differ in '.' against '_'."""
  return name.replace(".", "_")


def _array_bytes(shape: str) -> int:
  """Bytes of an HLO shape string, arrays and tuples of arrays (unknown element types count 0)."""
  return sum(
    _BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
    for dtype, dims in _ARRAY.findall(shape)
  )


def hlo_bytes(hlo_text: str) -> dict[str, int]:
  """Instruction (normalised name, see _key) -> bytes of its operands plus its result(s), from the text of
  an optimized HLO module: what a fusion or custom call reads and writes at most once each."""
  shapes, operands = {}, {}
  for name, shape, _, args in _DEFINITION.findall(hlo_text):
    shapes[name] = _array_bytes(shape)
    operands[name] = re.findall(r"%([\w.\-]+)", args)
  return {
    _key(name): shapes[name] + sum(shapes.get(o, 0) for o in ops) for name, ops in operands.items()
  }


def _intervals_union(spans: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for start, stop in sorted(spans):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def _op(event: dict[str, Any]) -> str:
  hlo_op = event.get("args", {}).get("hlo_op")
  if not hlo_op or hlo_op.startswith(
    "command_buffer"
  ):  # a CUDA graph of many ops: its kernels are the ops
    return event["name"]
  return hlo_op


def op_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
  """The trace's per-op events: on a device, its "XLA Ops" line if the trace has one, else its kernels
  (every line but "XLA Modules"); with no device in the trace, the host's events of XLA ops."""
  events = trace["traceEvents"]
  process = {
    e["pid"]: e["args"]["name"]
    for e in events
    if e.get("ph") == "M" and e.get("name") == "process_name"
  }
  thread = {
    (e["pid"], e["tid"]): e["args"]["name"]
    for e in events
    if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  spans = [e for e in events if e.get("ph") == "X"]
  on_device = [e for e in spans if process.get(e["pid"], "").startswith("/device:")]
  if not on_device:
    return [e for e in spans if "hlo_op" in e.get("args", {})]
  xla_ops_line = [e for e in on_device if thread.get((e["pid"], e["tid"])) == "XLA Ops"]
  return xla_ops_line or [e for e in on_device if thread.get((e["pid"], e["tid"])) != "XLA Modules"]


def summarize(
  trace: dict[str, Any],
  steps: int,
  wall_s: float,
  top: int = 15,
  op_bytes: dict[str, int] | None = None,
) -> dict[str, Any]:
  """Per-step busy time, time by category and the `top` ops by time (all per step, in ms); with `op_bytes`
  (hlo_bytes of the traced program), the GB/s of each op and category whose bytes are known.

  An op's category is read from its name and the names of every event of it in the trace (the
  kernels it launched included), so a custom call that runs a cuDNN convolution counts as one.
  """
  ops = op_events(trace)
  summary: dict[str, Any] = {"steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps}
  if not ops:
    return dict(summary, busy_ms_per_step=None, op_ms_per_step=None, by_category={}, top_ops=[])
  by_op: dict[str, list[float]] = collections.defaultdict(list)
  kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for e in ops:
    by_op[_op(e)].append(e["dur"])
    kernels[_op(e)][e["name"]] += (
      1  # an op's calls: its most frequent kernel's (a conv also launches a memset)
    )
  names: dict[str, set[str]] = collections.defaultdict(set)
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and _op(e) in by_op:
      names[_op(e)].add(e["name"])
  label = {op: category(" ".join([op, *sorted(names[op])])) for op in by_op}
  total_us = sum(sum(d) for d in by_op.values())
  by_cat: dict[str, float] = collections.defaultdict(float)
  for op, durs in by_op.items():
    by_cat[label[op]] += sum(durs)
  busy_us = _intervals_union([(e["ts"], e["ts"] + e["dur"]) for e in ops])
  ranked = sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:top]
  op_bytes = op_bytes or {}
  moved = {
    op: op_bytes[_key(op)] * max(kernels[op].values()) for op in by_op if op_bytes.get(_key(op))
  }
  cat_moved: dict[str, list[float]] = collections.defaultdict(
    lambda: [0.0, 0.0]
  )  # bytes, us of ops with bytes
  for op, b in moved.items():
    cat_moved[label[op]][0] += b
    cat_moved[label[op]][1] += sum(by_op[op])
  rate = lambda b, us: b / us / 1e3 if us else None  # bytes per microsecond -> GB/s
  return dict(
    summary,
    busy_ms_per_step=busy_us / 1e3 / steps,
    op_ms_per_step=total_us / 1e3 / steps,
    by_category={
      k: {
        "ms_per_step": v / 1e3 / steps,
        "share": v / total_us,
        "gb_per_s": rate(*cat_moved[k]) if k in cat_moved else None,
      }
      for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])
    },
    top_ops=[
      {
        "op": op,
        "kernel": " ".join(sorted(names[op] - {op}))[:80],
        "category": label[op],
        "calls_per_step": max(kernels[op].values()) / steps,
        "ms_per_step": sum(d) / 1e3 / steps,
        "share": sum(d) / total_us,
        "gb_per_s": rate(moved[op], sum(d)) if op in moved else None,
      }
      for op, d in ranked
    ],
  )


def format_summary(s: dict[str, Any]) -> str:
  if s["op_ms_per_step"] is None:
    return f"profile over {s['steps']} steps: wall {s['wall_ms_per_step']:.2f} ms/step; no per-op events in the trace"
  lines = [
    f"profile over {s['steps']} steps: wall {s['wall_ms_per_step']:.2f} ms/step, device busy "
    f"{s['busy_ms_per_step']:.2f} ms/step (union of op spans), sum of op times "
    f"{s['op_ms_per_step']:.2f} ms/step",
    "by category:",
  ]
  gbs = lambda x: f"{x['gb_per_s']:7,.0f} GB/s" if x.get("gb_per_s") else " " * 12
  lines += [
    f"  {v['ms_per_step']:8.3f} ms {100 * v['share']:5.1f}% {gbs(v)}  {k}"
    for k, v in s["by_category"].items()
  ]
  lines.append(
    "top ops (GB/s: operand + result bytes of the op in the optimized HLO, over its time):"
  )
  lines += [
    f"  {o['ms_per_step']:8.3f} ms {100 * o['share']:5.1f}% {gbs(o)}  x{o['calls_per_step']:.0f}  {o['op']}  "
    f"[{o['category']}]  {o['kernel']}"
    for o in s["top_ops"]
  ]
  return "\n".join(lines)


def trace_steps(
  run_step: Callable[[int], None],
  sync: Callable[[], None],
  steps: int,
  folder: str,
  hlo_text: str | None = None,
) -> dict[str, Any]:
  """Traces `steps` calls into `folder`; writes profile_summary.txt/.json there and returns the summary.
  hlo_text: the traced program's optimized HLO, for each op's bytes and GB/s."""
  os.makedirs(folder, exist_ok=True)
  sync()
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    start = time.perf_counter()
    for i in range(steps):
      run_step(i)
    sync()
    wall_s = time.perf_counter() - start
  path = max(
    glob.glob(os.path.join(folder, "plugins", "profile", "*", "perfetto_trace.json.gz")),
    key=os.path.getmtime,
  )
  with gzip.open(path, "rt", encoding="utf-8") as f:
    summary = summarize(
      json.load(f), steps, wall_s, op_bytes=hlo_bytes(hlo_text) if hlo_text else None
    )
  summary["trace"] = path
  with open(os.path.join(folder, "profile_summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(folder, "profile_summary.txt"), "w", encoding="utf-8") as f:
    f.write(format_summary(summary) + "\n")
  return summary
