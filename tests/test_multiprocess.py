"""Two JAX processes (gloo over loopback) train the same steps as one process with the same devices.

This pins the multi-host path: each process reads only its rows of the global batch, the loss
all-gathers across processes, and the losses match the single-process run.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, data_dirs, env_extra, processes):
  args = ["--config", "configs/default.py:tiny", f"--workdir={workdir}", f"--config.data_dir={data_dirs['data_dir']}",
          f"--config.text.cache_dir={data_dirs['cache_dir']}", "--config.num_steps=4", "--config.log_every=1",
          "--config.checkpoint_every=4", "--config.eval_splits=('validation',)"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  env.pop("XLA_FLAGS", None)
  if processes == 1:
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    cmd = [sys.executable, "-m", "ecg_contrastive.main", *args]
  else:
    env["DEVICES_PER_PROCESS"] = "2"
    env["PYTHON"] = sys.executable  # the interpreter running the tests, never a bare `python` from PATH
    cmd = ["bash", "launch/local_multiprocess.sh", str(processes), *args]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f], out


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp")
  return {"data_dir": str(root / "tfds"), "cache_dir": str(root / "text")}


def test_two_processes_match_one_process(tmp_path, data_dirs):
  single, _ = run_main(tmp_path / "single", data_dirs, {}, processes=1)
  multi, out = run_main(tmp_path / "multi", data_dirs, {"PORT": str(23000 + os.getpid() % 1000)}, processes=2)
  loss_single = [m["loss"] for m in single if "loss" in m]
  loss_multi = [m["loss"] for m in multi if "loss" in m]
  assert len(loss_single) == len(loss_multi) == 4
  np.testing.assert_allclose(loss_multi, loss_single, rtol=2e-4)
  log0 = open(tmp_path / "multi" / "process_0.log").read()
  assert "2 process(es) x 16" in log0 and "4 device(s) x 8" in log0
  assert os.path.exists(tmp_path / "multi" / "checkpoints" / "4")
