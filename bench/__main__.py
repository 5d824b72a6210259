r"""Benchmark command (run from the repository root: it reads configs/paper.py). Each subcommand prints
its table last and writes PREFIX.json + PREFIX.csv; results and how to reproduce them: BENCHMARKS.md.

  python -m bench step --model paper --batch-sizes 256,1024 --torch eager,compile
  python -m bench pipeline --model paper --batch-size 1024 --dataset synthetic_ecg_ja/demo
  python -m bench memory --cpu-devices 8 --batch-sizes 256,512,1024,2048,4096
  python -m bench memory --cpu-devices 8 --tiles 4096 --batch-sizes 16384,65536,1048576 --time-batch 4096
  python -m bench host-read --dataset synthetic_ecg_ja/demo --batch-size 256 --threads 1,2,4
  python -m bench placement --cpu-devices 8 --batch-size 256 --dataset synthetic_ecg_ja/demo
  python -m bench show bench_out/step.json bench_out/pipeline.json

  step      the project's training step (ECG/s, step time, TFLOP/s, peak memory) against the PyTorch
            step of the same architecture (exported module, AdamW, bf16 autocast; eager and
            torch.compile), in one process on the same device-resident batches
  pipeline  the same step fed by the project's input pipeline (int16 on the wire), next to the
            step on device-resident batches at the same batch size
  memory    per-device memory of the contrastive loss across the mesh against global batch size,
            next to a naive full-batch (B x B) loss; with --tiles, the dense loss against the
            tiled one (all-gather and ring): plans per device and value+grad time
  host-read the host's read rate of a split's rows: ArrayRecord shards streamed with N reader threads
            against the int16 cache's memory map, cold-ish and warm (config.data.host_read)
  placement the input path with the split on the host (BatchIterator) against the split resident on
            the devices (DeviceBatchIterator), side by side in one run; --step adds the step fed by each
  show      print the tables of earlier results files again (and issue 6's targets when a step
            file is among them)
CPU smoke run: `step --model tiny --batch-sizes 8 --torch eager --windows 2 --steps 2`. One GPU run of
all of it: bench/gpu_run.sh.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bench.timing import InputRun  # no JAX: XLA_FLAGS may still be set after it

if TYPE_CHECKING:
  from bench.workload import Workload


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def _modes(text: str) -> list[str]:
  return [] if text == "none" else [m for m in text.split(",") if m]


def _bn_backwards(text: str) -> list[str]:
  from ecg_contrastive.models.batch_norm import (
    BACKWARDS,
  )  # imports JAX, but starts no backend (XLA_FLAGS still apply)

  values = [v for v in text.split(",") if v]
  if not values or set(values) - set(BACKWARDS):
    raise argparse.ArgumentTypeError(
      f"{text!r}: give one or more of {', '.join(BACKWARDS)}, comma-separated"
    )
  return values


def _timing_args(p: argparse.ArgumentParser, warmup: int, windows: int, steps: int) -> None:
  p.add_argument(
    "--warmup", type=int, default=warmup, help="untimed steps first (compilation, autotuning)"
  )
  p.add_argument(
    "--windows", type=int, default=windows, help="timed windows; the median is reported"
  )
  p.add_argument("--steps", type=int, default=steps, help="steps per timed window")


def _timing(args: argparse.Namespace) -> dict[str, int]:
  """The timing arguments (_timing_args) as keywords of a benchmark's run()."""
  return dict(warmup=args.warmup, windows=args.windows, steps=args.steps)


def _model_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--model", default="paper", choices=["paper", "tiny"], help="workload preset (workload.py)"
  )
  p.add_argument(
    "--dtype", choices=["bfloat16", "float32"], help="override the preset's compute dtype"
  )
  p.add_argument("--seed", type=int, default=0)


def _dataset_args(p: argparse.ArgumentParser, dataset: str) -> None:
  """--dataset, --split, --data-dir: the split a data benchmark opens (built on first use)."""
  p.add_argument("--dataset", default=dataset, help="TFDS name/config, built on first use")
  p.add_argument("--split", default="train")
  p.add_argument("--data-dir", default="", help="'' -> the pipeline's default data directory")


