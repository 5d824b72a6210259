"""The launchers: the sweep wrapper, the interpreter they pick, the multi-process launcher."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "launch", "sweep_batch_size.sh")


def sweep(tmp_path, *args: str, **env) -> subprocess.CompletedProcess:
  return subprocess.run(
    ["bash", SWEEP, "--root", str(tmp_path), "--config", "configs/default.py:tiny", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHON": sys.executable, **env},
  )


def test_the_wrapper_runs_the_sweep_module(tmp_path):
  """launch/sweep_batch_size.sh passes every flag to python -m ecg_contrastive.sweep (tests/test_sweep.py)."""
  result = sweep(
    tmp_path, "--batch-sizes", "32,64", "--ecgs", "256", "--lr-rule", "linear", "--dry-run"
  )
  assert result.returncode == 0, result.stderr
  commands = [line for line in result.stdout.splitlines() if "ecg_contrastive.main" in line]
  assert len(commands) == 2 and "--config.optimizer.lr=0.004" in commands[1]
  assert "--config.num_steps=4" in commands[1] and result.stdout.count("pending: no") == 2


def test_the_wrapper_passes_the_one_line_errors_through(tmp_path):
  result = sweep(tmp_path, "--batch-sizes", "768", "--microbatch-ecgs", "512")
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
    "error: --microbatch-ecgs 512: batch size 768 is not a multiple of it; give a --microbatch-ecgs that "
    "divides every batch size above it"
  ]


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
  env.update(PATH=f"{bare_bin}:{env['PATH']}", VIRTUAL_ENV=sys.prefix)
  result = subprocess.run(
    ["bash", SWEEP, "--root", str(tmp_path / "sweep"), "--batch-sizes", "512", "--ecgs", "512"]
    + ["--config", "configs/default.py:tiny", "--lr-rule", "linear", "--dry-run"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
  )
  assert result.returncode == 0, result.stderr
  assert "--config.optimizer.lr=0.032" in result.stdout  # linear from 2e-3 at 32


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
