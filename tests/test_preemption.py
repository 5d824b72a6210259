"""Fault injection: SIGTERM/SIGINT from outside at random steps; each run saves and exits 0, and the resumed
runs end with parameters bitwise equal to an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ecg_contrastive import checkpoints

pytestmark = pytest.mark.slow  # subprocesses: JAX start-up and compiles in each
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("preempt")
  return {
    "data_dir": str(root / "tfds"),
    "cache_dir": str(root / "text"),
  }


def start_main(workdir, dirs, num_steps=NUM_STEPS):
  args = [
    "--config",
    "configs/default.py:tiny",
    f"--workdir={workdir}",
    f"--config.data_dir={dirs['data_dir']}",
    f"--config.text.cache_dir={dirs['cache_dir']}",
    f"--config.num_steps={num_steps}",
    "--config.log_every=1",
    "--config.checkpoint_every=100",
    "--config.eval_splits=('validation',)",
  ]
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
  }  # compiles: the session's JAX compilation cache (conftest.py), so each rerun reads the step back
  return subprocess.Popen(
    [sys.executable, "-m", "ecg_contrastive.main", *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-2000:] + err[-3000:]
  return err


def test_signals_at_random_steps_resume_bitwise(tmp_path, dirs):
  straight = str(tmp_path / "straight")
  finish(start_main(straight, dirs))

  rng = np.random.default_rng(11)
  kill_at = sorted(rng.choice(np.arange(2, NUM_STEPS - 5), size=3, replace=False).tolist())
  interrupted = str(tmp_path / "interrupted")
  saved = []
  for k, sig in zip(kill_at, (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)):
    k = (
      max(k, saved[-1] + 1) if saved else k
    )  # a step this run trains (the signal may have landed steps late)
    known = len(logged_steps(interrupted))
    proc = start_main(interrupted, dirs)
    deadline = time.monotonic() + 600
    while not any(m["step"] >= k for m in logged_steps(interrupted)[known:] if "loss" in m):
      assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.02)
    os.kill(proc.pid, sig)
    err = finish(proc)
    lines = [line for line in err.splitlines() if "preempted:" in line]
    assert len(lines) == 1, err[-3000:]
    step = int(
      re.search(r"preempted: saved step (\d+); rerun the same command to resume$", lines[0]).group(
        1
      )
    )
    assert k <= step < NUM_STEPS and (not saved or step > saved[-1])
    saved.append(step)
    assert step in checkpoints.make_manager(interrupted).all_steps()
    assert not os.path.exists(os.path.join(interrupted, "run.lock"))
    assert not os.path.exists(
      os.path.join(interrupted, "eval")
    )  # no final evaluation when preempted
  err = finish(start_main(interrupted, dirs))
  assert f"resumed from step {saved[-1]}" in err

  a = checkpoints.restore_inference(straight)
  b = checkpoints.restore_inference(interrupted)
  assert a.step == b.step == NUM_STEPS
  leaves_a, leaves_b = (
    jax.tree_util.tree_leaves(a.variables),
    jax.tree_util.tree_leaves(b.variables),
  )
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # every step was logged once (the stop step is saved, so nothing is replayed), with bitwise equal losses
  rows_a = [m for m in logged_steps(straight) if "loss" in m]
  rows_b = [m for m in logged_steps(interrupted) if "loss" in m]
  assert [m["step"] for m in rows_b] == list(range(1, NUM_STEPS + 1)), (kill_at, saved)
  assert [m["loss"] for m in rows_b] == [m["loss"] for m in rows_a]


def start_processes(workdir, dirs, port, n=2):
  """n JAX processes (gloo over loopback) as launch/local_multiprocess.sh starts them, with their Popen handles."""
  args = [
    "--config",
    "configs/default.py:tiny",
    f"--workdir={workdir}",
    f"--config.data_dir={dirs['data_dir']}",
    f"--config.text.cache_dir={dirs['cache_dir']}",
    "--config.num_steps=12",
    "--config.log_every=1",
    "--config.checkpoint_every=100",
    "--config.eval_splits=('validation',)",
    "--distributed",
  ]
  procs = []
  for i in range(n):
    env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_NUM_PROCESSES": str(n),
      "JAX_PROCESS_ID": str(i),
    }
    procs.append(
      subprocess.Popen(
        [sys.executable, "-m", "ecg_contrastive.main", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  return procs


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, dirs):
  """The signal reaches process 1 only: the all-gathered flag stops both after the same step, both exit 0."""
  if not os.path.exists(
    dirs["cache_dir"]
  ):  # data and text caches are built by one process, not two at once
    finish(start_main(str(tmp_path / "warm"), dirs, num_steps=1))
  workdir = str(tmp_path / "multi")
  port = 24000 + os.getpid() % 1000
  procs = start_processes(workdir, dirs, port)
  deadline = time.monotonic() + 600
  while not any(m["step"] >= 3 for m in logged_steps(workdir) if "loss" in m):
    assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, [
      p.communicate()[1][-1500:] for p in procs
    ]
    time.sleep(0.02)
  os.kill(procs[1].pid, signal.SIGTERM)
  errs = [finish(p) for p in procs]
  stops = [
    re.findall(r"preempted: saved step (\d+); rerun the same command to resume", err)
    for err in errs
  ]
  assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1], [err[-2000:] for err in errs]
  step = int(stops[0][0])
  assert 3 <= step < 12
  assert checkpoints.make_manager(workdir).all_steps() == [step]
  assert not os.path.exists(os.path.join(workdir, "run.lock"))

  errs = [finish(p) for p in start_processes(workdir, dirs, port + 1)]
  assert all(f"resumed from step {step}" in err for err in errs)
  assert [m["step"] for m in logged_steps(workdir) if "loss" in m] == list(range(1, 13))
