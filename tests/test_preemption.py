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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("preempt")
  return {"data_dir": str(root / "tfds"), "cache_dir": str(root / "text"), "jit_cache": str(root / "jit")}


def start_main(workdir, dirs):
  args = ["--config", "configs/default.py:tiny", f"--workdir={workdir}", f"--config.data_dir={dirs['data_dir']}",
          f"--config.text.cache_dir={dirs['cache_dir']}", f"--config.num_steps={NUM_STEPS}", "--config.log_every=1",
          "--config.checkpoint_every=100", "--config.eval_splits=('validation',)"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_COMPILATION_CACHE_DIR": dirs["jit_cache"], "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.Popen([sys.executable, "-m", "ecg_contrastive.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    k = max(k, saved[-1] + 1) if saved else k  # a step this run trains (the signal may have landed steps late)
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
    step = int(re.search(r"preempted: saved step (\d+); rerun the same command to resume$", lines[0]).group(1))
    assert k <= step < NUM_STEPS and (not saved or step > saved[-1])
    saved.append(step)
    assert step in checkpoints.make_manager(interrupted).all_steps()
    assert not os.path.exists(os.path.join(interrupted, "run.lock"))
    assert not os.path.exists(os.path.join(interrupted, "eval"))  # no final evaluation when preempted
  err = finish(start_main(interrupted, dirs))
  assert f"resumed from step {saved[-1]}" in err

  a = checkpoints.restore_inference(straight)
  b = checkpoints.restore_inference(interrupted)
  assert a.step == b.step == NUM_STEPS
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # every step was logged once (the stop step is saved, so nothing is replayed), with bitwise equal losses
  rows_a = [m for m in logged_steps(straight) if "loss" in m]
  rows_b = [m for m in logged_steps(interrupted) if "loss" in m]
  assert [m["step"] for m in rows_b] == list(range(1, NUM_STEPS + 1)), (kill_at, saved)
  assert [m["loss"] for m in rows_b] == [m["loss"] for m in rows_a]
