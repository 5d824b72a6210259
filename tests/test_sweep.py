"""ecg_contrastive.sweep: the batch-size study (equal ECG budget, lr rules, gradient caching, skip on rerun)."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from ecg_contrastive import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/default.py:tiny"  # batch_size 32, optimizer.lr 2e-3, warmup_steps 5


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)


def run_main(capsys, *argv):
  """(exit code, stdout, stderr) of sweep.main(argv) in this process."""
  try:
    code = sweep.main(list(argv))
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_lr_rules_scale_from_the_configs_own_lr_and_batch_size():
  assert sweep.scaled_lr(2e-3, 128, 32, "none") == 2e-3
  assert sweep.scaled_lr(2e-3, 128, 32, "linear") == pytest.approx(8e-3)
  assert sweep.scaled_lr(2e-3, 128, 32, "sqrt") == pytest.approx(4e-3)
  assert sweep.scaled_lr(1e-3, 64, 256, "sqrt") == pytest.approx(5e-4)
  with pytest.raises(sweep.SweepError, match="--lr-rule cubic"):
    sweep.scaled_lr(1e-3, 64, 256, "cubic")


def test_budget_to_steps_and_warmup_kept_in_ecgs():
  assert sweep.steps_for(64_000, 32) == 2000
  assert sweep.steps_for(64_000, 4096) == math.ceil(64_000 / 4096) == 16
  assert sweep.steps_for(100, 32) == 4  # at least the budget
  assert sweep.scaled_warmup(100, 256, 256) == 100
  assert sweep.scaled_warmup(100, 1024, 256) == 25
  assert sweep.scaled_warmup(5, 4096, 32) == 1  # warms up for at least one step
  assert sweep.scaled_warmup(0, 4096, 32) == 0


def test_microbatch_split_and_its_error():
  assert sweep.microbatches_for(256, None) == 1
  assert sweep.microbatches_for(256, 512) == 1
  assert sweep.microbatches_for(2048, 512) == 4
  with pytest.raises(
    sweep.SweepError, match="--microbatch-ecgs 512: batch size 768 is not a multiple"
  ):
    sweep.microbatches_for(768, 512)


@pytest.mark.parametrize(
  "argv, expected",
  [
    (["--batch-sizes", "32,x"], "--batch-sizes 32,x: give positive integers"),
    (["--batch-sizes", "32,-64"], "--batch-sizes 32,-64: give positive integers"),
    (["--batch-sizes", "32", "--lr-rule", "cubic"], "argument --lr-rule: invalid choice"),
    (["--batch-sizes", "32", "--ecgs", "0"], "--ecgs 0: give a number above 0"),
    (["--batch-sizes", "32", "--ecgs", "9", "--epochs", "1"], "not allowed with argument"),
    (["--batch-sizes", "32", "--bogus"], "unrecognized arguments: --bogus"),
    (
      ["--batch-sizes", "256,768", "--microbatch-ecgs", "512", "--ecgs", "2000"],
      "--microbatch-ecgs 512: batch size 768 is not a multiple of it",
    ),
    (
      ["--batch-sizes", "32", "--ecgs", "64", "--config.batch_sise=3"],
      "unknown config key config.batch_sise; did you mean config.batch_size",
    ),
  ],
)
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path, capsys, argv, expected):
  code, _, err = run_main(capsys, "--config", TINY, "--root", str(tmp_path), *argv)
  assert code == 2 and err.startswith("error: ") and expected in err, err
  assert len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "b32").exists()


def test_slurm_without_sbatch_says_what_to_use(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))
  code, _, err = run_main(
    capsys, "--config", TINY, "--root", str(tmp_path), "--batch-sizes", "32", "--launch", "slurm"
  )
  assert code == 2 and err.strip() == (
    "error: --launch slurm: sbatch is not on PATH; run this on a SLURM login node, or use --launch local"
  )


def _fake_sbatch(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  sbatch = bin_dir / "sbatch"
  sbatch.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/submitted\necho "Submitted batch job 7"\n')
  sbatch.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  return tmp_path / "submitted"


def test_slurm_submits_each_point_once_with_its_lr_steps_and_microbatches(
  tmp_path, capsys, monkeypatch
):
  submitted = _fake_sbatch(tmp_path, monkeypatch)
  argv = ["--config", TINY, "--root", str(tmp_path / "study"), "--batch-sizes", "32,128,256"]
  argv += ["--lr-rule", "linear", "--ecgs", "1024", "--microbatch-ecgs", "64", "--launch", "slurm"]
  code, out, err = run_main(capsys, *argv, "--config.log_every=2")
  assert code == 0, err
  assert "budget 1024 ECGs per point (--ecgs 1024)" in out
  lines = submitted.read_text().splitlines()
  assert [line.split()[0] for line in lines] == ["launch/slurm_gpu.sbatch"] * 3
  flags = [
    dict(a.split("=", 1) for a in line.split() if a.startswith("--config.")) for line in lines
  ]
  assert [f["--config.batch_size"] for f in flags] == ["32", "128", "256"]
  assert [float(f["--config.optimizer.lr"]) for f in flags] == pytest.approx([2e-3, 8e-3, 16e-3])
  assert [f["--config.microbatches"] for f in flags] == ["1", "2", "4"]
  assert [f["--config.num_steps"] for f in flags] == ["32", "8", "4"]
  assert [f["--config.optimizer.warmup_steps"] for f in flags] == ["5", "1", "1"]
  assert all(f["--config.log_every"] == "2" for f in flags)  # passed through
  assert out.count("pending: no ") == 3 and not (tmp_path / "study" / "results.csv").exists()
  # a rerun submits nothing again
  code, out, _ = run_main(capsys, *argv, "--config.log_every=2")
  assert code == 0 and out.count("submitted earlier (Submitted batch job 7)") == 3
  assert len(submitted.read_text().splitlines()) == 3


def _finish(point_dir, config: dict, rates, top1):
  """What a finished run leaves behind (config.json, metrics.jsonl, eval/*.json)."""
  (point_dir / "eval").mkdir(parents=True)
  (point_dir / "config.json").write_text(json.dumps(config))
  rows = [{"step": 5 * (i + 1), "ecg_per_s": r} for i, r in enumerate(rates)]
  (point_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  for split in ("validation", "test"):
    metrics = dict(top1=top1, top5=0.5, superset_top1=0.6, macro_auroc=0.7)
    (point_dir / "eval" / f"{split}.json").write_text(json.dumps(metrics))


def test_finished_points_are_skipped_and_collected(tmp_path, capsys, monkeypatch):
  _fake_sbatch(tmp_path, monkeypatch)
  root = tmp_path / "study"
  argv = ["--config", TINY, "--root", str(root), "--batch-sizes", "32,64", "--ecgs", "640"]
  args, overrides = sweep.parse(argv)
  _, budget, _, points = sweep.plan(args, overrides)
  for p, rates in zip(points, ([1.0, 300.0, 100.0, 200.0], [5.0, 400.0]), strict=True):
    config = sweep.load_config(TINY, p.overrides)
    _finish(root / f"b{p.batch_size}", json.loads(config.to_json_best_effort()), rates, 0.25)
  code, out, err = run_main(capsys, *argv, "--launch", "slurm")
  assert code == 0, err
  assert out.count("finished earlier") == 2 and "pending" not in out
  rows = list(csv.DictReader(open(root / "results.csv")))
  assert [r["batch_size"] for r in rows] == ["32", "64"]
  assert [r["ecg_per_s"] for r in rows] == ["200.0", "400.0"]  # median after the first window
  assert [r["steps"] for r in rows] == ["20", "10"] and {r["ecgs_seen"] for r in rows} == {"640"}
  assert {r["budget_ecgs"] for r in rows} == {"640"} and budget == 640
  assert rows[0]["val_top1"] == "0.25" and rows[0]["peak_bytes_in_use"] == ""
  assert (root / "batch_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_point_directory_of_another_config_stops_the_study(tmp_path, capsys):
  (tmp_path / "b32").mkdir()
  (tmp_path / "b32" / "config.json").write_text(json.dumps({"batch_size": 32, "seed": 1}))
  code, _, err = run_main(
    capsys, "--config", TINY, "--root", str(tmp_path), "--batch-sizes", "32", "--ecgs", "64"
  )
  assert code == 2 and "b32 holds a run of another config" in err, err
  assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_study_trains_each_point_then_a_rerun_skips_them(tmp_path):
  """Two tiny runs (16 and 32 ECGs per batch, 64 ECGs each), the CSV and the PNG; a rerun trains nothing."""
  command = [
    sys.executable,
    "-m",
    "ecg_contrastive.sweep",
    "--config",
    TINY,
    "--root",
    str(tmp_path),
  ]
  command += ["--batch-sizes", "16,32", "--ecgs", "64", "--lr-rule", "linear"]
  first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert [r["batch_size"] for r in rows] == ["16", "32"]
  assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 2e-3])  # linear from 2e-3 at 32
  assert [r["steps"] for r in rows] == ["4", "2"] and [r["ecgs_seen"] for r in rows] == ["64", "64"]
  for r in rows:
    assert all(r[f"{s}_{m}"] != "" for s in ("val", "test") for m in sweep.METRICS), r
    assert float(r["ecg_per_s"]) > 0 and float(r["wall_s"]) > 0
  png = (tmp_path / "batch_size.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

  watched = [tmp_path / f"b{b}" / f for b in (16, 32) for f in ("metrics.jsonl", "eval/test.json")]
  before = {p: p.stat().st_mtime_ns for p in watched}
  checkpoints = {b: sorted(os.listdir(tmp_path / f"b{b}" / "checkpoints")) for b in (16, 32)}
  second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert second.returncode == 0, second.stderr[-3000:]
  assert (
    second.stdout.count("finished earlier") == 2 and "ecg_contrastive.main" not in second.stdout
  )
  assert "train:" not in second.stderr  # no training progress bar
  assert {p: p.stat().st_mtime_ns for p in watched} == before
  assert {
    b: sorted(os.listdir(tmp_path / f"b{b}" / "checkpoints")) for b in (16, 32)
  } == checkpoints
  assert list(csv.DictReader(open(tmp_path / "results.csv"))) == rows
