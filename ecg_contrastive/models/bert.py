"""Frozen BERT-family text encoder in Flax linen, loaded from a local Hugging Face directory.

transformers 5.x ships no Flax models, so the encoder is ours. It reproduces PyTorch
`BertModel` / `RobertaModel` (post-LayerNorm, absolute positions, exact-erf GELU):
RoBERTa differs only in its position ids, which start after the padding index, and in
having no token types (its single token-type row is added everywhere).

Weights come from `model.safetensors` through an explicit name map (`weight_name_map`):
every Flax parameter names its Hugging Face tensor. Missing or unexpected tensors raise
an error listing them; pre-training heads (`cls.*`, `lm_head.*`) and the non-persistent
`position_ids` buffer are the only tensors skipped, and they are logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ecg_contrastive.models.pooling import POOLINGS, check_pooling, pool  # noqa: F401 (re-exported)
from ecg_contrastive.models.safetensors_io import (
  INDEX,
  SINGLE,
  Checkpoint,
  TextModelError,
  checkpoint_files,
  read_params,
)

log = logging.getLogger(__name__)

_FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
_ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
}
_SKIPPED_PREFIXES = ("cls.", "lm_head.")  # pre-training heads; the encoder does not use them
_SKIPPED_NAMES = ("embeddings.position_ids",)  # a buffer older checkpoints saved


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face `config.json` that the encoder uses."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  pad_token_id: int
  hidden_act: str = "gelu"
  family: str = "bert"  # "bert" or "roberta" (position ids offset by pad_token_id + 1)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> BertConfig:
    model_type = hf.get("model_type")
    if model_type not in _FAMILIES:
      raise TextModelError(
        f"{source}: model_type {model_type!r} is not a BERT-family encoder; "
        f"supported: {sorted(_FAMILIES)}"
      )
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise TextModelError(
        f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not "
        "supported; only 'absolute' position embeddings are implemented"
      )
    if hf.get("hidden_act", "gelu") not in _ACTIVATIONS:
      raise TextModelError(
        f"{source}: hidden_act {hf['hidden_act']!r} is not supported; use one of "
        f"{sorted(_ACTIVATIONS)}"
      )
    try:
      return cls(
        **{
          f.name: hf[f.name]
          for f in dataclasses.fields(cls)
          if f.name not in ("family", "hidden_act")
        },
        hidden_act=hf.get("hidden_act", "gelu"),
        family=_FAMILIES[model_type],
      )
    except KeyError as e:
      raise TextModelError(f"{source}: missing field {e.args[0]!r}") from None


def position_ids(input_ids: jax.Array, config: BertConfig) -> jax.Array:
  """(B, L) int32 position ids: 0..L-1 for BERT; RoBERTa counts non-pad tokens from pad+1."""
  if config.family == "roberta":
    not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id
  return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


class Embeddings(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
    """(B, L) ids -> (B, L, H) LayerNorm(word + token type + position)."""
    c = self.config
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype, name=name)
    x = (
      embed(c.vocab_size, "word_embeddings")(input_ids)
      + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids)
      + embed(c.max_position_embeddings, "position_embeddings")(position_ids(input_ids, c))
    )
    return nn.LayerNorm(c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x)


class Layer(nn.Module):
  """One post-LayerNorm transformer layer (self-attention, then the feed-forward block)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, None]:
    """x (B, L, H), mask (B, L) bool (True = real token) -> (B, L, H), None (scan carry form)."""
    c = self.config
    heads, width = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    norm = lambda name: nn.LayerNorm(c.layer_norm_eps, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(*t.shape[:2], heads, width)
    q, k, v = (split(dense(c.hidden_size, n)(x)) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width).astype(self.dtype)
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    attended = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(x.shape)
    x = norm("attention_LayerNorm")(x + dense(c.hidden_size, "attention_output")(attended))
    hidden = _ACTIVATIONS[c.hidden_act](dense(c.intermediate_size, "intermediate")(x))
    return norm("output_LayerNorm")(x + dense(c.hidden_size, "output")(hidden)), None


class BertEncoder(nn.Module):
  """BERT / RoBERTa encoder: token ids -> last hidden states and (optionally) the pooler."""

  config: BertConfig
  with_pooler: bool = True
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32

  @nn.compact
  def __call__(
    self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array | None]:
    """input_ids, attention_mask (B, L) -> hidden (B, L, H), pooler output (B, H) or None.

    token_type_ids default to zeros (RoBERTa has a single token type).
    """
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(self.config, self.dtype, name="embeddings")(input_ids, token_type_ids)
    # One compiled layer body scanned over stacked weights (leading axis = layer): XLA
    # compiles ~4x faster than with unrolled layers, which matters once per length bucket.
    layers = nn.scan(
      Layer,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=nn.broadcast,
      length=self.config.num_hidden_layers,
    )
    x, _ = layers(self.config, self.dtype, name="layers")(x, attention_mask.astype(bool))
    pooled = None
    if self.with_pooler:
      pooled = jnp.tanh(nn.Dense(self.config.hidden_size, dtype=self.dtype, name="pooler")(x[:, 0]))
    return x, pooled


def weight_name_map(config: BertConfig, with_pooler: bool) -> dict[str, tuple[list[str], bool]]:
  """Flax parameter path -> (HF tensor names, transpose?).

  Paths under 'layers/' hold one HF tensor per layer, stacked on a leading axis
  (e.g. 'layers/query/kernel' (layers, H, H) <- encoder.layer.{0..n-1}.attention.self.query.weight);
  every other path holds exactly one tensor. Linear kernels are transposed (PyTorch
  stores (out, in)).
  """
  names = {
    f"embeddings/{n}/embedding": ([f"embeddings.{n}.weight"], False)
    for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
  }
  names["embeddings/LayerNorm/scale"] = (["embeddings.LayerNorm.weight"], False)
  names["embeddings/LayerNorm/bias"] = (["embeddings.LayerNorm.bias"], False)
  per_layer = {
    "query/kernel": ("attention.self.query.weight", True),
    "query/bias": ("attention.self.query.bias", False),
    "key/kernel": ("attention.self.key.weight", True),
    "key/bias": ("attention.self.key.bias", False),
    "value/kernel": ("attention.self.value.weight", True),
    "value/bias": ("attention.self.value.bias", False),
    "attention_output/kernel": ("attention.output.dense.weight", True),
    "attention_output/bias": ("attention.output.dense.bias", False),
    "attention_LayerNorm/scale": ("attention.output.LayerNorm.weight", False),
    "attention_LayerNorm/bias": ("attention.output.LayerNorm.bias", False),
    "intermediate/kernel": ("intermediate.dense.weight", True),
    "intermediate/bias": ("intermediate.dense.bias", False),
    "output/kernel": ("output.dense.weight", True),
    "output/bias": ("output.dense.bias", False),
    "output_LayerNorm/scale": ("output.LayerNorm.weight", False),
    "output_LayerNorm/bias": ("output.LayerNorm.bias", False),
  }
  for ours, (theirs, transpose) in per_layer.items():
    names[f"layers/{ours}"] = (
      [f"encoder.layer.{i}.{theirs}" for i in range(config.num_hidden_layers)],
      transpose,
    )
  if with_pooler:
    names["pooler/kernel"] = (["pooler.dense.weight"], True)
    names["pooler/bias"] = (["pooler.dense.bias"], False)
  return names


def _canonical(name: str) -> str:
  """Strips the model prefix ('bert.', 'roberta.') and renames old LayerNorm gamma/beta."""
  for prefix in ("bert.", "roberta."):
    if name.startswith(prefix):
      name = name[len(prefix) :]
  return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
    "LayerNorm.beta", "LayerNorm.bias"
  )


