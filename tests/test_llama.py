"""The Flax Llama-family text encoder against transformers' PyTorch models, its sharded loading, and the
embed command.

Tolerances: float32 parity is 1e-5 of the largest reference value (observed ~2e-7: the same float32
arithmetic in another order); bfloat16 is compared with the float32 reference at 5e-2 (bf16 keeps 8
significant bits, ~4e-3 relative per rounding, over 2 layers of matmuls and softmax). Hidden states are
compared on attended positions only: a padded position's state is whatever each implementation makes of
a query that may see no key.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecg_contrastive.models import llama
from ecg_contrastive.models.pooling import pool
from ecg_contrastive.models.safetensors_io import TextModelError
from ecg_contrastive.sharding import make_mesh
from ecg_contrastive.text import embed
from ecg_contrastive.text.encode import Encoder
from ecg_contrastive.text.model import load_text_model
from ecg_contrastive.text.precompute import embed_texts
from ecg_contrastive.text.standin import write_llama_tokenizer, write_random_llama

VOCAB = 200
TINY = dict(
  vocab_size=VOCAB,
  hidden_size=64,
  num_hidden_layers=2,
  num_attention_heads=8,
  num_key_value_heads=2,  # GQA: 4 query heads per key/value head
  intermediate_size=96,
  max_position_embeddings=128,
)
LLAMA3_ROPE = dict(
  rope_type="llama3",
  rope_theta=500000.0,
  factor=8.0,
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  original_max_position_embeddings=8,  # small, so the 13-token batch spans all three frequency bands
)
LENGTHS = np.array([13, 9, 2, 1])


def _torch_model(family: str, seed: int, **overrides):
  torch = pytest.importorskip("torch")
  import transformers

  configs = {
    "llama": (transformers.LlamaConfig, transformers.LlamaModel, dict(rope_parameters=LLAMA3_ROPE)),
    "mistral": (transformers.MistralConfig, transformers.MistralModel, dict(sliding_window=4)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2Model, {}),
  }
  config_cls, model_cls, extra = configs[family]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**TINY, **{**extra, **overrides})).eval()
  with torch.no_grad():  # random RMSNorm scales and biases, so a mix-up of them shows
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith(".bias"):
        p.add_(torch.randn_like(p) * 0.3)
  return model


def _save_sharded(model, directory) -> str:
  model.save_pretrained(str(directory), max_shard_size="60KB")
  write_llama_tokenizer(str(directory))
  return str(directory)


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(4, 13) ids and right-padding mask with rows of 13, 9, 2 and 1 tokens."""
  ids = np.random.default_rng(seed).integers(3, VOCAB, (4, 13))
  mask = (np.arange(13)[None] < LENGTHS[:, None]).astype(np.int64)
  return np.where(mask == 1, ids, 0), mask


def _reference(model, ids, mask, position_ids=None):
  import torch

  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      position_ids=None if position_ids is None else torch.tensor(position_ids),
      output_hidden_states=True,
    )
  return [h.numpy() for h in out.hidden_states]


def _rel_err(ours, theirs, mask) -> float:
  sel = np.asarray(mask).astype(bool)
  ours = np.asarray(ours, np.float32)
  return float(np.abs(ours[sel] - theirs[sel]).max() / np.abs(theirs[sel]).max())


