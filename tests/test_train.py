"""The main job end to end on the tiny dataset: learning, exact resume, and config errors."""

import json
import os

import jax
import numpy as np
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


def test_training_learns_and_writes_its_outputs(data_dirs, tmp_path):
  """~1-2 minutes: the tiny model on the 2,000-record split learns far beyond both baselines."""
  config = tiny_config(data_dirs, dataset="synthetic_ecg_ja/small", num_steps=150, batch_size=64,
                       log_every=25, checkpoint_every=75)
  config.optimizer.update(lr=3e-3, warmup_steps=15)
  results = train.train_and_evaluate(config, str(tmp_path))
  losses = [m["loss"] for m in read_metrics(tmp_path) if "loss" in m]
  assert len(losses) == 6
  assert np.mean(losses[-2:]) < 0.6 * losses[0], losses
  for split in config.eval_splits:
    m = results[split]
    assert m["top1"] >= 10 * m["chance_top1"] and m["top1"] >= 1.5 * m["majority_top1"], (split, m["top1"])
    assert m["top5"] >= 5 * m["chance_top5"], (split, m["top5"])
    assert m["macro_auroc"] > 0.75, (split, m["macro_auroc"])
    assert os.path.exists(tmp_path / "eval" / f"{split}.json")
    assert os.path.exists(tmp_path / "eval" / f"{split}_per_label.png")
  on_disk = json.load(open(tmp_path / "eval" / "test.json"))
  assert on_disk["top1"] == pytest.approx(results["test"]["top1"])
  assert {"top1", "top5", "chance_top1", "majority_top1", "per_label", "superset_top1", "macro_auroc",
          "ecg_to_report_r@1"} <= set(on_disk)
  assert sorted(checkpoints.make_manager(str(tmp_path)).all_steps()) == [75, 150]
  assert os.listdir(tmp_path / "tb")


class Interrupt(Exception):
  pass


def test_resume_continues_bitwise(data_dirs, tmp_path, monkeypatch):
  config = tiny_config(data_dirs, num_steps=6, checkpoint_every=3, log_every=3)
  config.eval_splits = ("validation",)
  straight = tmp_path / "straight"
  train.train_and_evaluate(config, str(straight))

  interrupted = tmp_path / "interrupted"
  real_save = checkpoints.save

  def save_then_die(manager, step, state, data_state):
    real_save(manager, step, state, data_state)
    if step == 3:
      raise Interrupt()

  monkeypatch.setattr(train.checkpoints, "save", save_then_die)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(config, str(interrupted))
  monkeypatch.setattr(train.checkpoints, "save", real_save)
  assert checkpoints.make_manager(str(interrupted)).all_steps() == [3]
  train.train_and_evaluate(config, str(interrupted))

  a = checkpoints.restore_inference(str(straight)).variables
  b = checkpoints.restore_inference(str(interrupted)).variables
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  steps = [m["step"] for m in read_metrics(interrupted) if "loss" in m]
  assert steps == [3, 6]


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 30, r"batch_size 30 does not divide over the 8 devices"),
    ("dataset", "ptbxl_typo/x", r"unknown dataset 'ptbxl_typo'"),
    ("model.depth", 50, r"unknown model ResNet1d-50"),
    ("text.model_dir", "/nonexistent/bert", r"no such directory.*local Hugging Face"),
    ("microbatches", 3, r"microbatches 3 does not divide the 4 ECGs per device.*divisor of 4"),
    ("loss.name", "sigmoid", r"sigmoid loss needs a learnable bias.*logit_bias=-10"),
    ("model.bn_backward", "fused", r"config.model.bn_backward='fused': use one of \('lean', 'autodiff'\)"),
])
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