def require_model_files(model_dir: str) -> list[str]:
  """Paths of config.json and the checkpoint (model.safetensors, or the shard index
  model.safetensors.index.json); FileNotFoundError naming what is absent."""
  config = os.path.join(model_dir, "config.json")
  weights = checkpoint_files(model_dir)
  absent = ([] if os.path.isfile(config) else ["config.json"]) + (
    [] if weights else [f"{SINGLE} (or {INDEX})"]
  )
  if absent:
    raise FileNotFoundError(
      f"text model directory {model_dir!r} lacks {' and '.join(absent)}; point the config at a "
      "local Hugging Face model directory (config.json, safetensors weights, tokenizer files) or "
      "write the stand-in with ecg_contrastive.text.standin.write_standin_model"
    )
  return [config, weights]


_REDO = "; copy the model directory again (e.g. save_pretrained(dir, safe_serialization=True))"


def read_hf_config(path: str) -> BertConfig:
  """A model directory's config.json -> BertConfig; TextModelError naming the file if it is not a JSON object
  describing a BERT-family encoder."""
  try:
    with open(path, encoding="utf-8") as f:
      hf_config = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise TextModelError(f"{path}: not valid JSON ({type(e).__name__}: {e}){_REDO}") from e
  if not isinstance(hf_config, dict):
    raise TextModelError(f"{path}: holds a {type(hf_config).__name__}, not a JSON object{_REDO}")
  return BertConfig.from_hf(hf_config, source=path)


def max_tokens(config: BertConfig) -> int:
  """Tokens per text the encoder has positions for (RoBERTa's positions start after pad_token_id + 1)."""
  return config.max_position_embeddings - (
    config.pad_token_id + 1 if config.family == "roberta" else 0
  )


def load_hf_encoder(
  model_dir: str, dtype: Any = jnp.float32
) -> tuple[BertEncoder, dict, BertConfig]:
  """Reads `config.json` + the safetensors checkpoint (single file or shards) of `model_dir`
  -> (module, params, config).

  params are float32 numpy arrays in the module's tree; `dtype` is the compute dtype
  (float32 or bfloat16). The pooler is included when the checkpoint has one.
  """
  required = require_model_files(model_dir)
  config = read_hf_config(required[0])
  checkpoint = Checkpoint(model_dir)
  stored: dict[str, str] = {}  # canonical name -> name in the checkpoint
  skipped = []
  for name in checkpoint.names:
    if name.startswith(_SKIPPED_PREFIXES) or _canonical(name) in _SKIPPED_NAMES:
      skipped.append(name)
    else:
      stored[_canonical(name)] = name
  with_pooler = "pooler.dense.weight" in stored
  names = weight_name_map(config, with_pooler)
  expected = {hf for hfs, _ in names.values() for hf in hfs}
  missing, unexpected = sorted(expected - stored.keys()), sorted(stored.keys() - expected)
  if missing or unexpected:
    raise TextModelError(
      f"{required[1]}: weights do not match a {config.family} encoder with "
      f"{config.num_hidden_layers} layers; missing {missing or 'none'}; "
      f"unexpected {unexpected or 'none'}"
    )
  if skipped:
    log.info(
      "%s: skipped %d pre-training head tensors (%s ...)", required[1], len(skipped), skipped[0]
    )
  module = BertEncoder(config, with_pooler=with_pooler, dtype=dtype)
  shapes = jax.eval_shape(
    module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)
  )["params"]
  flat_shapes = traverse_util.flatten_dict(shapes, sep="/")
  return module, read_params(checkpoint, flat_shapes, names, stored, np.float32), config
