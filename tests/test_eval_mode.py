"""`--mode eval` (eval_job.evaluate_checkpoint) on a checkpoint trained once here with 8 devices: the same numbers
on 2 and 1 devices, another dataset (a fake PTB-XL folder) and label set without the training iterator, the
periodic evaluation compiled once, the best checkpoint kept."""

import csv
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ecg_contrastive import eval_job, train
from ecg_contrastive.data import pipeline
from ecg_contrastive.data.synthetic import fake_folders
from ecg_contrastive.evals.label_sets import load_label_set
from ecg_contrastive.sharding import make_mesh

FIVE = (
  "label\tprompt\tgroup\ten\tterms\n"
  "NORM\t正常心電図\t正常\tnormal\t\n"
  "AFIB\t心房細動\t調律\tAF\t\n"
  "CRBBB\t完全右脚ブロック\t伝導\tRBBB\t\n"
  "BLOCK\t脚ブロック|完全左脚ブロック\t伝導\tLBBB or IRBBB\t完全左脚ブロック|不完全右脚ブロック\n"
  "VF\t心室細動\t調律\tVF (no PTB-XL code maps to it)\t心室細動\n"
)


class Compiles(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    if record.getMessage().startswith("Compiling "):
      self.messages.append(record.getMessage())

  def count(self, name: str) -> int:
    return sum(m.startswith(f"Compiling jit({name})") for m in self.messages)


def tiny_config(**top_level):
  """configs/default.py:tiny on the session's data and text caches (tests/conftest.py): a tiny dataset another
  test of this worker built is reused."""
  c = default.get_config("tiny")
  c.update(top_level)
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(root, workdir, the end-of-training results, compile log) of 2 steps on 8 devices, evaluated at steps 1
  and 2 with the best checkpoint by top-1 kept."""
  root = tmp_path_factory.mktemp("eval_mode")
  config = tiny_config(
    num_steps=2, checkpoint_every=2, eval_every=1, eval_splits=("test",), keep_checkpoints=1
  )
  config.eval.best_metric = "top1"
  workdir = str(root / "run")
  compiles, logger = Compiles(), logging.getLogger("jax._src.interpreters.pxla")
  logger.addHandler(compiles)
  try:
    with jax.log_compiles(True):
      results = train.train_and_evaluate(config, workdir)
  finally:
    logger.removeHandler(compiles)
  return root, workdir, results, compiles


def _numbers(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if isinstance(v, float)}


@pytest.mark.slow  # the module's one tiny training run (2 steps, 2 evaluations)
def test_periodic_evaluation_compiles_once_and_keeps_the_best(trained):
  _, workdir, _, compiles = trained
  rows = list(csv.DictReader(open(os.path.join(workdir, "eval", "results.csv"))))
  assert [(r["mode"], r["step"], r["label_set"]) for r in rows] == [
    ("train", "1", "terms98"),
    ("train", "2", "terms98"),
  ]
  # two evaluations; each jitted function compiled once per input shape (the text projection: the 98 label
  # prompts and the test split's reports)
  assert compiles.count("encode_ecg_batch") == 1, compiles.messages
  assert compiles.count("project_text") == 2, compiles.messages
  best = json.load(open(os.path.join(workdir, "best", "best.json")))
  top1 = {int(r["step"]): float(r["top1"]) for r in rows}
  assert best["metric"] == "top1" and best["split"] == "test"
  assert best["value"] == max(top1.values()) and top1[best["step"]] == best["value"]
  assert os.listdir(os.path.join(workdir, "best", "checkpoints")) == [str(best["step"])]
  assert train.read_best(workdir) == best


@pytest.mark.slow  # the module's one tiny training run (2 steps, 2 evaluations)
@pytest.mark.parametrize("devices", [2, 1])
def test_eval_mode_on_fewer_devices_equals_the_end_of_training(trained, devices):
  _, workdir, results, _ = trained
  config = tiny_config(eval_splits=("test",))
  out = eval_job.evaluate_checkpoint(config, workdir, mesh=make_mesh(jax.devices()[:devices]))
  got, want = out["test"]["terms98"], results["test"]
  assert got["step"] == 2 and _numbers(got).keys() == _numbers(want).keys()
  for key, value in _numbers(want).items():
    assert got[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
  on_disk = json.load(open(os.path.join(workdir, "eval", "synthetic_ecg_ja", "tiny", "test.json")))
  assert on_disk["macro_auroc"] == pytest.approx(want["macro_auroc"], abs=1e-5)


@pytest.mark.slow  # the module's one tiny training run (2 steps, 2 evaluations)
def test_eval_mode_on_a_fake_ptbxl_folder_with_label_sets(trained, tmp_path, monkeypatch):
  _, workdir, _, _ = trained
  fake_folders.write_ptbxl(str(tmp_path / "ptb-xl"), n_records=40)
  five = tmp_path / "five.tsv"
  five.write_text(FIVE, encoding="utf-8")
  config = tiny_config(dataset="ptbxl", source_dir=str(tmp_path / "ptb-xl"), eval_splits=("train",))
  config.data_dir = str(tmp_path / "tfds")
  vf_only = tmp_path / "vf_only.tsv"  # no PTB-XL record can carry it: retrieval metrics only
  vf_only.write_text("label\tprompt\n心室細動\t心室細動\n", encoding="utf-8")
  config.eval.label_set = f"ptbxl_superclass,{five},{vf_only}"
  made = []
  real = pipeline.BatchIterator

  class Watched(real):
    def __init__(self, *args, **kw):
      made.append(kw)
      super().__init__(*args, **kw)

    def set_state(self, state):
      raise AssertionError("eval mode must not restore the data iterator")

  monkeypatch.setattr(pipeline, "BatchIterator", Watched)
  out = eval_job.evaluate_checkpoint(config, workdir)
  assert made and all(kw["shuffle"] is False and kw["num_epochs"] == 1 for kw in made)

  folder = os.path.join(workdir, "eval", "ptbxl")
  for stem in ("train.ptbxl_superclass", "train.five"):
    assert os.path.exists(os.path.join(folder, f"{stem}.json"))
    assert os.path.exists(os.path.join(folder, f"{stem}_per_label.png"))
  rows = list(csv.DictReader(open(os.path.join(workdir, "eval", "results.csv"))))
  assert [(r["mode"], r["dataset"], r["split"], r["label_set"]) for r in rows[-3:]] == [
    ("eval", "ptbxl", "train", "ptbxl_superclass"),
    ("eval", "ptbxl", "train", "five"),
    ("eval", "ptbxl", "train", "vf_only"),
  ]
  none = json.load(open(os.path.join(folder, "train.vf_only.json")))
  assert none["zero_shot"] is None and "retrieval metrics only" in none["note"]
  assert "ecg_to_report_r@1" in none and "macro_auroc" not in none and rows[-1]["macro_auroc"] == ""
  rows = rows[:-1]

  # the five-label set: macro AUROC from the written scores and the records' findings, by pairwise counting
  m = json.load(open(os.path.join(folder, "train.five.json")))
  assert m["macro_auroc"] == out["train"]["five"]["macro_auroc"]
  written = np.load(os.path.join(folder, "train.five.scores.npz"))
  source = pipeline.open_source("ptbxl", "train", config.data_dir)
  assert list(written["record_id"]) == source.meta.record_id
  label_set = load_label_set(str(five))
  truth = np.array(
    [[any(t in found for t in ts) for ts in label_set.terms] for found in source.meta.labels]
  )
  scores = written["scores"]
  aucs = {}
  for j, name in enumerate(label_set.labels):
    pos, neg = scores[truth[:, j], j], scores[~truth[:, j], j]
    if len(pos) and len(neg):
      diff = pos[:, None] - neg[None, :]
      aucs[name] = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
  assert "VF" in m["labels_without_positives"] and "VF" not in aucs
  assert m["macro_auroc_labels"] == len(aucs) >= 2
  assert m["macro_auroc"] == pytest.approx(np.mean(list(aucs.values())), abs=1e-6)
  assert rows[-1]["macro_auroc"] and float(rows[-1]["macro_auroc"]) == pytest.approx(
    m["macro_auroc"]
  )


def test_the_best_checkpoint_survives_a_resume_and_only_a_better_value_replaces_it(tmp_path):
  config = tiny_config(eval_splits=("validation",))
  config.eval.best_metric = "top1"
  written = []
  state = lambda step: {
    "step": jnp.asarray(step, jnp.int32),
    "params": {"w": jnp.full((3,), step, jnp.float32)},
  }
  top1 = lambda v: {"validation": {"top1": v, "label_set": "terms98"}}
  keep = train._BestKeeper(config, str(tmp_path), written.append)
  keep(top1(0.5), state(1), {})
  keep(top1(0.4), state(2), {})
  assert train.read_best(str(tmp_path))["step"] == 1 and len(written) == 1
  resumed = train._BestKeeper(
    config, str(tmp_path), written.append
  )  # a new run on the same workdir
  assert resumed.value == 0.5
  resumed(top1(0.45), state(3), {})
  assert train.read_best(str(tmp_path)) == {
    "metric": "top1",
    "split": "validation",
    "label_set": "terms98",
    "value": 0.5,
    "step": 1,
  }
  resumed(top1(0.6), state(4), {})
  assert train.read_best(str(tmp_path))["step"] == 4
  assert os.listdir(tmp_path / "best" / "checkpoints") == ["4"]
  assert not (tmp_path / "checkpoints").exists()  # the newest-checkpoints folder is another one


@pytest.mark.slow  # the module's one tiny training run
def test_a_label_set_written_into_the_export_folder_scores_without_jax(trained, tmp_path):
  from safetensors.numpy import load_file

  from ecg_contrastive.export.to_torch import export, load_exported

  _, workdir, _, _ = trained
  folder = export(workdir, str(tmp_path / "torch"), verify=False)
  five = tmp_path / "five.tsv"
  five.write_text(FIVE, encoding="utf-8")
  config = tiny_config()
  config.eval.label_set = f"terms98,{five}"
  eval_job.write_label_sets(config, workdir, folder)
  own = load_file(os.path.join(folder, "label_embeddings.safetensors"))["label_embeddings"]
  again = load_file(os.path.join(folder, "label_sets", "terms98.safetensors"))["label_embeddings"]
  np.testing.assert_allclose(
    again, own, atol=1e-6
  )  # the same text tower and projection as the export
  model = load_exported(folder, "five")
  assert [l["ja"] for l in model.labels] == ["NORM", "AFIB", "CRBBB", "BLOCK", "VF"]
  import torch

  ecg = torch.zeros(2, 12, 5000)
  expected = model.scale() * model(ecg) @ model.label_embeddings.T
  assert model.scores(ecg).shape == (2, 5) and torch.allclose(model.scores(ecg), expected)
  with pytest.raises(FileNotFoundError, match="no label set 'nine'.*five"):
    load_exported(folder, "nine")
