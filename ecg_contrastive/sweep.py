r"""Batch-size study: one run per global batch size on the same budget of ECGs seen, then one table and one figure.

  python -m ecg_contrastive.sweep --config configs/default.py --root runs/bs --batch-sizes 256,1024,4096 \
      --lr-rule sqrt --epochs 4 [--microbatch-ecgs 512] [--launch local|slurm|tpu] [--config.KEY=VALUE ...]

Every point is a normal training run (ecg_contrastive.main) in ROOT/b{B}, with
  num_steps   = ceil(budget / B)  (the budget in ECGs: --ecgs N, or --epochs N x the train split's size, or the
                config's own num_steps x batch_size / num_epochs; said in the log and in results.csv),
  optimizer.lr from the config's own lr at the config's own batch_size B0 by --lr-rule
                (linear: lr B / B0; sqrt: lr sqrt(B / B0); none: lr),
  warmup      kept in ECGs: warmup_steps = round(warmup_steps0 B0 / B) (at least 1 if the config warms up);
                with every point on the same ECG budget this is also the same fraction of the run,
  microbatches = B / M for B > M with --microbatch-ecgs M (gradient caching: the exact full-batch gradient with
                the activation memory of M ECGs).
Any --config.KEY=VALUE is passed to every run (e.g. --config.loss.name=sigmoid --config.train.logit_bias=-10.0).

A point whose eval/validation.json and eval/test.json exist and whose config.json equals the point's config is
finished: a rerun skips it (and says so) and collects its row. An unfinished local point resumes from its
checkpoint. --launch slurm submits `sbatch launch/slurm_gpu.sbatch ...` per point, --launch tpu runs
launch/tpu_vm.sh on every host of --tpu NAME through `gcloud ... ssh` (or prints the commands without --tpu);
rerun the same command later to collect what finished (a submitted point is not submitted again).

Writes ROOT/results.csv (one row per finished batch size; selection metrics from the validation split, test
beside them) and ROOT/batch_size.png (top-1 / top-5 and ECG/s against batch size). peak_bytes_in_use is the
backend's device memory peak where it reports one (GPU, TPU; empty on CPU).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from ecg_contrastive import paths
from ecg_contrastive.errors import UserError, exit_code, one_line, want_traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR_RULES = ("none", "linear", "sqrt")
METRICS = ("top1", "top5", "superset_top1", "macro_auroc")
COLUMNS = (
  ("batch_size", "microbatches", "lr", "warmup_steps", "steps", "ecgs_seen", "budget_ecgs")
  + ("ecg_per_s", "peak_bytes_in_use")
  + tuple(f"val_{m}" for m in METRICS)
  + tuple(f"test_{m}" for m in METRICS)
  + ("wall_s",)
  + (
    "best_metric",
    "best_value",
    "best_step",
  )  # WORKDIR/best/best.json (config.eval.best_metric), if kept
)
POINT_FILE = (
  "sweep_point.json"  # the sweep's own record of a point: its command, launch and wall time
)


class SweepError(UserError, ValueError):
  """A flag value the study cannot use, or a point directory that holds another run."""


# ----------------------------------------------------------------------------- the arithmetic


def parse_batch_sizes(text: str) -> list[int]:
  try:
    sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
  except ValueError:
    raise SweepError(
      f"--batch-sizes {text}: give positive integers separated by commas, e.g. 256,1024,4096"
    ) from None
  if not sizes or any(b <= 0 for b in sizes):
    raise SweepError(
      f"--batch-sizes {text}: give positive integers separated by commas, e.g. 256,1024,4096"
    )
  if len(set(sizes)) != len(sizes):
    raise SweepError(f"--batch-sizes {text}: a batch size repeats")
  return sorted(sizes)


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
  """The config's lr (at its own batch size base_batch_size) scaled to batch_size by `rule`."""
  if rule == "none":
    return float(lr)
  if rule == "linear":
    return float(lr) * batch_size / base_batch_size
  if rule == "sqrt":
    return float(lr) * math.sqrt(batch_size / base_batch_size)
  raise SweepError(f"--lr-rule {rule}: use one of {', '.join(LR_RULES)}")