def _apply(module, params, ids, mask):
  hidden, _ = jax.jit(module.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  return hidden


def _pooled_reference(hidden, mask):
  m = mask[..., None].astype(np.float32)
  last = hidden[np.arange(len(mask)), mask.sum(1) - 1]
  return (hidden * m).sum(1) / m.sum(1), last


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return _save_sharded(_torch_model("llama", 0), tmp_path_factory.mktemp("llama"))


def test_sharded_llama3_matches_pytorch_hidden_states_and_pooling(llama_dir):
  from transformers import LlamaModel

  shards = [f for f in os.listdir(llama_dir) if f.endswith(".safetensors")]
  assert len(shards) >= 3 and os.path.isfile(
    os.path.join(llama_dir, "model.safetensors.index.json")
  )
  reference = LlamaModel.from_pretrained(llama_dir).eval()
  config = llama.read_config(llama_dir)
  assert (config.rope_type, config.groups, config.head_dim) == ("llama3", 4, 8)
  module, params = llama.load_llama(llama_dir, config)
  ids, mask = _batch()
  states = _reference(reference, ids, mask)
  hidden = _apply(module, params, ids, mask)
  assert hidden.shape == (4, 13, 64) and _rel_err(hidden, states[-1], mask) <= 1e-5
  mean, last = _pooled_reference(states[-1], mask)
  for pooling, want in (("mean", mean), ("last", last)):
    got = np.asarray(pool(hidden, None, jnp.asarray(mask), pooling))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5, pooling
  # An intermediate layer (transformers' hidden_states[1]) runs only the first layer, without the final norm.
  one, params_one = llama.load_llama(llama_dir, config, layer=1)
  assert one.layers == 1 and "norm" not in params_one
  assert _rel_err(_apply(one, params_one, ids, mask), states[1], mask) <= 1e-5
  # The test sees the llama3 scaling: plain rope gives other states.
  plain = module.clone(config=llama.LlamaConfig(**{**config.__dict__, "rope_type": "default"}))
  assert _rel_err(_apply(plain, params, ids, mask), states[-1], mask) > 1e-3


def test_left_padding_gives_the_right_padded_embeddings(llama_dir):
  """Positions count attended tokens: a left-padded row equals the same text right-padded; 'last' finds
  the last token either way. transformers agrees when given the same position ids."""
  from transformers import LlamaModel

  config = llama.read_config(llama_dir)
  module, params = llama.load_llama(llama_dir, config)
  ids, mask = _batch(1)
  shift = 13 - LENGTHS
  left_ids = np.stack([np.roll(r, s) for r, s in zip(ids, shift)])
  left_mask = np.stack([np.roll(r, s) for r, s in zip(mask, shift)])
  right, left = _apply(module, params, ids, mask), _apply(module, params, left_ids, left_mask)
  for pooling in ("mean", "last"):
    a = np.asarray(pool(right, None, jnp.asarray(mask), pooling))
    b = np.asarray(pool(left, None, jnp.asarray(left_mask), pooling))
    assert np.abs(a - b).max() / np.abs(a).max() <= 1e-5, pooling
  positions = np.maximum(np.cumsum(left_mask, 1) - 1, 0)
  states = _reference(LlamaModel.from_pretrained(llama_dir).eval(), left_ids, left_mask, positions)
  assert _rel_err(left, states[-1], left_mask) <= 1e-5


def test_eight_devices_split_the_weights_and_match_one(llama_dir):
  """The weights placed straight into their shards on 8 devices; pooled embeddings equal transformers' on
  1 and 8 devices."""
  from transformers import LlamaModel

  assert jax.local_device_count() == 8
  ids, mask = _batch(2)
  mean, last = _pooled_reference(
    _reference(LlamaModel.from_pretrained(llama_dir).eval(), ids, mask)[-1], mask
  )
  rows, row_mask = (
    np.concatenate([ids, ids]),
    np.concatenate([mask, mask]),
  )  # 8 rows: one per device
  for devices in (1, 8):
    mesh = make_mesh(jax.local_devices()[:devices])
    model = load_text_model(llama_dir, mesh=mesh)
    q = model.params["layers"]["q_proj"]["kernel"]
    assert q.sharding.mesh.devices.size == devices
    assert q.addressable_shards[0].data.shape == (2, 64, 64 // devices)  # heads split over devices
    for pooling, want in (("mean", mean), ("last", last)):
      got = np.asarray(Encoder(model.module, model.params, pooling, mesh)(rows, row_mask))
      assert np.abs(got[:4] - want).max() / np.abs(want).max() <= 1e-5, (devices, pooling)
      np.testing.assert_array_equal(got[:4], got[4:])


@pytest.mark.slow
def test_bfloat16_weights_and_compute_stay_close(llama_dir):
  config = llama.read_config(llama_dir)
  ids, mask = _batch()
  m32, p32 = llama.load_llama(llama_dir, config)
  m16, p16 = llama.load_llama(llama_dir, config, dtype=jnp.bfloat16)
  assert p16["layers"]["up_proj"]["kernel"].dtype == jnp.bfloat16
  h32, h16 = _apply(m32, p32, ids, mask), _apply(m16, p16, ids, mask)
  assert h16.dtype == jnp.bfloat16
  assert 1e-4 < _rel_err(h16, np.asarray(h32), mask) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_mistral_sliding_window_and_qwen2_biases_match_pytorch(family, tmp_path):
  import transformers

  model = _torch_model(family, 3)
  directory = _save_sharded(model, tmp_path)
  config = llama.read_config(directory)
  assert config.family == family
  assert (config.sliding_window, config.qkv_bias) == (
    (4, False) if family == "mistral" else (None, True)
  )
  reference = getattr(transformers, f"{family.capitalize()}Model").from_pretrained(directory).eval()
  module, params = llama.load_llama(directory, config)
  ids, mask = _batch(4)
  assert (
    _rel_err(_apply(module, params, ids, mask), _reference(reference, ids, mask)[-1], mask) <= 1e-5
  )


# ----------------------------------------------------------------------------- bad input


def test_bad_directories_are_named(llama_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    load_text_model(str(tmp_path), mesh=make_mesh(jax.local_devices()[:1]))
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in os.listdir(llama_dir):
    os.symlink(os.path.join(llama_dir, name), bad / name)
  config = json.load(open(os.path.join(llama_dir, "config.json")))
  os.remove(bad / "config.json")
  (bad / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
  with pytest.raises(
    TextModelError, match=r"config\.json: model_type 'gpt_neox' .* not a supported"
  ):
    load_text_model(str(bad), mesh=make_mesh(jax.local_devices()[:1]))
  (bad / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "yarn"}}))
  with pytest.raises(TextModelError, match="rope type 'yarn' is not supported"):
    load_text_model(str(bad), mesh=make_mesh(jax.local_devices()[:1]))
  (bad / "config.json").write_text(json.dumps(config))
  shard = sorted(f for f in os.listdir(bad) if f.endswith(".safetensors"))[1]
  os.remove(bad / shard)
  with pytest.raises(TextModelError, match=rf"index\.json names shard files .*\['{shard}'\]"):
    load_text_model(str(bad), mesh=make_mesh(jax.local_devices()[:1]))


def test_dtype_and_weight_mismatches_name_the_file(tmp_path):
  from safetensors.numpy import load_file, save_file

  directory = write_random_llama(str(tmp_path / "m"), hidden_size=32, num_layers=1, num_heads=4)
  index = json.load(open(tmp_path / "m" / "model.safetensors.index.json"))["weight_map"]
  shard = index["model.layers.0.mlp.up_proj.weight"]
  tensors = load_file(str(tmp_path / "m" / shard))
  tensors["model.layers.0.mlp.up_proj.weight"] = tensors[
    "model.layers.0.mlp.up_proj.weight"
  ].astype(np.int8)
  save_file(tensors, str(tmp_path / "m" / shard))
  mesh = make_mesh(jax.local_devices()[:1])
  with pytest.raises(
    TextModelError, match=f"{shard}: tensor model.layers.0.mlp.up_proj.weight has dtype I8"
  ):
    load_text_model(directory, mesh=mesh)
  tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((5, 32), np.float32)
  tensors["model.layers.0.adapter.weight"] = np.zeros(2, np.float32)
  save_file(tensors, str(tmp_path / "m" / shard))
  index["model.layers.0.adapter.weight"] = shard
  down = index.pop("model.layers.0.mlp.down_proj.weight")
  (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
  with pytest.raises(TextModelError) as e:
    load_text_model(directory, mesh=mesh)
  assert "missing ['layers.0.mlp.down_proj.weight']" in str(e.value)
  assert "unexpected ['layers.0.adapter.weight']" in str(e.value)
  index["model.layers.0.mlp.down_proj.weight"] = down
  del index["model.layers.0.adapter.weight"]
  (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
  with pytest.raises(
    TextModelError, match=rf"{shard}: model.layers.0.mlp.up_proj.weight gives shape \(1, 32, 5\)"
  ):
    load_text_model(directory, mesh=mesh)


# ----------------------------------------------------------------------------- precompute and the command


def test_embed_command_writes_rows_in_input_order(tmp_path, capsys):
  directory = write_random_llama(
    str(tmp_path / "m"), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2
  )
  texts = [
    "洞調律。心房細動を認める。",
    "完全右脚ブロック",
    "洞調律。心房細動を認める。",
    "",
    "ST低下",
  ]
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  out = tmp_path / "out.npy"
  template = "この心電図所見「{}」を一語で表すと："
  argv = ["--model-dir", directory, "--texts", str(tmp_path / "texts.txt"), "--out", str(out)]
  argv += ["--pooling", "last", "--template", template, "--cache-dir", str(tmp_path / "cache")]
  assert embed.main(argv) == 0
  got = np.load(out)
  assert got.dtype == np.float32 and got.shape == (5, 32)
  np.testing.assert_array_equal(got[0], got[2])
  assert np.abs(got[0] - got[1]).max() > 1e-3
  table = embed_texts(
    [template.replace("{}", t) for t in texts],
    directory,
    pooling="last",
    progress=False,
    cache_dir=str(tmp_path / "cache2"),
  )
  np.testing.assert_allclose(
    got,
    table.embeddings[table.rows([template.replace("{}", t) for t in texts])],
    rtol=1e-6,
    atol=1e-7,
  )
  assert "5 texts" in capsys.readouterr().err
  for bad, says in (
    (["--pooling", "cls"], "does not suit a causal decoder"),
    (["--template", "no placeholder"], "exactly once"),
    (["--layer", "7"], "layer 7 is out of range"),
    (["--model-dir", str(tmp_path / "nowhere")], "nowhere': no such directory"),
  ):
    assert embed.main(argv[:6] + bad) == 2
    assert says in capsys.readouterr().err
  (tmp_path / "empty.txt").write_text("")
  assert (
    embed.main(
      ["--model-dir", directory, "--texts", str(tmp_path / "empty.txt"), "--out", str(out)]
    )
    == 2
  )
  assert "empty.txt" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_main_job_runs_with_a_llama_text_side(tmp_path, caplog):
  """configs/default.py:tiny end to end (data, text precompute, training, evaluation) with a sharded
  random Llama directory as its frozen text tower, last-token pooling and a prompt template."""
  import logging

  from configs import default
  from ecg_contrastive import train

  config = default.get_config("tiny")
  config.text.model_dir = write_random_llama(
    str(tmp_path / "llama"), hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2
  )
  config.text.pooling = "last"
  config.text.template = "所見：{}"
  config.text.dtype = "bfloat16"
  config.num_steps = 4
  config.log_every = 2
  config.checkpoint_every = 4
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
  tables = [r.getMessage() for r in caplog.records if r.getMessage().startswith("report table: ")]
  summary = json.loads(tables[0][len("report table: ") :])
  assert summary["dim"] == 48 and summary["template"] == "所見：{}" and summary["pooling"] == "last"
  assert summary["dtype"] == "bfloat16" and summary["unique"] > 10
  for split in config.eval_splits:
    assert 0.0 <= results[split]["top1"] <= 1.0
  metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m) and any(
    "loss" in m for m in metrics
  )


@pytest.mark.slow
def test_memory_plan_splits_the_weights_over_eight_devices():
  """bench/text_precompute.py's plan (compiled, nothing run) on a small config: split weights put 1/8 of the
  weights on each device, replicated ones all of them."""
  from bench.text_precompute import LAYOUTS, plan_rows

  config = dict(
    vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
    head_dim=16, intermediate_size=256, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=5e5,
  )  # fmt: skip
  rows = {r["layout"]: r for r in plan_rows(16, 32, 8, config=config, dtype="float32")}
  weights = (512 * 128 + 2 * (128 * (128 + 2 * 32 + 128) + 3 * 128 * 256 + 2 * 128) + 128) * 4
  split, replicated = rows[LAYOUTS[0][0]], rows[LAYOUTS[2][0]]
  assert split["weights_gib"] * 2**30 == weights
  batch = 2 * 16 * 32 * 4 / 8  # ids and mask, int32, 2 rows per device
  norms = (2 * 2 * 128 + 128) * 4  # the RMSNorm scales stay replicated
  assert split["arguments_gib"] * 2**30 == pytest.approx((weights - norms) / 8 + norms + batch)
  assert replicated["arguments_gib"] * 2**30 == pytest.approx(weights + batch)
  assert rows["one device"]["arguments_gib"] * 2**30 == pytest.approx(weights + 8 * batch)


def test_llama_style_tokenizer_adds_bos_truncates_and_pads_with_eos(tmp_path):
  """A tokenizer.json tokenizer (transformers 5's tokenizers backend, no build_inputs_with_special_tokens)
  without a pad token: BOS first, truncation keeps it, padding uses EOS."""
  from ecg_contrastive.text.precompute import pad_id
  from ecg_contrastive.text.tokenizer import load_tokenizer, tokenize

  tokenizer = load_tokenizer(write_llama_tokenizer(str(tmp_path)))
  assert tokenizer.pad_token_id is None and pad_id(tokenizer) == tokenizer.eos_token_id == 2
  out = tokenize(["洞調律。心房細動を認める。", "ＳＴ低下"], tokenizer, max_length=6)
  assert [len(i) for i in out.ids] == [6, 5] and out.truncated == 1 and out.unk_tokens == 0
  assert all(i[0] == 1 for i in out.ids)  # <|begin_of_text|>
  assert tokenizer.convert_ids_to_tokens(out.ids[1][1:].tolist()) == ["S", "T", "低", "下"]  # NFKC
