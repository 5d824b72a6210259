"""Export to PyTorch: parity with Flax, a JAX-free load, torch.export, bad inputs, the predictor."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import wfdb
from export_helpers import TINY_MODEL, TINY_TRAIN, logit_scale_at, make_workdir
from safetensors.numpy import load_file

from ecg_contrastive.checkpoints import restore_inference
from ecg_contrastive.data import pipeline
from ecg_contrastive.ecg import preprocess, signal
from ecg_contrastive.export import modeling_ecg, predict, to_torch
from ecg_contrastive.export.flax_scorer import FlaxScorer
from ecg_contrastive.models import resnet1d
from ecg_contrastive.models.two_tower import (
  ARCHITECTURE_KEYS,
  TRAINING_KEYS,
  from_config,
  split_config,
)

TOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jax_key():
  import jax

  return jax.random.key(0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[str, str]:
  root = tmp_path_factory.mktemp("export")
  workdir = make_workdir(str(root / "workdir"), steps=(3, 5))
  return workdir, to_torch.export(workdir, str(root / "out"))


@pytest.fixture(scope="module")
def reference(exported) -> FlaxScorer:
  return FlaxScorer(restore_inference(exported[0]))


@pytest.fixture(scope="module")
def module(exported):
  return to_torch.load_exported(exported[1])


def random_ecgs(n: int, seed: int) -> np.ndarray:
  """float32 (n, 5000, 12) mV: noise at ECG amplitudes, a different scale per record."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 5000, 12)) * rng.uniform(0.1, 2.0, (n, 1, 1))).astype(np.float32)


def torch_outputs(module, ecg_mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings, scores) of the exported module for channels-last mV ECGs."""
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(ecg_mv.transpose(0, 2, 1)))
    return module(x).numpy(), module.scores(x).numpy()


def assert_parity(module, reference: FlaxScorer, ecg_mv: np.ndarray) -> None:
  embeddings, scores = torch_outputs(module, ecg_mv)
  emb_err = to_torch.relative_error(embeddings, reference.embed(ecg_mv))
  score_err = to_torch.relative_error(scores, reference.scores(ecg_mv))
  print(f"max relative error: embeddings {emb_err:.2e}, scores {score_err:.2e}")
  assert emb_err <= TOL and score_err <= TOL
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_parity_random_inputs(module, reference):
  assert not module.training and not module.ecg.stem_bn.training  # BatchNorm in eval mode
  assert_parity(module, reference, random_ecgs(4, seed=1))


@pytest.fixture(scope="module")
def builtin_records(tmp_path_factory) -> np.ndarray:
  """int16 microvolts (4, 5000, 12): records of the built-in tiny dataset's test split."""
  source = pipeline.open_source(
    "synthetic_ecg_ja/tiny", "test", str(tmp_path_factory.mktemp("tfds"))
  )
  return source.read(np.arange(4))


def test_parity_builtin_dataset_records(module, reference, builtin_records):
  ecg_mv = signal.to_millivolts(builtin_records)
  assert ecg_mv.shape == (4, 5000, 12) and np.abs(ecg_mv).max() > 0.1
  assert_parity(module, reference, ecg_mv)


def test_export_folder_contents(exported, reference):
  _, out = exported
  config = json.load(open(os.path.join(out, "config.json"), encoding="utf-8"))
  assert config["source"]["step"] == 5  # latest by default
  assert config["architecture"]["depth"] == 18 and config["input"]["shape"] == "(B, 12, 5000)"
  assert config["input"]["lead_order"] == list(signal.LEADS) and config["input"]["units"] == "mV"
  assert max(config["verified_parity"]["max_relative_error"].values()) <= TOL
  state = load_file(os.path.join(out, "model.safetensors"))
  assert state["logit_scale"] == logit_scale_at(5)
  flax_kernel = reference.variables["params"]["ecg"]["stage2_block1"]["conv1"][
    "kernel"
  ]  # (3, 8, 16)
  np.testing.assert_array_equal(
    state["ecg.stage2_block1.conv1.weight"], flax_kernel.transpose(2, 1, 0)
  )
  np.testing.assert_array_equal(
    state["ecg.stem_bn.running_var"], reference.variables["batch_stats"]["ecg"]["stem_bn"]["var"]
  )
  labels = json.load(open(os.path.join(out, "labels.json"), encoding="utf-8"))
  assert len(labels) == 98 and labels[0] == reference.labels[0] and labels[0]["ja"] == "正常心電図"
  label_emb = load_file(os.path.join(out, "label_embeddings.safetensors"))["label_embeddings"]
  np.testing.assert_allclose(label_emb, reference.label_embeddings, atol=1e-7)