def _input_run(args: argparse.Namespace) -> InputRun:
  """The settings of an input benchmark (pipeline, placement) from its arguments (_dataset_args, --batch-size,
  --prefetch, _timing_args, --seed)."""
  data_dir = args.data_dir or None
  return InputRun(
    args.batch_size,
    args.dataset,
    args.split,
    data_dir,
    args.prefetch,
    **_timing(args),
    seed=args.seed,
  )


def _cpu_devices_arg(p: argparse.ArgumentParser) -> None:
  """--cpu-devices: run_command sets XLA_FLAGS from it before JAX starts."""
  p.add_argument(
    "--cpu-devices",
    type=int,
    default=0,
    help="on CPU, run with this many virtual devices (sets XLA_FLAGS before JAX starts)",
  )


# ----------------------------------------------------------------------------- the subcommands
# Each: _<name>_args(p), whose docstring is its --help line, and _<name>(args, meta) -> (rows, columns), which runs
# it (meta: the results file's card, to add to). Registered in SUBCOMMANDS below, one line each.


def _step_args(p: argparse.ArgumentParser) -> None:
  """our training step vs PyTorch eager / torch.compile"""
  _model_args(p)
  p.add_argument(
    "--batch-sizes", type=_ints, default=[256, 1024], help="global batch sizes, comma-separated"
  )
  p.add_argument(
    "--microbatches",
    type=_ints,
    default=[1],
    help="ours with each of these micro-batch counts (gradient caching, config.microbatches), e.g. 1,4",
  )
  p.add_argument(
    "--bn-backward",
    type=_bn_backwards,
    default=["lean"],
    help="ours with each BatchNorm backward, e.g. lean,autodiff (config.train.bn_backward): "
    "an A/B in one run",
  )
  p.add_argument(
    "--conv-impl",
    type=lambda t: [v for v in t.split(",") if v],
    default=["xla"],
    help="ours with each blocks' conv_impl, e.g. xla,shifted_matmul,pallas (config.train.conv_impl)",
  )
  p.add_argument(
    "--plan-only",
    action="store_true",
    help="compile ours only and report XLA's memory plan per device (what fits), without running",
  )
  p.add_argument(
    "--torch",
    type=_modes,
    default=["eager", "compile"],
    help="PyTorch steps beside ours: any of eager,compile,max-autotune, or 'none'",
  )
  p.add_argument("--buffers", type=int, default=4, help="distinct input batches rotated through")
  p.add_argument(
    "--torch-threads",
    type=int,
    default=0,
    help="PyTorch CPU threads (0: its default, one per core; on a busy shared CPU, 1 avoids "
    "OpenMP threads waiting on each other)",
  )
  p.add_argument(
    "--profile",
    help="trace a few steps of ours at the largest batch into this folder and "
    "write a breakdown of device time (profile_summary.txt there)",
  )
  p.add_argument(
    "--dump-hlo",
    help="write the optimized HLO of ours at the largest batch here, gzipped (the "
    "fusions the profile names: what each reads and writes)",
  )
  _timing_args(p, warmup=3, windows=5, steps=10)


