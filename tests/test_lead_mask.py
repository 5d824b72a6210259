"""config.model.lead_mask: the tower sees which leads are present (12 presence channels: 1 where a lead has a
non-zero sample); off by default, so existing checkpoints and exports load unchanged; the export keeps parity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from export_helpers import TINY_MODEL, make_workdir

from configs import default
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


def test_lead_mask_is_off_by_default_and_widens_only_the_stem():
  assert default.get_config().model.lead_mask is False
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