def test_export_folder_has_a_model_card_and_a_model_type(exported, tmp_path):
  """README.md says what the model is, its data, text model, input and limits; config.json has a model_type that
  Hugging Face's config reader returns; the card's evaluation table is the workdir's results.csv at the exported
  step (the latest row per dataset, split and label set), or says that none is recorded."""
  from transformers import PretrainedConfig

  from ecg_contrastive.export import model_card

  workdir, out = exported
  assert PretrainedConfig.get_config_dict(out)[0]["model_type"] == model_card.MODEL_TYPE
  card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
  assert "step 5" in card and "I, II, III, aVR" in card and "No evaluation of step 5" in card
  assert (
    "does not say its dataset or text model" in card
  )  # this test workdir's config.json has neither

  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  run_config = json.loads((run / "config.json").read_text())
  run_config.update(dataset="synthetic_ecg_ja/tiny", text={"model_dir": "", "pooling": "mean"})
  (run / "config.json").write_text(json.dumps(run_config))
  os.makedirs(run / "eval")
  rows = [
    "dataset,split,label_set,step,n,macro_auroc,top1,top5,superset_top1",
    "synthetic_ecg_ja/tiny,test,terms98,5,32,0.61,0.25,0.5,0.4",
    "ptbxl,test,ptbxl_superclass,5,40,0.7125,,,",
    "synthetic_ecg_ja/tiny,test,terms98,3,32,0.11,0.0,0.0,0.0",
  ]
  (run / "eval" / "results.csv").write_text("\n".join(rows) + "\n")
  card = open(
    os.path.join(to_torch.export(str(run), str(tmp_path / "out"), verify=False), "README.md"),
    encoding="utf-8",
  ).read()
  assert (
    "| synthetic_ecg_ja/tiny | test | terms98 | 5 | 32 | 0.6100 | 0.2500 | 0.5000 | 0.4000 |"
    in card
  )
  assert "| ptbxl | test | ptbxl_superclass | 5 | 40 | 0.7125 | - | - | - |" in card
  assert "0.1100" not in card and "No evaluation" not in card
  assert (
    "`synthetic_ecg_ja/tiny`" in card and "not for clinical use" in card and "stand-in BERT" in card
  )