def _step(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
  from bench import results, step
  from bench.rows import STEP_COLUMNS

  workload = _workload(args)
  meta.update(
    workload=dict(workload.__dict__, train_gflop_per_ecg=workload.train_flops_per_ecg() / 1e9)
  )
  if args.torch and not args.plan_only:
    import torch

    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    meta.update(torch_threads=torch.get_num_threads())
  rows = step.run(
    workload,
    args.batch_sizes,
    args.torch,
    **_timing(args),
    buffers=args.buffers,
    seed=args.seed,
    profile_dir=args.profile,
    microbatches=args.microbatches,
    plan_only=args.plan_only,
    hlo_path=args.dump_hlo,
    bn_backwards=args.bn_backward,
    conv_impls=args.conv_impl,
    on_row=lambda rows: results.write_results(args.out, meta, rows, STEP_COLUMNS),
  )
  return rows, STEP_COLUMNS


def _pipeline_args(p: argparse.ArgumentParser) -> None:
  """our step fed by the real input pipeline"""
  _model_args(p)
  p.add_argument("--batch-size", type=int, default=1024, help="global batch size")
  _dataset_args(p, "synthetic_ecg_ja/tiny")
  p.add_argument("--prefetch", type=int, default=4, help="batches the pipeline prepares ahead")
  _timing_args(p, warmup=3, windows=5, steps=10)


def _pipeline(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
  from bench import input_path

  workload = _workload(args)
  meta.update(workload=dict(workload.__dict__, dataset=args.dataset, split=args.split))
  return input_path.run(workload, _input_run(args)), input_path.COLUMNS


def _memory_args(p: argparse.ArgumentParser) -> None:
  """per-device loss memory vs global batch size, against a naive B x B loss"""
  p.add_argument("--batch-sizes", type=_ints, default=[256, 512, 1024, 2048, 4096, 8192])
  p.add_argument("--embed-dim", type=int, default=256)
  _cpu_devices_arg(p)
  p.add_argument(
    "--tiles",
    type=_ints,
    default=[],
    help="tile sizes T: compare the dense loss with the tiled one (all-gather and ring) at each batch size, "
    "e.g. --tiles 4096 --batch-sizes 16384,65536,1048576 --time-batch 4096",
  )
  p.add_argument(
    "--time-batch",
    type=int,
    default=0,
    help="with --tiles: also time value+grad of each at this batch",
  )
  p.add_argument(
    "--dense-max-batch",
    type=int,
    default=2**20,
    help="with --tiles: compile the dense loss only up to this batch (its plan grows as B^2 / n; compiling "
    "is quick: XLA plans 2.5 TiB per device at 2^20 without allocating it)",
  )


def _memory(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
  from bench import loss_memory

  if args.tiles:
    rows = loss_memory.tiled_rows(
      args.batch_sizes, args.embed_dim, args.tiles, args.time_batch, args.dense_max_batch
    )
    return rows, loss_memory.TILED_COLUMNS
  return loss_memory.run(args.batch_sizes, args.embed_dim), loss_memory.COLUMNS


def _host_read_args(p: argparse.ArgumentParser) -> None:
  """ECG/s of reading rows: shards streamed with N threads vs the int16 cache"""
  _dataset_args(p, "synthetic_ecg_ja/demo")
  p.add_argument("--batch-size", type=int, default=256, help="rows per read (one process's batch)")
  p.add_argument("--batches", type=int, default=20, help="batches per pass (random rows, sorted)")
  p.add_argument(
    "--threads", type=_ints, default=[1, 2, 4], help="reader thread counts, comma-separated"
  )
  p.add_argument("--seed", type=int, default=0)


def _host_read(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
  from bench import host_read

  meta.update(workload=dict(dataset=args.dataset, split=args.split, batch=args.batch_size))
  rows = host_read.run(
    args.dataset,
    args.split,
    args.data_dir or None,
    args.batch_size,
    args.batches,
    args.threads,
    seed=args.seed,
  )
  return rows, host_read.COLUMNS


def _placement_args(p: argparse.ArgumentParser) -> None:
  """input path: split on the host vs resident on the devices, one run"""
  p.add_argument("--batch-size", type=int, default=256, help="global batch size")
  _dataset_args(p, "synthetic_ecg_ja/demo")
  p.add_argument("--prefetch", type=int, default=2, help="batches each iterator prepares ahead")
  _cpu_devices_arg(p)
  p.add_argument(
    "--step",
    choices=["paper", "tiny"],
    help="also time the project's step (this workload preset) fed by each placement",
  )
  p.add_argument("--dtype", choices=["bfloat16", "float32"], help="with --step: compute dtype")
  p.add_argument("--seed", type=int, default=0)
  _timing_args(p, warmup=3, windows=5, steps=20)


def _placement(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
  from bench import placement

  workload = None
  if args.step:
    args.model = args.step
    workload = _workload(args)
  meta.update(dataset=args.dataset, split=args.split, step=workload and workload.name)
  return placement.run(_input_run(args), workload), placement.COLUMNS


# name: (_<name>_args, _<name>), in the order of --help. One line per subcommand: add yours as a line of its own.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable]] = {
  "step": (_step_args, _step),
  "pipeline": (_pipeline_args, _pipeline),
  "memory": (_memory_args, _memory),
  "host-read": (_host_read_args, _host_read),
  "placement": (_placement_args, _placement),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m bench",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (add_args, _) in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=add_args.__doc__)
    add_args(p)
    out = f"bench_out/{name.replace('-', '_')}"
    p.add_argument("--out", default=out, help="writes OUT.json and OUT.csv")
  p = sub.add_parser("show", help="print the tables of results files (PREFIX.json) again")
  p.add_argument("files", nargs="+", help="PREFIX.json files written by step, pipeline or memory")
  return parser.parse_args(argv)


def _force_cpu_devices(count: int) -> None:
  """Virtual CPU devices for the mesh; must run before JAX initialises its backends."""
  flag = f"--xla_force_host_platform_device_count={count}"
  flags = [
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform")
  ]
  os.environ["XLA_FLAGS"] = " ".join(flags + [flag])


def _workload(args: argparse.Namespace) -> Workload:
  """The preset workload, with --dtype applied."""
  import dataclasses

  from bench.workload import PRESETS

  workload = PRESETS[args.model]
  return dataclasses.replace(workload, dtype=args.dtype) if args.dtype else workload


def run_command(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]], list]:
  """Runs a subcommand of SUBCOMMANDS; returns (meta, rows, columns). Imports lazily: JAX must start after
  XLA_FLAGS is set (--cpu-devices), and each subcommand loads only its own stack."""
  if getattr(args, "cpu_devices", 0):
    _force_cpu_devices(args.cpu_devices)
  import jax

  from bench import results

  meta = dict(results.environment(jax.devices()), subcommand=args.command)
  _, run = SUBCOMMANDS[args.command]
  rows, columns = run(args, meta)
  return meta, rows, columns


def show(files: Sequence[str]) -> None:
  """Prints each file's card, command, versions and table; then the issue's targets if a step file is there."""
  from bench import results, targets

  by_command: dict[str, list[dict[str, Any]]] = {}
  for path in files:
    meta, rows, columns = results.read_results(path)
    by_command.setdefault(meta["subcommand"], []).extend(rows)
    print(f"\n{path}\n{results.format_meta(meta)}\n{results.format_table(rows, columns)}")
  if "step" in by_command:
    print(
      "\nissue 6 targets:\n"
      + "\n".join(targets.check(by_command["step"], by_command.get("pipeline", [])))
    )


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
  )
  args = parse_args(argv)
  if args.command == "show":
    show(args.files)
    return 0
  try:
    meta, rows, columns = run_command(args)
  except ModuleNotFoundError as e:  # e.g. on a device machine without the carried wheels
    print(
      f"\n{args.command}: Python package {e.name!r} is missing. Where packages cannot be installed (the "
      f"device machine), run `bash bench/fetch_wheels.sh` and carry .whl/ (bench/gpu_run.sh installs it).",
      file=sys.stderr,
    )
    return 2
  from bench import results

  paths = results.write_results(args.out, meta, rows, columns)
  for row in rows:
    if "profile" in row:
      from bench.trace_summary import format_summary

      print(f"\n{row['impl']} at batch {row['batch']}: " + format_summary(row["profile"]))
    for key in ("error", "profile_error"):
      if key in row:
        print(f"\n{row['impl']} at batch {row['batch']}, {key.replace('_', ' ')}: {row[key]}")
  print(f"\nwrote {', '.join(paths)}")
  print(results.format_meta(meta))
  print(results.format_table(rows, columns), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
