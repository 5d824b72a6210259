"""Two JAX processes start on one empty data dir and text cache: process 0 builds, process 1 waits and reads.

The dataset (TFDS), its int16 cache and the text embedding cache are each written by one process
(paths.one_process_writes); the files are complete and no temporary file is left behind.
"""

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_build_the_data_once(tmp_path):
  data_dir, cache_dir, workdir = tmp_path / "tfds", tmp_path / "text", tmp_path / "run"
  args = ["--config", "configs/default.py:tiny", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
          f"--config.text.cache_dir={cache_dir}", "--config.num_steps=2", "--config.log_every=1",
          "--config.checkpoint_every=2", "--config.eval_splits=('validation',)"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "DEVICES_PER_PROCESS": "2", "PORT": str(24000 + os.getpid() % 1000),
         "PYTHON": sys.executable, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
  log0, log1 = (open(workdir / f"process_{i}.log").read() for i in (0, 1))
  assert out.returncode == 0, log0[-3000:] + log1[-3000:]

  # process 0 built everything; process 1 waited at each barrier and built nothing
  assert "decoding synthetic_ecg_ja/train" in log0 and "decoding synthetic_ecg_ja/validation" in log0
  assert "dataset synthetic_ecg_ja/tiny: process 1 waits for process 0" in log1
  assert "synthetic_ecg_ja/tiny: prepared by process 0" in log1
  assert "decoding" not in log1 and "Generating" not in log1 and "writing a copy on this host" not in log1
  assert log1.count("int16 cache of synthetic_ecg_ja/tiny/1.3.0:") == 4  # waits + uses, train and validation
  assert log1.count("text cache") == 4 and log1.count("uses what process 0 wrote") == 6

  # the files are complete, written once, with no temporary left over
  version_dirs = os.listdir(data_dir / "synthetic_ecg_ja" / "tiny")
  assert version_dirs == ["1.3.0"]  # no 'incomplete.*' folder of a second build
  ecg_cache = data_dir / "synthetic_ecg_ja" / "tiny" / "1.3.0" / "ecg_cache"
  assert sorted(os.listdir(ecg_cache)) == ["train.ecg.npy", "train.meta.json", "validation.ecg.npy",
                                           "validation.meta.json"]
  train = np.load(ecg_cache / "train.ecg.npy", mmap_mode="r")
  assert train.shape == (256, 5000, 12) and train.dtype == np.int16 and np.abs(train[:8]).max() > 0
  entries = sorted(n for n in os.listdir(cache_dir) if not n.startswith("standin_"))
  assert len(entries) == 4 and {n.rsplit(".", 1)[1] for n in entries} == {"npy", "json"}
  assert all(np.load(cache_dir / n).dtype == np.float32 for n in entries if n.endswith(".npy"))
  assert os.path.exists(workdir / "checkpoints" / "2") and os.path.exists(workdir / "metrics.jsonl")