@pytest.mark.slow
def test_export_without_torch_writes_the_folder_and_says_parity_is_not_verified(exported, tmp_path):
  """`make export` right after `make demo` (a core install has no torch): the CLI writes the folder, exits 0 and
  says that parity was not verified; requiring verification without torch is a one-line error."""
  no_torch = (
    "import runpy, sys\n"
    "class NoTorch:  # as on a machine where torch was never installed\n"
    "  def find_spec(self, name, path=None, target=None):\n"
    "    if name.split('.')[0] == 'torch': raise ModuleNotFoundError(f'No module named {name!r}')\n"
    "sys.meta_path.insert(0, NoTorch()); sys.argv = ['main'] + sys.argv[1:]\n"
    "runpy.run_module('ecg_contrastive.main', run_name='__main__')"
  )
  out = tmp_path / "torch_free"
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      no_torch,
      "--mode=export",
      f"--workdir={exported[0]}",
      f"--export_dir={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "NOT verified (PyTorch is not installed)" in result.stderr
  assert sorted(os.listdir(out)) == [
    "README.md",
    "config.json",
    "label_embeddings.safetensors",
    "labels.json",
    "model.safetensors",
    "modeling_ecg.py",
  ]
  assert json.load(open(out / "config.json"))["verified_parity"] is None
  assert "Parity with the Flax model: not verified" in (out / "README.md").read_text()
  np.testing.assert_array_equal(
    load_file(str(out / "model.safetensors"))["ecg.stem_conv.weight"],
    load_file(os.path.join(exported[1], "model.safetensors"))["ecg.stem_conv.weight"],
  )
  verify = subprocess.run(
    [
      sys.executable,
      "-c",
      no_torch.replace("ecg_contrastive.main", "ecg_contrastive.export.to_torch"),
      f"--workdir={exported[0]}",
      f"--out={tmp_path / 'v'}",
      "--verify",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert verify.returncode == 1 and verify.stderr.strip().splitlines() == [
    "error: cannot verify the export: PyTorch is not installed; pip install torch (see README, 'Installing') or "
    "pass --no-verify"
  ]
  assert not (tmp_path / "v").exists()
  record = tmp_path / "ecg.npy"
  np.save(record, random_ecgs(1, seed=5)[0])
  predict_cli = subprocess.run(
    [
      sys.executable,
      "-c",
      no_torch.replace("ecg_contrastive.main", "ecg_contrastive.export.predict"),
      "--exported",
      str(out),
      str(record),
      "--fs",
      "500",
      "--units",
      "mV",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert predict_cli.returncode == 2, predict_cli.stderr[-2000:]
  assert predict_cli.stderr.strip().splitlines() == [
    f"error: {out} is a PyTorch folder and PyTorch is not installed: pip install torch (see README, 'Installing'), "
    "or predict from the JAX checkpoint with --workdir"
  ]


def test_a_failed_export_leaves_no_partial_folder_and_the_previous_export_intact(
  exported, tmp_path, monkeypatch
):
  out = to_torch.export(exported[0], str(tmp_path / "out"), step=3, verify=False)
  before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}
  monkeypatch.setattr(to_torch, "measure_parity", lambda *a: {"embeddings": 1.0, "scores": 1.0})
  with pytest.raises(to_torch.ExportError, match="failed verification"):
    to_torch.export(exported[0], out, step=5, verify=True)
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no .partial-* folder left behind
  assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == before


def test_export_to_a_gs_folder(exported, tmp_path, monkeypatch):
  """A gs:// export folder (mocked bucket): written and verified on local disk, then uploaded; nothing lands in a
  local folder named like 'gs:'."""
  from fake_gcs import use_fake_gcs

  use_fake_gcs(monkeypatch, str(tmp_path / "gcs"))
  monkeypatch.chdir(tmp_path)
  assert to_torch.export(exported[0], "gs://bucket/run/torch", step=5) == "gs://bucket/run/torch"
  folder = tmp_path / "gcs" / "bucket" / "run" / "torch"
  assert sorted(os.listdir(folder)) == sorted(os.listdir(exported[1]))
  for name in os.listdir(folder):
    assert (folder / name).read_bytes() == open(os.path.join(exported[1], name), "rb").read(), name
  assert not [p for p in tmp_path.rglob("gs:*")]


def test_export_chosen_step(exported, tmp_path):
  out = to_torch.export(exported[0], str(tmp_path / "out3"), step=3, verify=False)
  assert load_file(os.path.join(out, "model.safetensors"))["logit_scale"] == logit_scale_at(3)
  assert json.load(open(os.path.join(out, "config.json")))["source"]["step"] == 3


def test_zero_shot_matches_flax(module, reference):
  ecg_mv = random_ecgs(2, seed=2)
  with torch.no_grad():
    found = module.zero_shot(torch.from_numpy(np.ascontiguousarray(ecg_mv.transpose(0, 2, 1))), k=5)
  expected = predict.top_k(reference.scores(ecg_mv), reference.labels, 5)
  assert [[f["ja"] for f in row] for row in found] == [[f["ja"] for f in row] for row in expected]
  np.testing.assert_allclose(
    [[f["score"] for f in row] for row in found],
    [[f["score"] for f in row] for row in expected],
    rtol=TOL,
  )


BLOCK_JAX = """
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('jax', 'jaxlib', 'flax', 'orbax', 'ecg_contrastive'):
      raise ImportError('blocked in this test: ' + name)
sys.meta_path.insert(0, Block())
try:
  import jax
  sys.exit('jax was importable')
except ImportError:
  pass
import numpy as np, torch
folder, inputs, outputs = sys.argv[1:]
spec = importlib.util.spec_from_file_location('modeling_ecg', folder + '/modeling_ecg.py')
modeling_ecg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(modeling_ecg)
model = modeling_ecg.load(folder)
x = torch.from_numpy(np.load(inputs))
with torch.no_grad():
  np.save(outputs, model(x).numpy())
print(model.zero_shot(x, k=3)[0][0]['en'])
"""


@pytest.mark.slow
def test_loads_where_jax_is_not_importable(exported, reference, tmp_path):
  ecg_mv = random_ecgs(2, seed=3)
  np.save(tmp_path / "x.npy", np.ascontiguousarray(ecg_mv.transpose(0, 2, 1)))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run(
    [
      sys.executable,
      "-c",
      BLOCK_JAX,
      exported[1],
      str(tmp_path / "x.npy"),
      str(tmp_path / "y.npy"),
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  expected = predict.top_k(reference.scores(ecg_mv), reference.labels, 1)[0][0]["en"]
  assert done.stdout.strip() == expected
  assert to_torch.relative_error(np.load(tmp_path / "y.npy"), reference.embed(ecg_mv)) <= TOL


@pytest.mark.slow
def test_torch_export_with_dynamic_batch(module):
  example = torch.from_numpy(random_ecgs(2, seed=4).transpose(0, 2, 1).copy())
  program = torch.export.export(
    module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
  )
  other = torch.from_numpy(random_ecgs(3, seed=5).transpose(0, 2, 1).copy())
  with torch.no_grad():
    torch.testing.assert_close(program.module()(other), module(other), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5000, 12), (12, 5000), (1, 12, 2500)])
def test_module_rejects_wrong_shape(module, shape):
  with pytest.raises(ValueError, match=r"\(B, 12, 5000\).*got " + re.escape(str(shape))):
    module(torch.zeros(shape))


def test_module_rejects_integer_microvolts(module):
  with pytest.raises(ValueError, match="divide by 1000"):
    module(torch.zeros((1, 12, 5000), dtype=torch.int16))


def test_export_without_checkpoint_fails_clearly(tmp_path):
  workdir = make_workdir(str(tmp_path / "empty"), steps=())
  with pytest.raises(to_torch.ExportError, match="no checkpoint in .*checkpoints"):
    to_torch.export(workdir, str(tmp_path / "out"))
  with pytest.raises(SystemExit, match="not a training workdir"):
    to_torch.main(["--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])


def test_export_of_missing_step_lists_available(exported, tmp_path):
  with pytest.raises(to_torch.ExportError, match=r"no checkpoint for step 4.*\[3, 5\]"):
    to_torch.export(exported[0], str(tmp_path / "out"), step=4)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"depth": 50}, r"depth 50 is not supported.*\[18, 34\]"),
    ({"norm": "layer"}, r"unknown model option\(s\) \['norm'\]"),
  ],
)
def test_export_of_unknown_architecture_fails_clearly(tmp_path, change, message):
  workdir = tmp_path / "workdir"  # the config is checked before any checkpoint is read
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"model": dict(TINY_MODEL, **change)}))
  with pytest.raises(to_torch.ExportError, match=message):
    to_torch.export(str(workdir), str(tmp_path / "out"))


