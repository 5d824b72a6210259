"""The Flax BERT/RoBERTa encoder against transformers' PyTorch models, and its weight loading."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import BertConfig, BertModel, RobertaConfig, RobertaForMaskedLM, RobertaModel

from ecg_contrastive.models.bert import load_hf_encoder, pool

TINY = dict(
  vocab_size=99,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=37,
  max_position_embeddings=40,
)


def _save(model: torch.nn.Module, directory) -> str:
  model.save_pretrained(str(directory))
  return str(directory)


def _batch(pad_id: int, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(4, 13) ids and mask with rows of 13, 9, 2 and 1 real tokens, the rest padding."""
  rng = np.random.default_rng(rng_seed)
  ids = rng.integers(3, TINY["vocab_size"], (4, 13))
  mask = (np.arange(13)[None] < np.array([13, 9, 2, 1])[:, None]).astype(np.int64)
  return np.where(mask == 1, ids, pad_id), mask


def _apply(module, params, *inputs):
  """One jitted forward (one compilation instead of op-by-op dispatch)."""
  return jax.jit(module.apply)({"params": params}, *(jnp.asarray(x) for x in inputs))


def _rel_err(ours, theirs) -> float:
  return float(np.abs(np.asarray(ours, np.float32) - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  torch.manual_seed(0)
  return _save(BertModel(BertConfig(**TINY)).eval(), tmp_path_factory.mktemp("bert"))


def test_bert_matches_pytorch_with_padding_and_token_types(bert_dir):
  model = BertModel.from_pretrained(bert_dir).eval()
  module, params, config = load_hf_encoder(bert_dir)
  ids, mask = _batch(config.pad_token_id)
  types = np.zeros_like(ids)
  types[:, 5:] = 1
  with torch.no_grad():
    ref = model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      token_type_ids=torch.tensor(types),
    )
  hidden, pooled = _apply(module, params, ids, mask, types)
  assert hidden.shape == (4, 13, 32) and pooled.shape == (4, 32)
  assert _rel_err(hidden, ref.last_hidden_state.numpy()) <= 1e-5
  assert _rel_err(pooled, ref.pooler_output.numpy()) <= 1e-5


@pytest.mark.slow
def test_roberta_matches_pytorch_with_position_offset(tmp_path):
  torch.manual_seed(1)
  config = RobertaConfig(**TINY, pad_token_id=1, type_vocab_size=1, layer_norm_eps=1e-5)
  model_dir = _save(RobertaModel(config).eval(), tmp_path)
  model = RobertaModel.from_pretrained(model_dir).eval()
  module, params, ours = load_hf_encoder(model_dir)
  assert ours.family == "roberta" and ours.pad_token_id == 1
  ids, mask = _batch(pad_id=1, rng_seed=1)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  hidden, pooled = _apply(module, params, ids, mask)
  assert _rel_err(hidden, ref.last_hidden_state.numpy()) <= 1e-5
  assert _rel_err(pooled, ref.pooler_output.numpy()) <= 1e-5
  # Without the offset (BERT positions) the states differ: the test sees the offset.
  bert_like = module.clone(config=ours.__class__(**{**ours.__dict__, "family": "bert"}))
  wrong, _ = _apply(bert_like, params, ids, mask)
  assert _rel_err(wrong, ref.last_hidden_state.numpy()) > 1e-2


def test_masked_lm_checkpoint_loads_without_heads_or_pooler(tmp_path):
  torch.manual_seed(2)
  config = RobertaConfig(**TINY, pad_token_id=1, type_vocab_size=1)
  model = RobertaForMaskedLM(config).eval()
  model_dir = _save(model, tmp_path)
  names = load_file(os.path.join(model_dir, "model.safetensors")).keys()
  assert any(n.startswith("lm_head.") for n in names) and any(
    n.startswith("roberta.") for n in names
  )
  module, params, _ = load_hf_encoder(model_dir)
  assert not module.with_pooler and "pooler" not in params
  ids, mask = _batch(pad_id=1)
  with torch.no_grad():
    ref = model.roberta(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    ).last_hidden_state
  hidden, pooled = _apply(module, params, ids, mask)
  assert pooled is None and _rel_err(hidden, ref.numpy()) <= 1e-5
  with pytest.raises(ValueError, match="pooler weights"):
    pool(hidden, pooled, jnp.asarray(mask), "pooler")


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(bert_dir):
  module32, params, _ = load_hf_encoder(bert_dir)
  module16, _, _ = load_hf_encoder(bert_dir, dtype=jnp.bfloat16)
  ids, mask = _batch(0)
  h32, _ = _apply(module32, params, ids, mask)
  h16, _ = _apply(module16, params, ids, mask)
  assert h16.dtype == jnp.bfloat16
  assert 1e-4 < _rel_err(h16, np.asarray(h32)) < 5e-2  # bf16 rounding, nothing worse


def test_missing_and_unexpected_weights_are_listed(bert_dir, tmp_path):
  tensors = load_file(os.path.join(bert_dir, "model.safetensors"))
  del tensors["encoder.layer.1.attention.self.key.bias"]
  tensors["encoder.layer.1.adapter.weight"] = np.zeros((2, 2), np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(bert_dir, "config.json")).read())
  with pytest.raises(ValueError) as e:
    load_hf_encoder(str(tmp_path))
  assert "missing ['encoder.layer.1.attention.self.key.bias']" in str(e.value)
  assert "unexpected ['encoder.layer.1.adapter.weight']" in str(e.value)


