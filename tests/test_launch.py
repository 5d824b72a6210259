"""launch/sweep_batch_size.sh: one run per batch size (linear lr, micro-batches by ECGS_PER_MICROBATCH), a summary."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "launch", "sweep_batch_size.sh")


def sweep(tmp_path, sizes: str, **env) -> subprocess.CompletedProcess:
  return subprocess.run(
    ["bash", SWEEP, str(tmp_path), sizes, "--config", "configs/default.py:tiny"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "LAUNCH": "echo", "PYTHON": sys.executable, **env},
  )


def test_commands_scale_the_learning_rate_and_cache_gradients_above_the_limit(tmp_path):
  result = sweep(tmp_path, "256 1024 2048", ECGS_PER_MICROBATCH="512")
  assert result.returncode == 0, result.stderr
  commands = [line.split() for line in result.stdout.splitlines() if line.startswith("--config")]
  flags = [dict(arg.split("=", 1) for arg in c if arg.startswith("--config.")) for c in commands]
  assert [f["--config.batch_size"] for f in flags] == ["256", "1024", "2048"]
  assert [float(f["--config.optimizer.lr"]) for f in flags] == [1e-3, 4e-3, 8e-3]
  assert [f["--config.microbatches"] for f in flags] == ["1", "2", "4"]
  assert result.stdout.count("pending: no") == 3  # submitted, not run yet (as with LAUNCH=sbatch)


def test_a_batch_that_is_not_a_multiple_of_the_micro_batch_stops(tmp_path):
  result = sweep(tmp_path, "768", ECGS_PER_MICROBATCH="512")
  assert (
    result.returncode == 2
    and "batch 768 is not a multiple of ECGS_PER_MICROBATCH=512" in result.stderr
  )


def test_summary_reads_each_finished_run(tmp_path):
  run = tmp_path / "b1024"
  (run / "eval").mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"microbatches": 2}))
  (run / "metrics.jsonl").write_text(
    "\n".join(
      json.dumps(m)
      for m in [
        {"step": 5, "ecg_per_s": 100.0},
        {"step": 10, "ecg_per_s": 300.0},
        {"step": 15, "ecg_per_s": 200.0},
        {"step": 15, "eval/test/top1": 0.5},
      ]
    )
  )
  (run / "eval" / "test.json").write_text(json.dumps({"top1": 0.5, "top5": 0.875}))
  result = sweep(tmp_path, "1024", LAUNCH="true")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1].split() == ["1024", "2", "200", "0.500", "0.875"]


def test_launchers_refuse_an_interpreter_without_the_packages(tmp_path):
  """A launcher never falls back to a bare `python` without the packages: it stops with one line saying what to do."""
  bare = tmp_path / "python"
  bare.write_text("#!/bin/sh\nexit 1\n")  # an interpreter that cannot import anything
  bare.chmod(0o755)
  for script in ("local_multiprocess.sh", "sweep_batch_size.sh", "tpu_vm.sh"):
    result = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", script), "2", "256", "--workdir=" + str(tmp_path)],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      env={**os.environ, "PYTHON": str(bare)},
    )
    assert result.returncode == 2, (script, result.stdout, result.stderr)
    assert result.stderr.strip().startswith(f"error: {bare} cannot import ecg_contrastive"), (
      script,
      result.stderr,
    )
    assert "make setup" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_launchers_find_the_interpreter_with_the_packages_when_path_has_none(tmp_path):
  """With a bare python3 first on PATH (a fresh machine) and no PYTHON set, the active venv is used."""
  bare_bin = tmp_path / "bin"
  bare_bin.mkdir()
  for name in ("python", "python3"):
    (bare_bin / name).write_text("#!/bin/sh\nexit 1\n")
    (bare_bin / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
  env.update(PATH=f"{bare_bin}:{env['PATH']}", VIRTUAL_ENV=sys.prefix, LAUNCH="echo")
  result = subprocess.run(
    ["bash", SWEEP, str(tmp_path / "sweep"), "512", "--config", "configs/default.py:tiny"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
  )
  assert result.returncode == 0, result.stderr
  assert "--config.optimizer.lr=0.002" in result.stdout


def test_multiprocess_launcher_keeps_logs_local_for_a_gs_workdir(tmp_path):
  """A gs:// workdir is passed through to every process as given; the per-process logs go to a local folder and
  no local folder named like `gs:` is made."""
  fake = tmp_path / "python"
  fake.write_text(
    '#!/bin/sh\n[ "$1" = "-c" ] && exit 0\necho "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES: $*"\n'
  )
  fake.chmod(0o755)
  result = subprocess.run(
    [
      "bash",
      os.path.join(ROOT, "launch", "local_multiprocess.sh"),
      "2",
      "--workdir",
      "gs://bucket/run",
      "--config=configs/default.py:tiny",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHON": str(fake), "LOG_DIR": str(tmp_path / "logs")},
  )
  assert result.returncode == 0, result.stderr
  for i in range(2):
    log = (tmp_path / "logs" / f"process_{i}.log").read_text()
    assert (
      log.strip()
      == f"process {i} of 2: -m ecg_contrastive.main --distributed --workdir gs://bucket/run "
      "--config=configs/default.py:tiny"
    )
  assert not any("gs:" in str(p) for p in tmp_path.rglob("*"))