@pytest.mark.slow
def test_sigmoid_loss_checkpoint_exports_without_its_bias(tmp_path):
  """The SigLIP bias is a constant shift of every score: training-only, not part of the exported encoder."""
  workdir = make_workdir(str(tmp_path / "workdir"), train=dict(TINY_TRAIN, logit_bias=-10.0))
  assert "logit_bias" in restore_inference(workdir).variables["params"]
  out = to_torch.export(
    workdir, str(tmp_path / "out")
  )  # verifies PyTorch/Flax parity before returning
  names = set(load_file(f"{out}/model.safetensors"))
  assert "logit_scale" in names and not any("logit_bias" in name for name in names)
  with open(f"{out}/config.json", encoding="utf-8") as f:
    assert "logit_bias" not in json.load(f)["architecture"]


def test_an_older_workdir_config_with_a_mixed_model_dict_exports_and_predicts_the_same(
  exported, tmp_path
):
  """A config.json from before config.train (training-only keys inside "model") is read through split_config:
  the same TwoTower, the same exported tensors and config.json, the same Flax scores."""
  old = make_workdir(
    str(tmp_path / "old"), steps=(3, 5), legacy=True
  )  # the same seed: the same variables
  with open(os.path.join(old, "config.json"), encoding="utf-8") as f:
    assert set(json.load(f)) == {"model"}
  old_inference, new_inference = restore_inference(old), restore_inference(exported[0])
  assert old_inference.model == new_inference.model
  out = to_torch.export(old, str(tmp_path / "out"), verify=False)
  new_state, old_state = (
    load_file(os.path.join(exported[1], "model.safetensors")),
    load_file(f"{out}/model.safetensors"),
  )
  assert sorted(old_state) == sorted(new_state)
  for name in new_state:
    np.testing.assert_array_equal(old_state[name], new_state[name])
  configs = [
    json.loads(pathlib.Path(folder, "config.json").read_text("utf-8"))
    for folder in (exported[1], out)
  ]
  for section in ("architecture", "input", "zero_shot"):
    assert configs[0][section] == configs[1][section]
  assert {k: v for k, v in configs[0]["source"].items() if k != "workdir"} == {
    k: v for k, v in configs[1]["source"].items() if k != "workdir"
  }
  ecg = random_ecgs(2, seed=3)
  np.testing.assert_array_equal(
    FlaxScorer(old_inference).scores(ecg), FlaxScorer(new_inference).scores(ecg)
  )


