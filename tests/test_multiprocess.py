"""Two JAX processes (gloo over loopback) build the data once and train the same steps as one process with the
same devices.

This pins the multi-host path: each process reads only its rows of the global batch, the loss
all-gathers across processes, and the losses match the single-process run.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data_helpers import SYNTH_VERSION

pytestmark = pytest.mark.slow  # subprocesses: JAX start-up and compiles in each
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, data_dirs, env_extra, processes, extra_args=()):
  args = [
    "--config",
    "configs/default.py:tiny",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dirs['data_dir']}",
    f"--config.text.cache_dir={data_dirs['cache_dir']}",
    "--config.num_steps=4",
    "--config.log_every=1",
    "--config.checkpoint_every=4",
    "--config.eval_splits=('validation',)",
    *extra_args,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  env.pop("XLA_FLAGS", None)
  if processes == 1:
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    cmd = [sys.executable, "-m", "ecg_contrastive.main", *args]
  else:
    env["DEVICES_PER_PROCESS"] = "2"
    env["PYTHON"] = (
      sys.executable
    )  # the interpreter running the tests, never a bare `python` from PATH
    cmd = ["bash", "launch/local_multiprocess.sh", str(processes), *args]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f], out


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp")
  return {"data_dir": str(root / "tfds"), "cache_dir": str(root / "text")}


@pytest.fixture(scope="module")
def two_process_run(data_dirs, tmp_path_factory):
  """(metrics, workdir) of 4 steps on 2 processes x 2 CPU devices, started on an empty data dir and text cache."""
  workdir = tmp_path_factory.mktemp("multi") / "run"
  multi, _ = run_main(workdir, data_dirs, {"PORT": str(23000 + os.getpid() % 1000)}, processes=2)
  return multi, workdir


def test_two_processes_build_the_data_once_and_match_one_process(
  tmp_path, data_dirs, two_process_run
):
  """Two processes start on an empty data dir and text cache: process 0 builds the dataset, its int16 cache and
  the text embeddings while process 1 waits and reads them (one writer per file, no temporary left over); then
  one process with the same 4 devices trains the same steps to the same losses."""
  multi, multi_dir = two_process_run
  log0, log1 = (open(multi_dir / f"process_{i}.log").read() for i in (0, 1))
  assert (
    "decoding synthetic_ecg_ja/train" in log0 and "decoding synthetic_ecg_ja/validation" in log0
  )
  assert "dataset synthetic_ecg_ja/tiny: process 1 waits for process 0" in log1
  assert "synthetic_ecg_ja/tiny: prepared by process 0" in log1
  assert (
    "decoding" not in log1
    and "Generating" not in log1
    and "writing a copy on this host" not in log1
  )
  assert (
    log1.count(f"int16 cache of synthetic_ecg_ja/tiny/{SYNTH_VERSION}:") == 4
  )  # waits + uses, train and validation
  assert log1.count("text cache") == 4  # two entries (reports, label prompts): waits + uses each
  used = {
    line.split("] ", 1)[1].split(": process 1 uses")[0]
    for line in log1.splitlines()
    if "process 1 uses what process 0 wrote" in line
  }
  assert len(used) == 6 and {u.split(" ")[0] for u in used} == {
    "dataset",
    "int16",
    "stand-in",
    "text",
  }
  assert (
    sum(u.startswith("text cache") for u in used) == 2
  )  # every shared file: read, never written
  data_dir, cache_dir = data_dirs["data_dir"], data_dirs["cache_dir"]
  assert os.listdir(os.path.join(data_dir, "synthetic_ecg_ja", "tiny")) == [
    SYNTH_VERSION
  ]  # no 'incomplete.*' build
  ecg_cache = os.path.join(data_dir, "synthetic_ecg_ja", "tiny", SYNTH_VERSION, "ecg_cache")
  assert sorted(os.listdir(ecg_cache)) == [
    "train.ecg.npy",
    "train.meta.json",
    "validation.ecg.npy",
    "validation.meta.json",
  ]
  train = np.load(os.path.join(ecg_cache, "train.ecg.npy"), mmap_mode="r")
  assert train.shape == (256, 5000, 12) and train.dtype == np.int16 and np.abs(train[:8]).max() > 0
  entries = sorted(n for n in os.listdir(cache_dir) if not n.startswith("standin_"))
  assert len(entries) == 4 and {n.rsplit(".", 1)[1] for n in entries} == {"npy", "json"}
  assert "2 process(es) x 16" in log0 and "4 device(s) x 8" in log0
  assert os.path.exists(multi_dir / "checkpoints" / "4")

  single, _ = run_main(tmp_path / "single", data_dirs, {}, processes=1)
  loss_single = [m["loss"] for m in single if "loss" in m]
  loss_multi = [m["loss"] for m in multi if "loss" in m]
  assert len(loss_single) == len(loss_multi) == 4
  np.testing.assert_allclose(loss_multi, loss_single, rtol=2e-4)


def test_two_processes_with_device_resident_data_train_as_the_host_pipeline(
  tmp_path, data_dirs, two_process_run
):
  """config.data.placement=device on 2 processes x 2 CPU devices (gloo): each process places only its devices'
  shards of the split, batches are gathered across processes, and the losses are bitwise those of the host
  pipeline on the same processes (the fixture's run)."""
  host, _ = two_process_run
  device, _ = run_main(
    tmp_path / "device",
    data_dirs,
    {"PORT": str(23500 + os.getpid() % 1000)},
    processes=2,
    extra_args=["--config.data.placement=device"],
  )
  log1 = open(tmp_path / "device" / "process_1.log").read()
  assert "placement: device (config.data.placement='device')" in log1
  losses = {
    name: [m["loss"] for m in run if "loss" in m]
    for name, run in (("host", host), ("device", device))
  }
  assert len(losses["host"]) == 4 and losses["device"] == losses["host"]