def test_shape_mismatch_names_the_tensor(bert_dir, tmp_path):
  config = json.load(open(os.path.join(bert_dir, "config.json")))
  (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 38}))
  os.symlink(os.path.join(bert_dir, "model.safetensors"), tmp_path / "model.safetensors")
  with pytest.raises(
    ValueError, match=r"intermediate\.dense\.bias gives shape \(2, 37\) .* implies \(2, 38\)"
  ):
    load_hf_encoder(str(tmp_path))


def test_missing_files_and_unsupported_configs_are_named(bert_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="lacks config.json and model.safetensors"):
    load_hf_encoder(str(tmp_path))
  config = json.load(open(os.path.join(bert_dir, "config.json")))
  os.symlink(os.path.join(bert_dir, "model.safetensors"), tmp_path / "model.safetensors")
  for change, message in [
    ({"model_type": "gpt2"}, "not a BERT-family encoder"),
    ({"position_embedding_type": "relative_key"}, "only 'absolute'"),
    ({"hidden_act": "swish"}, "hidden_act 'swish'"),
  ]:
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=message):
      load_hf_encoder(str(tmp_path))


def test_pooling_modes():
  hidden = jnp.asarray(np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2))
  mask = jnp.asarray([[1, 1, 0], [0, 0, 0]])
  pooler_output = jnp.ones((2, 2))
  np.testing.assert_allclose(pool(hidden, pooler_output, mask, "mean"), [[1.0, 2.0], [0.0, 0.0]])
  np.testing.assert_allclose(pool(hidden, pooler_output, mask, "cls"), [[0.0, 1.0], [6.0, 7.0]])
  np.testing.assert_allclose(pool(hidden, pooler_output, mask, "pooler"), np.ones((2, 2)))
  with pytest.raises(ValueError, match="unknown pooling 'max'"):
    pool(hidden, pooler_output, mask, "max")


def test_sharded_checkpoint_loads_like_the_single_file(bert_dir, tmp_path):
  """A BERT saved in 3+ safetensors shards (model.safetensors.index.json) gives the same weights."""
  model = BertModel.from_pretrained(bert_dir).eval()
  model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  assert not os.path.exists(tmp_path / "model.safetensors")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) >= 3
  _, single, _ = load_hf_encoder(bert_dir)
  module, sharded, _ = load_hf_encoder(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, sharded, single)
  ids, mask = _batch(module.config.pad_token_id)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  hidden, _ = _apply(module, sharded, ids, mask)
  assert _rel_err(hidden, ref.numpy()) <= 1e-5