def test_split_config_is_the_one_mapping_of_old_and_new_configs():
  new = {
    "model": dict(TINY_MODEL),
    "train": dict(TINY_TRAIN, logit_bias=-10.0, bn_backward="autodiff", other=1),
  }
  old = {"model": dict(TINY_MODEL, **TINY_TRAIN, logit_bias=-10.0, bn_backward="autodiff")}
  assert (
    split_config(new)
    == split_config(old)
    == (TINY_MODEL, dict(TINY_TRAIN, logit_bias=-10.0, bn_backward="autodiff"))
  )
  assert from_config(new) == from_config(old)
  assert from_config(new).logit_bias == -10.0 and from_config(new).bn_backward == "autodiff"
  assert set(ARCHITECTURE_KEYS).isdisjoint(TRAINING_KEYS)
  from configs import default, paper

  for config in (default.get_config(), paper.get_config()):
    assert sorted(config.model) == sorted(ARCHITECTURE_KEYS) and sorted(config.train) == sorted(
      TRAINING_KEYS
    )
    assert to_torch.architecture(config) == from_config(config)


@pytest.mark.parametrize("depth", sorted(resnet1d.STAGE_SIZES))
def test_exported_module_builds_its_layout_from_config_json(depth):
  """modeling_ecg.py has no layout table of its own: architecture.stage_sizes (from models/resnet1d.py) builds the
  very tensors that layout_map names, for every depth of the one table."""
  assert "STAGE_SIZES" not in pathlib.Path(modeling_ecg.__file__).read_text("utf-8")
  arch = dict(TINY_MODEL, depth=depth)
  section = to_torch.architecture_section(arch)
  assert section["stage_sizes"] == list(resnet1d.stage_sizes(depth))
  encoder = modeling_ecg.ECGEncoder({"architecture": section}, labels=[])
  expected = {e.torch for e in to_torch.layout_map(depth)}
  expected |= {
    e.torch.replace(".running_mean", ".num_batches_tracked")
    for e in to_torch.layout_map(depth)
    if e.torch.endswith(".running_mean")
  }
  assert set(encoder.state_dict()) - {"label_embeddings"} == expected


def test_the_depth_check_has_one_message():
  with pytest.raises(ValueError) as info:
    resnet1d.stage_sizes(50)
  message = str(info.value)
  assert message == "ResNet1d depth 50 is not supported; use one of [18, 34]"
  with pytest.raises(to_torch.ExportError) as export_info:
    to_torch.architecture({"model": dict(TINY_MODEL, depth=50)})
  assert str(export_info.value) == f"cannot export: {message}"
  with pytest.raises(ValueError, match=re.escape(message)):
    resnet1d.ResNet1d(depth=50).init(jax_key(), np.zeros((1, 100, 12), np.float32))


def test_export_of_unexpected_parameter_tree_lists_names(tmp_path):
  def corrupt(params: dict) -> dict:
    params["ecg"]["stage5_block1"] = {"conv1": {"kernel": np.zeros((3, 64, 64), np.float32)}}
    params["ecg_head"] = {"kernel": params["ecg_head"]["kernel"]}
    return params

  workdir = make_workdir(str(tmp_path / "workdir"), params_hook=corrupt)
  with pytest.raises(
    to_torch.ExportError,
    match=r"unexpected variables: \['params/ecg/stage5_block1/conv1/kernel'\]; "
    r"missing variables: \['params/ecg_head/bias'\]",
  ):
    to_torch.export(workdir, str(tmp_path / "out"))


# ----------------------------------------------------------------------------- the predictor


def smooth_ecg(seconds: np.ndarray, seed: int = 0) -> np.ndarray:
  """Band-limited test signal (len(seconds), 12) mV in signal.LEADS order: sinusoids of 0.5-40 Hz."""
  rng = np.random.default_rng(seed)
  freqs, amps, phases = (
    rng.uniform(0.5, 40, (3, 12)),
    rng.uniform(0.1, 0.5, (3, 12)),
    rng.uniform(0, 6.3, (3, 12)),
  )
  return sum(
    a * np.sin(2 * np.pi * f * seconds[:, None] + p) for f, a, p in zip(freqs, amps, phases)
  )


