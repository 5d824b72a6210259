"""The main job end to end on the tiny dataset: learning, exact resume, and config errors."""

import errno
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from ecg_contrastive import checkpoints, train
from ecg_contrastive.config_check import ConfigError


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("shared")
  return {"data_dir": str(root / "tfds"), "cache_dir": str(root / "text")}


def tiny_config(data_dirs, **top_level):
  """configs/default.py:tiny with data and text caches shared by the tests of this module."""
  c = default.get_config("tiny")
  c.data_dir = data_dirs["data_dir"]
  c.text.cache_dir = data_dirs["cache_dir"]
  c.update(top_level)
  return c


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_training_learns_and_writes_its_outputs(data_dirs, tmp_path):
  """~1-2 minutes: the tiny model on the 2,000-record split learns far beyond both baselines."""
  config = tiny_config(
    data_dirs,
    dataset="synthetic_ecg_ja/small",
    num_steps=150,
    batch_size=64,
    log_every=25,
    checkpoint_every=75,
  )
  config.optimizer.update(lr=3e-3, warmup_steps=15)
  results = train.train_and_evaluate(config, str(tmp_path))
  losses = [m["loss"] for m in read_metrics(tmp_path) if "loss" in m]
  assert len(losses) == 6
  assert np.mean(losses[-2:]) < 0.6 * losses[0], losses
  for split in config.eval_splits:
    m = results[split]
    assert m["top1"] >= 10 * m["chance_top1"] and m["top1"] >= 1.5 * m["majority_top1"], (
      split,
      m["top1"],
    )
    assert m["top5"] >= 5 * m["chance_top5"], (split, m["top5"])
    assert m["macro_auroc"] > 0.75, (split, m["macro_auroc"])
    assert os.path.exists(tmp_path / "eval" / f"{split}.json")
    assert os.path.exists(tmp_path / "eval" / f"{split}_per_label.png")
  on_disk = json.load(open(tmp_path / "eval" / "test.json"))
  assert on_disk["top1"] == pytest.approx(results["test"]["top1"])
  assert {
    "top1",
    "top5",
    "chance_top1",
    "majority_top1",
    "per_label",
    "superset_top1",
    "macro_auroc",
    "ecg_to_report_r@1",
  } <= set(on_disk)
  assert sorted(checkpoints.make_manager(str(tmp_path)).all_steps()) == [75, 150]
  assert os.listdir(tmp_path / "tb")


class Interrupt(Exception):
  pass


@pytest.fixture(scope="module")
def four_steps(data_dirs, tmp_path_factory):
  """(config, workdir) of one uninterrupted 4-step run, checkpoints at steps 2 and 4: the reference that the
  resume tests compare with. Tests read it; one that changes it works on a copy."""
  config = tiny_config(data_dirs, num_steps=4, checkpoint_every=2, log_every=2)
  config.eval_splits = ("validation",)
  workdir = tmp_path_factory.mktemp("four_steps") / "run"
  train.train_and_evaluate(config, str(workdir))
  return config, workdir


@pytest.mark.slow
def test_device_resident_data_trains_to_the_host_losses(four_steps, tmp_path):
  """placement=device (CPU devices told they have 1 GB each): the plan is logged and the run ends in exactly the
  losses and evaluation of the host pipeline's run (four_steps)."""
  config, host_dir = four_steps
  config = config.copy_and_resolve_references()
  config.data.update(placement="device", device_memory_bytes=1e9)
  train.train_and_evaluate(config, str(tmp_path / "device"))
  host, device = read_metrics(host_dir), read_metrics(tmp_path / "device")
  losses = lambda rows: [m["loss"] for m in rows if "loss" in m]
  assert len(losses(host)) == 2 and losses(device) == losses(host)
  evals = lambda rows: [m for m in rows if any(k.startswith("eval/validation/") for k in m)]
  assert evals(host) and evals(device) == evals(host)