def steps_for(budget_ecgs: int, batch_size: int) -> int:
  """Steps that see at least budget_ecgs ECGs at batch_size: ceil(budget / B)."""
  return -(-budget_ecgs // batch_size)


def scaled_warmup(warmup_steps: int, batch_size: int, base_batch_size: int) -> int:
  """Warm-up kept in ECGs (warmup_steps x base_batch_size of them); at least one step if there is any."""
  if warmup_steps <= 0:
    return 0
  return max(1, round(warmup_steps * base_batch_size / batch_size))


def microbatches_for(batch_size: int, microbatch_ecgs: int | None) -> int:
  """B / M for B > M (gradient caching), else 1; M must divide B."""
  if not microbatch_ecgs or batch_size <= microbatch_ecgs:
    return 1
  if batch_size % microbatch_ecgs:
    raise SweepError(
      f"--microbatch-ecgs {microbatch_ecgs}: batch size {batch_size} is not a multiple of it; give a "
      "--microbatch-ecgs that divides every batch size above it"
    )
  return batch_size // microbatch_ecgs


# ----------------------------------------------------------------------------- configs


def load_config(spec: str, overrides: Sequence[str]):
  """The ConfigDict that `main --config spec *overrides` trains with (the same absl / ml_collections parsing)."""
  from absl import flags
  from ml_collections import config_flags

  from ecg_contrastive import main as main_lib

  argv = ["sweep", "--config", spec, *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  try:
    values(argv)
    config = values.config
    config.get("seed")
  except Exception as e:  # noqa: BLE001 (absl, ml_collections and the config file raise many kinds)
    raise SweepError(main_lib._explain_parse_error(argv, e)) from None
  return config


def _as_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _differences(a, b, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [
      d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")
    ]
  return [] if a == b else [prefix[:-1]]


# ----------------------------------------------------------------------------- the study


class Point:
  def __init__(self, root: str, batch_size: int, overrides: list[str], values: dict):
    self.batch_size = batch_size
    self.workdir = paths.join(root, f"b{batch_size}")
    self.overrides = overrides  # the --config.* flags that make this point
    self.values = values  # microbatches, lr, warmup_steps, steps


def plan(args, user_overrides: list[str]) -> tuple[object, int, str, list[Point]]:
  """(base config, budget in ECGs, where the budget comes from, points)."""
  base = load_config(args.config, user_overrides)
  b0, lr0, warm0 = int(base.batch_size), float(base.optimizer.lr), int(base.optimizer.warmup_steps)
  if args.ecgs is not None:
    budget, source = args.ecgs, f"--ecgs {args.ecgs}"
  else:
    epochs = args.epochs
    if epochs is None and base.num_steps:
      budget, source = (
        int(base.num_steps) * b0,
        f"config: num_steps {base.num_steps} x batch_size {b0}",
      )
    else:
      epochs = epochs if epochs is not None else base.num_epochs
      size = train_size(base)
      budget = int(round(epochs * size))
      source = f"{epochs:g} epoch(s) of {base.train_split} ({size} records)"
  if budget <= 0:
    raise SweepError(f"the budget is {budget} ECGs ({source}); give --ecgs N or --epochs N above 0")
  points = []
  for b in parse_batch_sizes(args.batch_sizes):
    values = dict(
      microbatches=microbatches_for(b, args.microbatch_ecgs),
      lr=scaled_lr(lr0, b, b0, args.lr_rule),
      warmup_steps=scaled_warmup(warm0, b, b0),
      steps=steps_for(budget, b),
    )
    overrides = [
      f"--config.batch_size={b}",
      f"--config.microbatches={values['microbatches']}",
      f"--config.optimizer.lr={values['lr']!r}",
      f"--config.optimizer.warmup_steps={values['warmup_steps']}",
      f"--config.num_steps={values['steps']}",
    ]
    points.append(Point(args.root, b, overrides, values))
  return base, budget, source, points


def train_size(config) -> int:
  """Records of the config's train split (prepares the dataset on first use, as training would)."""
  from ecg_contrastive.data import pipeline

  source = pipeline.open_source(
    config.dataset,
    config.train_split,
    config.data_dir or None,
    source_dir=config.get("source_dir") or None,
    host_read=config.data.host_read,  # 'stream': the record index only, no int16 cache to count rows
  )
  return len(source)


def _read_json(p: str) -> dict | None:
  try:
    return json.loads(paths.read_text(p))
  except FileNotFoundError:
    return None


def status(point: Point, expected: dict) -> str:
  """'finished', 'unfinished' (nothing or part of a run there) ; a run of another config is a SweepError."""
  config = _read_json(paths.join(point.workdir, "config.json"))
  if config is not None:
    diff = _differences(config, expected)
    if diff:
      raise SweepError(
        f"{point.workdir} holds a run of another config (config.{', config.'.join(diff[:4])} differ); move it "
        "aside or give another --root"
      )
  done = all(
    paths.exists(paths.join(point.workdir, "eval", f"{s}.json")) for s in ("validation", "test")
  )
  return "finished" if config is not None and done else "unfinished"


def main_args(args, point: Point, user_overrides: list[str]) -> list[str]:
  """The arguments of ecg_contrastive.main for this point (paths absolute: the launchers run from the repo)."""
  config = args.config
  file, _, variant = config.partition(":")
  if os.path.isfile(file):
    config = os.path.abspath(file) + (f":{variant}" if variant else "")
  workdir = point.workdir if paths.is_remote(point.workdir) else os.path.abspath(point.workdir)
  return ["--config", config, "--workdir", workdir, *user_overrides, *point.overrides]


def launch_command(args, point: Point, user_overrides: list[str]) -> list[str]:
  rest = main_args(args, point, user_overrides)
  if args.launch == "local":
    return [sys.executable, "-m", "ecg_contrastive.main", *rest]
  if args.launch == "slurm":
    return ["sbatch", "launch/slurm_gpu.sbatch", *rest]
  remote = f"cd {args.tpu_repo_dir} && bash launch/tpu_vm.sh " + " ".join(_quote(a) for a in rest)
  return [
    "gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu or "TPU_NAME", "--zone",
    args.zone or "ZONE", "--worker=all", "--command", remote,
  ]  # fmt: skip


def _quote(arg: str) -> str:
  import shlex

  return shlex.quote(arg)


def check_launcher(args) -> None:
  if args.launch == "slurm" and not args.dry_run and shutil.which("sbatch") is None:
    raise SweepError(
      "--launch slurm: sbatch is not on PATH; run this on a SLURM login node, or use --launch local"
    )
  if args.launch == "tpu" and args.tpu and not args.dry_run and shutil.which("gcloud") is None:
    raise SweepError(
      "--launch tpu: gcloud is not on PATH; install the Google Cloud CLI (cloud.google.com/sdk), or drop --tpu "
      "to print the commands"
    )
  if args.launch == "tpu" and args.tpu and not args.zone:
    raise SweepError("--launch tpu --tpu NAME: give --zone ZONE too")


def run_point(args, point: Point, command: list[str], say) -> None:
  """Launches one point: local runs it to the end (or resumes it); slurm / tpu submit it."""
  record = _read_json(paths.join(point.workdir, POINT_FILE)) or {}
  if args.launch == "slurm" and record.get("submitted") and not args.resubmit:
    say(
      f"b{point.batch_size}: submitted earlier ({record['submitted']}); pending (--resubmit to submit again)"
    )
    return
  say(f"b{point.batch_size}: {' '.join(_quote(c) for c in command)}")
  if args.dry_run:
    return
  paths.makedirs(point.workdir)
  if args.launch == "tpu" and not args.tpu:
    return  # printed only
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  start, stopped = time.perf_counter(), False
  if args.launch == "slurm":
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
      raise SweepError(
        f"b{point.batch_size}: sbatch failed: {one_line(done.stderr or done.stdout)}"
      )
    record["submitted"] = one_line(done.stdout)
    say(f"b{point.batch_size}: {record['submitted']}")
  else:
    code, stopped = _run_to_the_end(command, env, say)
    record["wall_s"] = record.get("wall_s", 0.0) + time.perf_counter() - start
    if code and not stopped:
      say(f"b{point.batch_size}: the run exited with code {code}; its output above says why")
  record["command"] = command
  paths.write_text(paths.join(point.workdir, POINT_FILE), json.dumps(record, indent=1))
  if args.launch != "slurm" and stopped:
    say(
      f"b{point.batch_size}: stopped (the run saved a checkpoint); rerun the same command to resume"
    )
    raise SystemExit(130)


def _run_to_the_end(command: list[str], env: dict, say) -> tuple[int, bool]:
  """(exit code, whether SIGINT / SIGTERM stopped it). Ctrl-C reaches the run too (same process group); SIGTERM
  is passed on to it; either way the study waits while the run finishes its step and saves its checkpoint."""
  process = subprocess.Popen(command, cwd=REPO, env=env)
  stopped = False

  def forward(signum, _frame):
    nonlocal stopped
    stopped = True
    process.send_signal(signum)

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    while True:
      try:
        return process.wait(), stopped
      except KeyboardInterrupt:
        stopped = True
        say("interrupted: waiting for the run to save its checkpoint and stop")
  finally:
    signal.signal(signal.SIGTERM, previous)


def collect(point: Point) -> dict:
  """The results.csv row of a finished point."""
  rows = [
    json.loads(line)
    for line in paths.read_text(paths.join(point.workdir, "metrics.jsonl")).splitlines()
    if line.strip()
  ]
  rates = [r["ecg_per_s"] for r in rows if r.get("ecg_per_s")]
  rates = rates[1:] or rates  # the first window holds the compilation
  peaks = [r["peak_bytes_in_use"] for r in rows if r.get("peak_bytes_in_use")]
  evals = {
    split: _read_json(paths.join(point.workdir, "eval", f"{split}.json"))
    for split in ("validation", "test")
  }
  record = _read_json(paths.join(point.workdir, POINT_FILE)) or {}
  v = point.values
  row = dict(
    batch_size=point.batch_size,
    microbatches=v["microbatches"],
    lr=v["lr"],
    warmup_steps=v["warmup_steps"],
    steps=v["steps"],
    ecgs_seen=v["steps"] * point.batch_size,
    ecg_per_s=round(statistics.median(rates), 1) if rates else "",
    peak_bytes_in_use=int(max(peaks)) if peaks else "",
    wall_s=round(record["wall_s"], 1) if "wall_s" in record else "",
  )
  for split, prefix in (("validation", "val"), ("test", "test")):
    for m in METRICS:
      row[f"{prefix}_{m}"] = evals[split].get(m, "")
  best = _read_json(paths.join(point.workdir, "best", "best.json")) or {}
  row.update(
    best_metric=best.get("metric", ""),
    best_value=best.get("value", ""),
    best_step=best.get("step", ""),
  )
  return row


def write_csv(root: str, rows: list[dict], budget: int) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({**row, "budget_ecgs": budget})
  p = paths.join(root, "results.csv")
  paths.write_text(p, out.getvalue())
  return p


def write_plot(root: str, rows: list[dict], title: str) -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sizes = [r["batch_size"] for r in rows]
  fig, (acc, speed) = plt.subplots(1, 2, figsize=(10, 4))
  for key, label, style in (
    ("val_top1", "validation top-1", "o-"),
    ("test_top1", "test top-1", "o--"),
    ("val_top5", "validation top-5", "s-"),
    ("test_top5", "test top-5", "s--"),
  ):
    acc.plot(sizes, [r[key] for r in rows], style, label=label)
  acc.set(xlabel="global batch size", ylabel="zero-shot accuracy", title="accuracy", ylim=(0, 1))
  acc.legend()
  speed.plot(sizes, [r["ecg_per_s"] or float("nan") for r in rows], "o-")
  speed.set(xlabel="global batch size", ylabel="ECG/s (median)", title="throughput")
  for ax in (acc, speed):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  p = paths.join(root, "batch_size.png")
  paths.write_bytes(p, buf.getvalue())
  return p


def table(points: list[Point], rows: dict[int, dict]) -> str:
  lines = [
    f"{'batch':>6} {'micro':>5} {'lr':>9} {'steps':>6} {'ECG/s':>8} {'val top1':>8} {'val top5':>8} "
    f"{'test top1':>9} {'test top5':>9}"
  ]
  for p in points:
    r = rows.get(p.batch_size)
    v = p.values
    head = f"{p.batch_size:>6} {v['microbatches']:>5} {v['lr']:>9.3g} {v['steps']:>6}"
    if r is None:
      lines.append(f"{head} pending: no {paths.join(p.workdir, 'eval', 'test.json')} yet")
    else:
      lines.append(
        f"{head} {r['ecg_per_s'] or float('nan'):>8.0f} {r['val_top1']:>8.3f} {r['val_top5']:>8.3f} "
        f"{r['test_top1']:>9.3f} {r['test_top5']:>9.3f}"
      )
  return "\n".join(lines)


def sweep(args, user_overrides: list[str], say=print) -> int:
  """The study; returns the exit code (0, or 1 when a local run failed)."""
  check_launcher(args)
  from ecg_contrastive.config_check import check_config

  base, budget, source, points = plan(args, user_overrides)
  say(
    f"batch-size study in {args.root}: budget {budget} ECGs per point ({source}); lr rule {args.lr_rule} from "
    f"lr {base.optimizer.lr:g} at batch {base.batch_size}; warm-up kept in ECGs "
    f"({base.optimizer.warmup_steps} steps x {base.batch_size}); launch {args.launch}"
  )
  expected, states = {}, {}
  for p in points:  # every point's config checked (and its directory) before the first run starts
    config = load_config(args.config, [*user_overrides, *p.overrides])
    try:
      check_config(config)
    except UserError as e:
      raise SweepError(f"b{p.batch_size}: {one_line(e)}") from None
    expected[p.batch_size] = _as_json(config)
    states[p.batch_size] = status(p, expected[p.batch_size])
  paths.makedirs(args.root)
  failed = []
  for p in points:
    if states[p.batch_size] == "finished":
      say(
        f"b{p.batch_size}: finished earlier (eval/validation.json, eval/test.json, same config): skipped"
      )
      continue
    run_point(args, p, launch_command(args, p, user_overrides), say)
    if args.launch == "local" and not args.dry_run:
      states[p.batch_size] = status(p, expected[p.batch_size])
      if states[p.batch_size] != "finished":
        failed.append(p.batch_size)
  rows = {p.batch_size: collect(p) for p in points if states[p.batch_size] == "finished"}
  say(table(points, rows))
  if rows:
    ordered = [rows[b] for b in sorted(rows)]
    say(f"wrote {write_csv(args.root, ordered, budget)}")
    name = base.loss.name + (
      f", logit_bias {base.train.logit_bias:g}" if base.train.get("logit_bias") is not None else ""
    )
    title = (
      f"{base.dataset}, loss {name}, {budget} ECGs per point, lr rule {args.lr_rule} "
      f"(lr {base.optimizer.lr:g} at batch {base.batch_size})"
    )
    say(f"wrote {write_plot(args.root, ordered, title)}")
  if failed:
    say(f"not finished: b{', b'.join(map(str, failed))}; rerun the same command to resume them")
    return 1
  return 0


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> NoReturn:
    fail(f"{message}; see --help")


def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parser() -> argparse.ArgumentParser:
  p = _Parser(
    prog="python -m ecg_contrastive.sweep",
    description=__doc__.split("\n\n")[0].strip(),
    epilog="Any --config.KEY=VALUE is passed through to every run. See the module docstring for the rules.",
  )
  p.add_argument("--config", required=True, help="a configs/*.py file, optionally with ':arg'")
  p.add_argument(
    "--root", required=True, help="study folder: ROOT/b{B} per point, results.csv, batch_size.png"
  )
  p.add_argument("--batch-sizes", required=True, help="global batch sizes, e.g. 256,1024,4096")
  p.add_argument(
    "--lr-rule",
    choices=LR_RULES,
    default="sqrt",
    help="lr from the config's own optimizer.lr at its own batch_size B0: linear lr*B/B0, sqrt lr*sqrt(B/B0) "
    "(default; the rule for Adam-type optimizers), none: unchanged",
  )
  budget = p.add_mutually_exclusive_group()
  budget.add_argument("--ecgs", type=int, help="ECGs seen per point (num_steps = ceil(ECGs / B))")
  budget.add_argument(
    "--epochs",
    type=float,
    help="epochs of the train split per point (default: the config's own budget)",
  )
  p.add_argument(
    "--microbatch-ecgs",
    type=int,
    help="batches above M ECGs use gradient caching over B / M micro-batches (M must divide them)",
  )
  p.add_argument("--launch", choices=("local", "slurm", "tpu"), default="local")
  p.add_argument(
    "--tpu", help="--launch tpu: the TPU VM's name (without it the commands are printed only)"
  )
  p.add_argument("--zone", help="--launch tpu: the TPU VM's zone")
  p.add_argument(
    "--tpu-repo-dir", default="ecg_contrastive", help="--launch tpu: the repository on the hosts"
  )
  p.add_argument(
    "--resubmit", action="store_true", help="--launch slurm: submit points submitted before again"
  )
  p.add_argument(
    "--dry-run", action="store_true", help="print the commands; run and submit nothing"
  )
  return p


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  args, rest = parser().parse_known_args(list(argv))
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    fail(
      f"unrecognized arguments: {' '.join(unknown)}; see --help (config keys go as --config.KEY=VALUE)"
    )
  for name in ("ecgs", "epochs", "microbatch_ecgs"):
    value = getattr(args, name)
    if value is not None and value <= 0:
      fail(f"--{name.replace('_', '-')} {value:g}: give a number above 0")
  return args, rest


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  return exit_code(
    lambda: sweep(args, overrides, say=lambda line: print(line, flush=True)),
    want_traceback(argv or sys.argv),
  )


if __name__ == "__main__":
  sys.exit(main())
