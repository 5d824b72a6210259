"""config.model.lead_mask: the tower sees which leads are present (12 presence channels: 1 where a lead has a
non-zero sample); off by default, so existing checkpoints and exports load unchanged; the export keeps parity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from export_helpers import TINY_MODEL, make_workdir

from configs import default, paper
from ecg_contrastive.config_check import ConfigError, check_config
from ecg_contrastive.export import predict, to_torch
from ecg_contrastive.models.two_tower import TwoTower, with_presence


def test_presence_channels_mark_all_zero_leads():
  ecg = np.random.default_rng(0).normal(size=(2, 500, 12)).astype(np.float32)
  ecg[0, :, [3, 7]] = 0.0
  ecg[1, :250, 5] = 0.0  # zero for half the record: still present
  out = np.asarray(with_presence(jnp.asarray(ecg)))
  assert out.shape == (2, 500, 24) and np.array_equal(out[..., :12], ecg)
  want = np.ones((2, 12), np.float32)
  want[0, [3, 7]] = 0.0
  assert np.array_equal(out[:, :, 12:], np.broadcast_to(want[:, None, :], (2, 500, 12)))


def test_lead_mask_is_off_in_the_paper_config_and_widens_only_the_stem():
  assert (
    paper.get_config().model.lead_mask is False
    and default.get_config("tiny").model.lead_mask is False
  )
  assert default.get_config().model.lead_mask is True  # the demo trains with lead dropout
  shapes = {}
  for mask in (False, True):
    model = TwoTower(**dict(TINY_MODEL, lead_mask=mask))
    variables = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 5000, 12)), jnp.zeros((1, 16))
    )
    shapes[mask] = jax.tree_util.tree_map(lambda x: x.shape, variables["params"])
  assert shapes[False]["ecg"]["stem_conv"]["kernel"][1] == 12
  assert shapes[True]["ecg"]["stem_conv"]["kernel"][1] == 24
  shapes[True]["ecg"]["stem_conv"]["kernel"] = shapes[False]["ecg"]["stem_conv"]["kernel"]
  assert shapes[True] == shapes[False]


def test_config_check_wants_a_bool():
  config = default.get_config("tiny")
  del config.model[
    "lead_mask"
  ]  # re-added below without ConfigDict's own type check, as a config.json may hold it
  config.model["lead_mask"] = 1
  with pytest.raises(ConfigError, match=r"^config.model.lead_mask=1: use True"):
    check_config(config)


@pytest.mark.slow  # an export with its parity check and two model forms
def test_export_with_lead_mask_keeps_parity_and_sees_missing_leads(tmp_path):
  workdir = make_workdir(str(tmp_path / "workdir"), model=dict(TINY_MODEL, lead_mask=True))
  out = to_torch.export(
    workdir, str(tmp_path / "out")
  )  # verifies PyTorch/Flax parity before returning
  with open(f"{out}/config.json", encoding="utf-8") as f:
    assert json.load(f)["architecture"]["lead_mask"] is True
  ecg = np.random.default_rng(1).normal(0, 0.3, (3, 5000, 12)).astype(np.float32)
  ecg[1, :, 6:] = 0.0  # limb leads only
  ecg[2, :, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]] = 0.0  # lead II only
  jax_scores = predict.open_scorer(workdir=workdir)[0].scores(ecg)
  torch_scores = predict.open_scorer(exported=out)[0].scores(ecg)
  np.testing.assert_allclose(torch_scores, jax_scores, rtol=1e-4, atol=1e-4)


def test_reduced_lead_sets_zero_the_other_leads():
  from ecg_contrastive.evals.reduced_leads import LEAD_SETS, keep_mask

  assert list(LEAD_SETS) == ["12", "6 (limb)", "3 (I, II, V2)", "2 (I, II)", "1 (II)"]
  np.testing.assert_array_equal(keep_mask(LEAD_SETS["1 (II)"]), np.eye(12, dtype=np.float32)[1])
  assert keep_mask(LEAD_SETS["6 (limb)"]).tolist() == [1.0] * 6 + [0.0] * 6


@pytest.mark.slow  # builds the tiny dataset's test split
def test_reduced_lead_table_of_a_workdir(tmp_path, capsys):
  from ecg_contrastive.checkpoints import restore_inference
  from ecg_contrastive.ecg import signal
  from ecg_contrastive.evals import reduced_leads
  from ecg_contrastive.evals.zeroshot import zero_shot_metrics
  from ecg_contrastive.export.flax_scorer import FlaxScorer

  workdir = make_workdir(str(tmp_path / "workdir"), model=dict(TINY_MODEL, lead_mask=True))
  with open(f"{workdir}/config.json", encoding="utf-8") as f:
    config = json.load(f)
  config.update(dataset="synthetic_ecg_ja/tiny", data_dir=str(tmp_path / "tfds"))
  with open(f"{workdir}/config.json", "w", encoding="utf-8") as f:
    json.dump(config, f)
  results = reduced_leads.reduced_lead_metrics(workdir)
  assert list(results) == list(reduced_leads.LEAD_SETS) and results["12"]["n"] == 32
  # the 12-lead row is the plain zero-shot evaluation, through the export's float32 reference
  source = reduced_leads.pipeline.open_source(
    "synthetic_ecg_ja/tiny", "test", str(tmp_path / "tfds")
  )
  scorer = FlaxScorer(restore_inference(workdir))
  ecg = signal.to_millivolts(source.read(np.arange(len(source))))
  labels = scorer.labels
  for name in ("12", "1 (II)"):
    z = scorer.embed(ecg * reduced_leads.keep_mask(reduced_leads.LEAD_SETS[name]))
    want = zero_shot_metrics(
      z,
      scorer.label_embeddings,
      [t["ja"] for t in labels],
      [t["group_ja"] for t in labels],
      source.meta.primary_label,
      source.meta.labels,
    )
    assert results[name]["top1"] == want["top1"] and results[name]["top5"] == want["top5"]
  reduced_leads.main(["--workdir", workdir])
  table = [
    line for line in capsys.readouterr().out.splitlines() if line.startswith("|")
  ]  # not TFDS's
  assert table[0] == "| leads (test, 32 records) | top-1 | top-5 |" and len(table) == 2 + 5