@pytest.mark.slow
def test_resume_continues_bitwise(four_steps, tmp_path, monkeypatch):
  """Killed after its step-2 checkpoint and rerun: the last two steps (the end of the warm-up and the cosine
  decay) continue from the saved parameters, optimizer and input-pipeline state, bitwise."""
  config, straight = four_steps
  interrupted = tmp_path / "interrupted"
  real_save = checkpoints.save

  def save_then_die(manager, step, state, data_state):
    real_save(manager, step, state, data_state)
    if step == 2:
      raise Interrupt()

  monkeypatch.setattr(train.checkpoints, "save", save_then_die)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(config, str(interrupted))
  monkeypatch.setattr(train.checkpoints, "save", real_save)
  assert checkpoints.make_manager(str(interrupted)).all_steps() == [2]
  train.train_and_evaluate(config, str(interrupted))

  a = checkpoints.restore_inference(str(straight)).variables
  b = checkpoints.restore_inference(str(interrupted)).variables
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  steps = [m["step"] for m in read_metrics(interrupted) if "loss" in m]
  assert steps == [2, 4]
  losses = [m["loss"] for m in read_metrics(interrupted) if "loss" in m]
  assert losses == [m["loss"] for m in read_metrics(straight) if "loss" in m]


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("batch_size", 30, r"batch_size 30 does not divide over the 8 devices"),
    ("dataset", "ptbxl_typo/x", r"unknown dataset 'ptbxl_typo'"),
    (
      "model.depth",
      50,
      r"config.model.depth=50: ResNet1d depth 50 is not supported; use one of \[18, 34\]",
    ),
    ("text.model_dir", "/nonexistent/bert", r"no such directory.*local Hugging Face"),
    ("microbatches", 3, r"microbatches 3 does not divide the 4 ECGs per device.*divisor of 4"),
    ("loss.name", "sigmoid", r"sigmoid loss needs a learnable bias.*logit_bias=-10"),
    (
      "train.bn_backward",
      "fused",
      r"config.train.bn_backward='fused': use one of \('lean', 'autodiff'\)",
    ),
  ],
)
def test_bad_config_fails_before_training(data_dirs, tmp_path, key, value, message):
  config = tiny_config(data_dirs)
  config.unlock()
  node, *path = key.split(".")
  if path:
    config[node][path[0]] = value
  else:
    config[node] = value
  with pytest.raises((ConfigError, ValueError), match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.slow
def test_resume_skips_a_damaged_checkpoint_and_moves_it_aside(four_steps, tmp_path, caplog):
  """The newest checkpoint is truncated: the run resumes from the one before, keeps the damaged one in
  damaged_checkpoints/ and ends bitwise where the undamaged run ended."""
  config, undamaged_run = four_steps
  workdir = tmp_path / "run"
  shutil.copytree(undamaged_run, workdir)  # the run as it ended, in this test's own folder
  undamaged = checkpoints.restore_inference(str(workdir)).variables
  data_file = max(
    (os.path.join(r, f) for r, _, fs in os.walk(workdir / "checkpoints" / "4") for f in fs),
    key=os.path.getsize,
  )
  size = os.path.getsize(data_file)
  os.truncate(data_file, size - 1)

  with caplog.at_level(logging.INFO, logger="ecg_contrastive"):
    train.train_and_evaluate(config, str(workdir))
  messages = [r.getMessage() for r in caplog.records]
  name = os.path.relpath(data_file, workdir / "checkpoints" / "4")
  assert [m for m in messages if "is damaged" in m] == [
    f"checkpoint {workdir}/checkpoints/4 is damaged ({name} has {size - 1} bytes, {size} expected); skipping it"
  ]
  assert "resumed from step 2" in messages
  assert os.path.getsize(workdir / "damaged_checkpoints" / "4" / name) == size - 1
  assert sorted(checkpoints.make_manager(str(workdir)).all_steps()) == [2, 4]
  resumed = checkpoints.restore_inference(str(workdir)).variables
  for x, y in zip(jax.tree_util.tree_leaves(undamaged), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_a_smaller_keep_says_which_existing_checkpoints_it_deletes(data_dirs, tmp_path, caplog):
  config = tiny_config(data_dirs, num_steps=4, checkpoint_every=1, log_every=2, keep_checkpoints=3)
  config.eval_splits = ("validation",)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  assert sorted(checkpoints.make_manager(str(workdir)).all_steps()) == [2, 3, 4]
  config.num_steps, config.keep_checkpoints = 5, 2
  with caplog.at_level(logging.WARNING, logger="ecg_contrastive"):
    train.train_and_evaluate(config, str(workdir))
  assert [r.getMessage() for r in caplog.records if "keep_checkpoints" in r.getMessage()] == [
    f"keep_checkpoints=2: this run's saves will delete the existing checkpoint(s) of step(s) 2, 3 in "
    f"{workdir}/checkpoints; raise keep_checkpoints to keep them"
  ]
  assert sorted(checkpoints.make_manager(str(workdir)).all_steps()) == [4, 5]


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_stops_with_one_line_and_keeps_the_earlier_ones(
  data_dirs, tmp_path, monkeypatch
):
  config = tiny_config(data_dirs, num_steps=4, checkpoint_every=2, log_every=2)
  config.eval_splits = ("validation",)
  workdir = tmp_path / "run"
  real_save = ocp.CheckpointManager.save

  def disk_full_at_4(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_at_4)
  with pytest.raises(
    checkpoints.CheckpointError,
    match=r"^could not write checkpoint .*/run/checkpoints/4 \(No space "
    r"left on device\): free space or point --workdir elsewhere; the earlier checkpoints \(steps 2\) "
    r"are intact and a rerun resumes from the newest$",
  ):
    train.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir / "run.lock")
  assert checkpoints.restore_inference(str(workdir)).step == 2