TRUTH = smooth_ecg(np.arange(5000) / 500)
SHUFFLED = ["V6", "avr", "Lead I", "II", "AVL", "III", "aVF", "V-1", "V2", "V3", "v4", "V5"]


def write_npy(path, seconds: float = 12.0, rate: int = 250, leads: list[str] = SHUFFLED) -> str:
  """int16 microvolts, channels-first, leads in the order `leads`, at `rate` Hz."""
  values = smooth_ecg(np.arange(int(seconds * rate)) / rate)
  columns = [signal.LEADS.index(signal.canonical_lead(name)) for name in leads]
  np.save(path, np.round(values[:, columns].T * 1000).astype(np.int16))
  return str(path)


def write_wfdb(folder, seconds: float = 8.0, rate: int = 1000) -> str:
  """A WFDB record in mV with MIMIC-IV-ECG's lead order (aVF before aVL), 8 s at 1 kHz."""
  names = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
  values = smooth_ecg(np.arange(int(seconds * rate)) / rate)[
    :, [signal.LEADS.index(n) for n in names]
  ]
  wfdb.wrsamp(
    "rec",
    fs=rate,
    units=["mV"] * 12,
    sig_name=names,
    p_signal=values,
    fmt=["16"] * 12,
    write_dir=str(folder),
  )
  return os.path.join(str(folder), "rec")


def test_npy_is_resampled_reordered_scaled_and_cropped(tmp_path):
  record = preprocess.read_record(
    write_npy(tmp_path / "a.npy"), rate=250, units="uV", leads=SHUFFLED
  )
  assert (
    record.ecg.shape == (5000, 12) and record.ecg.dtype == np.float32 and record.duration_s == 12.0
  )
  np.testing.assert_allclose(
    record.ecg[50:4950], TRUTH[50:4950], atol=0.01
  )  # resampling filter edges aside


def test_wfdb_is_resampled_reordered_and_padded(tmp_path):
  record = preprocess.read_record(write_wfdb(tmp_path) + ".hea")
  assert record.rate == 1000 and record.duration_s == 8.0
  np.testing.assert_allclose(record.ecg[50:3950], TRUTH[50:3950], atol=0.01)
  assert not record.ecg[4000:].any()  # zero-padded after the 8 s


def test_builtin_record_as_npy_reaches_the_model_as_in_training(builtin_records, tmp_path):
  np.save(tmp_path / "r.npy", builtin_records[1])
  record = preprocess.read_record(str(tmp_path / "r.npy"), rate=500, units="uV")
  np.testing.assert_array_equal(record.ecg, signal.to_millivolts(builtin_records[1]))


def test_missing_lead_is_named(tmp_path):
  leads = [name for name in SHUFFLED if name != "V3"]
  path = write_npy(tmp_path / "a.npy", leads=leads)
  with pytest.raises(ValueError, match=r"missing lead\(s\) \['V3'\]"):
    preprocess.read_record(path, rate=250, units="uV", leads=leads)
  with pytest.raises(ValueError, match="--fs and --units"):
    preprocess.read_record(path)


def test_predictor_gives_the_same_findings_from_both_model_forms(exported, capsys, tmp_path):
  workdir, out = exported
  paths = [write_npy(tmp_path / "a.npy"), write_wfdb(tmp_path)]
  common = ["--fs", "250", "--units", "uV", "--leads", ",".join(SHUFFLED), *paths]
  findings = []
  for model in (["--workdir", workdir], ["--exported", out]):
    predict.main(model + common)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 * 7 and lines[1].startswith(paths[0]) and "zero-padded" in lines[8]
    assert lines[2].startswith("  leads: 12 of 12 present")
    findings.append(
      [line.split("  score")[0] for line in lines[1:]]
    )  # record lines and label names
  assert findings[0] == findings[1]
  assert findings[0][2].startswith("  1. ") and " / " in findings[0][2]

  ecgs = np.stack(
    [
      preprocess.read_record(paths[0], 250, "uV", SHUFFLED).ecg,
      preprocess.read_record(paths[1]).ecg,
    ]
  )
  jax_top = predict.predict(predict.open_scorer(workdir=workdir)[0], ecgs)
  torch_top = predict.predict(predict.open_scorer(exported=out)[0], ecgs)
  assert [[f["en"] for f in row] for row in jax_top] == [
    [f["en"] for f in row] for row in torch_top
  ]
  np.testing.assert_allclose(
    [[f["score"] for f in row] for row in jax_top],
    [[f["score"] for f in row] for row in torch_top],
    rtol=TOL,
  )
