"""Frozen Llama-family decoder (Llama 2/3, Mistral, Qwen2) as a text encoder, in Flax linen.

The paper embeds its reports with MedLlama3-JP-v2, a Llama-3 8B model: a decoder used as
a frozen encoder, its last hidden states pooled into one vector per report. This module
reproduces transformers' PyTorch `LlamaModel` / `MistralModel` / `Qwen2Model` forward:
pre-RMSNorm layers, grouped-query attention (each key/value head shared by
num_attention_heads / num_key_value_heads query heads), rotary position embeddings
(default, 'linear' and Llama-3's 'llama3' frequency scaling), SwiGLU MLP, causal mask with
padding (and Mistral's sliding window). Qwen2 differs only in its q/k/v biases.

Positions count attended tokens (cumsum of the mask, minus one), so a left-padded text
gets the same positions, hence the same hidden states, as the same text right-padded
(transformers' default position ids are 0..L-1 whatever the padding; pass it
`position_ids` to compare left-padded rows).

Weights load from a local Hugging Face directory (config.json + model.safetensors or its
shards) tensor by tensor into their place on the mesh (`load_llama`, `param_sharding`).
`lm_head` (and decoder layers above the pooled one) are skipped and logged; missing or
unexpected tensors are listed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ecg_contrastive.models.safetensors_io import (
  Checkpoint,
  TextModelError,
  checkpoint_files,
  read_params,
)

log = logging.getLogger(__name__)

FAMILIES = ("llama", "mistral", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3")
_SKIPPED_PREFIXES = ("lm_head.",)  # the language-model head; an encoder does not use it
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer older checkpoints saved


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """The architecture fields of a Llama-family `config.json` (hashable: the module is a jit static)."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  intermediate_size: int
  max_position_embeddings: int
  rms_norm_eps: float
  rope_theta: float
  rope_type: str = "default"
  rope_scaling: tuple[tuple[str, float], ...] = ()  # llama3/linear parameters, sorted items
  qkv_bias: bool = False  # Qwen2; Llama's attention_bias
  o_bias: bool = False  # Llama's attention_bias
  sliding_window: int | None = None  # Mistral: a query sees at most this many keys
  family: str = "llama"

  @property
  def groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_attention_heads // self.num_key_value_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> LlamaConfig:
    family = hf.get("model_type")
    if family not in FAMILIES:
      raise TextModelError(
        f"{source}: model_type {family!r} is not a Llama-family decoder; supported: {FAMILIES}"
      )

    def need(key):
      if hf.get(key) is None:
        raise TextModelError(f"{source}: missing field {key!r}")
      return hf[key]

    if hf.get("hidden_act", "silu") != "silu":
      raise TextModelError(
        f"{source}: hidden_act {hf['hidden_act']!r} is not supported; only 'silu'"
      )
    if hf.get("mlp_bias"):
      raise TextModelError(f"{source}: mlp_bias true is not supported")
    if family == "qwen2" and hf.get("use_sliding_window"):
      raise TextModelError(f"{source}: use_sliding_window true is not supported for qwen2")
    # transformers 5 writes rope_parameters (rope_theta inside); 4.x wrote rope_theta + rope_scaling
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if rope_type not in _ROPE_TYPES:
      raise TextModelError(
        f"{source}: rope type {rope_type!r} is not supported; supported: {_ROPE_TYPES}"
      )
    keys = {"linear": ("factor",), "llama3": _LLAMA3_KEYS}.get(rope_type, ())
    if any(k not in rope for k in keys):
      raise TextModelError(f"{source}: {rope_type} rope scaling needs {list(keys)}")
    heads = need("num_attention_heads")
    kv_heads = hf.get("num_key_value_heads") or heads
    if heads % kv_heads:
      raise TextModelError(
        f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
      )
    attention_bias = bool(hf.get("attention_bias", False))
    window = hf.get("sliding_window") if family == "mistral" else None
    return cls(
      vocab_size=need("vocab_size"),
      hidden_size=need("hidden_size"),
      num_hidden_layers=need("num_hidden_layers"),
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      head_dim=hf.get("head_dim") or need("hidden_size") // heads,
      intermediate_size=need("intermediate_size"),
      max_position_embeddings=need("max_position_embeddings"),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope_theta=float(theta),
      rope_type=rope_type,
      rope_scaling=tuple(sorted((k, float(rope[k])) for k in keys)),
      qkv_bias=attention_bias or family == "qwen2",
      o_bias=attention_bias,
      sliding_window=int(window) if window else None,
      family=family,
    )


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
  """(head_dim / 2,) float32 rotary frequencies, with the config's scaling (as transformers computes them)."""
  dim = config.head_dim
  inv = 1.0 / (
    np.float32(config.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
  )
  scaling = dict(config.rope_scaling)
  if config.rope_type == "linear":
    return (inv / np.float32(scaling["factor"])).astype(np.float32)
  if config.rope_type == "llama3":
    factor, low, high = (scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)  # long wavelengths: slowed by factor
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)  # in between: interpolated
    return np.where(medium, smoothed, scaled).astype(np.float32)
  return inv.astype(np.float32)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x (B, L, ..., d) rotated pairwise (i, i + d/2) by the angles whose cos, sin are (B, L, d)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  extra = (slice(None), slice(None)) + (None,) * (x.ndim - 3)
  return x * cos[extra] + rotated * sin[extra]


class RMSNorm(nn.Module):
  """x / rms(x) * scale, the mean square taken in float32 (as transformers does)."""

  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (scale * normed.astype(x.dtype)).astype(self.dtype)


class DecoderLayer(nn.Module):
  """One pre-norm decoder layer: x + attention(norm(x)), then x + SwiGLU(norm(x))."""

  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, inputs: tuple) -> tuple[jax.Array, None]:
    """x (B, L, H); inputs = (allowed (B, 1, 1, L, L) bool, cos, sin (B, L, head_dim)) -> (B, L, H)."""
    c = self.config
    allowed, cos, sin = inputs
    dense = lambda n, bias, name: nn.Dense(
      n, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    norm = lambda name: RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name=name)
    b, length, d = x.shape[0], x.shape[1], c.head_dim
    h = norm("input_layernorm")(x)
    q = dense(c.num_attention_heads * d, c.qkv_bias, "q_proj")(h)
    k = dense(c.num_key_value_heads * d, c.qkv_bias, "k_proj")(h)
    v = dense(c.num_key_value_heads * d, c.qkv_bias, "v_proj")(h)
    q = rotate(q.reshape(b, length, c.num_key_value_heads, c.groups, d), cos, sin)
    k = rotate(k.reshape(b, length, c.num_key_value_heads, d), cos, sin)
    v = v.reshape(b, length, c.num_key_value_heads, d)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed, scores / np.sqrt(d), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    attended = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, length, -1)
    x = x + dense(c.hidden_size, c.o_bias, "o_proj")(attended)
    h = norm("post_attention_layernorm")(x)
    gated = nn.silu(dense(c.intermediate_size, False, "gate_proj")(h))
    x = x + dense(c.hidden_size, False, "down_proj")(
      gated * dense(c.intermediate_size, False, "up_proj")(h)
    )
    return x, None


class LlamaEncoder(nn.Module):
  """Token ids -> the hidden states after `layers` decoder layers (the final RMSNorm when all run).

  Same call signature as BertEncoder (hidden, None): no pooler. `layers` below
  num_hidden_layers runs only the first `layers` layers (pooling an intermediate layer,
  transformers' hidden_states[layers]); the final norm applies only after the last layer.
  """

  config: LlamaConfig
  layers: int
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # bfloat16 for a large model: 16 GB instead of 32 for 8B
  with_pooler: bool = False

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, None]:
    """input_ids, attention_mask (B, L) -> hidden (B, L, H) in `dtype`, None."""
    c = self.config
    mask = attention_mask.astype(bool)
    x = nn.Embed(
      c.vocab_size,
      c.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="embed_tokens",
    )(input_ids)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)  # counts attended tokens
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inverse_frequencies(c))
    angles = jnp.concatenate([angles, angles], axis=-1)
    cos, sin = jnp.cos(angles).astype(self.dtype), jnp.sin(angles).astype(self.dtype)
    query, key = jnp.arange(x.shape[1])[:, None], jnp.arange(x.shape[1])[None, :]
    causal = key <= query
    if c.sliding_window:
      causal &= query - key < c.sliding_window
    allowed = (causal[None] & mask[:, None, :])[:, None, None]  # (B, 1, 1, L, L)
    if self.layers:
      # One compiled layer body scanned over stacked weights (leading axis = layer).
      scanned = nn.scan(
        DecoderLayer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=nn.broadcast,
        length=self.layers,
      )
      x, _ = scanned(c, self.dtype, self.param_dtype, name="layers")(x, (allowed, cos, sin))
    if self.layers == c.num_hidden_layers:
      x = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="norm")(x)
    return x, None


def layers_to_run(config: LlamaConfig, layer: int) -> int:
  """transformers' hidden_states index (0: embeddings, n or -1: the last, normed) -> decoder layers to run."""
  n = config.num_hidden_layers
  if not -(n + 1) <= layer <= n:
    raise TextModelError(
      f"layer {layer} is out of range for a model with {n} layers; use -1 (the last hidden "
      f"state) or an index in [{-(n + 1)}, {n}] (0 is the token embeddings)"
    )
  return layer % (n + 1)


_PER_LAYER = {  # ours under layers/ -> (HF name under layers.{i}., transpose)
  "input_layernorm/scale": ("input_layernorm.weight", False),
  "post_attention_layernorm/scale": ("post_attention_layernorm.weight", False),
  "q_proj/kernel": ("self_attn.q_proj.weight", True),
  "k_proj/kernel": ("self_attn.k_proj.weight", True),
  "v_proj/kernel": ("self_attn.v_proj.weight", True),
  "o_proj/kernel": ("self_attn.o_proj.weight", True),
  "q_proj/bias": ("self_attn.q_proj.bias", False),
  "k_proj/bias": ("self_attn.k_proj.bias", False),
  "v_proj/bias": ("self_attn.v_proj.bias", False),
  "o_proj/bias": ("self_attn.o_proj.bias", False),
  "gate_proj/kernel": ("mlp.gate_proj.weight", True),
  "up_proj/kernel": ("mlp.up_proj.weight", True),
  "down_proj/kernel": ("mlp.down_proj.weight", True),
}
# The axis of each parameter split over the mesh: attention heads, MLP columns, the hidden width of the
# embedding. Parameters not listed (the RMSNorm scales) are replicated.
_SHARDED_AXIS = {
  "embed_tokens/embedding": 1,
  "layers/q_proj/kernel": 2,
  "layers/k_proj/kernel": 2,
  "layers/v_proj/kernel": 2,
  "layers/q_proj/bias": 1,
  "layers/k_proj/bias": 1,
  "layers/v_proj/bias": 1,
  "layers/o_proj/kernel": 1,
  "layers/gate_proj/kernel": 2,
  "layers/up_proj/kernel": 2,
  "layers/down_proj/kernel": 1,
}


def weight_name_map(module: LlamaEncoder, flat_paths) -> dict[str, tuple[list[str], bool]]:
  """Flax parameter path -> (HF tensor names without the 'model.' prefix, transpose?)."""
  names = {}
  for path in flat_paths:
    if path.startswith("layers/"):
      theirs, transpose = _PER_LAYER[path[len("layers/") :]]
      names[path] = ([f"layers.{i}.{theirs}" for i in range(module.layers)], transpose)
    elif path == "embed_tokens/embedding":
      names[path] = (["embed_tokens.weight"], False)
    elif path == "norm/scale":
      names[path] = (["norm.weight"], False)
    else:
      raise AssertionError(path)
  return names


def param_sharding(path: str, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  """Each parameter split over all devices of the (one-axis) mesh along its heads / MLP axis
  (`_SHARDED_AXIS`); replicated where the devices cannot split that axis evenly (and for RMSNorm scales)."""
  axis = _SHARDED_AXIS.get(path)
  (name,) = mesh.axis_names
  if axis is None or shape[axis] % mesh.devices.size:
    return NamedSharding(mesh, P())
  spec = [None] * len(shape)
  spec[axis] = name
  return NamedSharding(mesh, P(*spec))


def abstract_params(module: LlamaEncoder) -> dict:
  """The module's parameter tree as jax.ShapeDtypeStruct (nothing allocated)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]


def read_config(model_dir: str) -> LlamaConfig:
  """config.json of `model_dir` -> LlamaConfig; TextModelError naming the file for an unsupported one."""
  path = os.path.join(model_dir, "config.json")
  with open(path, encoding="utf-8") as f:
    return LlamaConfig.from_hf(json.load(f), source=path)


def _canonical(name: str) -> str:
  return name[len("model.") :] if name.startswith("model.") else name


def load_llama(
  model_dir: str,
  config: LlamaConfig,
  *,
  dtype: Any = jnp.float32,
  mesh: Mesh | None = None,
  layer: int = -1,
) -> tuple[LlamaEncoder, dict]:
  """Reads the safetensors checkpoint of `model_dir` -> (module, params).

  dtype: compute and parameter dtype (bfloat16 halves the memory of the weights). With a
  mesh, each parameter is placed straight into `param_sharding` (each process reads only
  the slices its own devices hold); without one, params are numpy arrays. layer:
  transformers' hidden_states index to return (-1: the last hidden state); the decoder
  layers above it are neither read nor run.
  """
  checkpoint = Checkpoint(model_dir)
  module = LlamaEncoder(config, layers_to_run(config, layer), dtype=dtype, param_dtype=dtype)
  shapes = traverse_util.flatten_dict(abstract_params(module), sep="/")
  names = weight_name_map(module, shapes)
  stored, skipped = {}, []
  for name in checkpoint.names:
    canonical = _canonical(name)
    if name.startswith(_SKIPPED_PREFIXES) or canonical.endswith(_SKIPPED_SUFFIXES):
      skipped.append(name)
    else:
      stored[canonical] = name
  expected = {hf for hfs, _ in names.values() for hf in hfs}
  unused = {  # decoder layers above the pooled one, and the final norm when it is not applied
    n for n in stored.keys() - expected if _layer_of(n) >= module.layers or n == "norm.weight"
  }
  missing = sorted(expected - stored.keys())
  unexpected = sorted(stored.keys() - expected - unused)
  if missing or unexpected:
    raise TextModelError(
      f"{_describe(checkpoint)}: weights do not match a {config.family} decoder with "
      f"{config.num_hidden_layers} layers; missing {missing or 'none'}; unexpected {unexpected or 'none'}"
    )
  if skipped or unused:
    log.info(
      "%s: skipped %d tensors the encoder does not use (%s)",
      _describe(checkpoint),
      len(skipped) + len(unused),
      ", ".join(sorted(skipped)[:2] + sorted(unused)[:2])
      + (" ..." if len(skipped) + len(unused) > 4 else ""),
    )
  place = (lambda path, shape: param_sharding(path, shape, mesh)) if mesh is not None else None
  return module, read_params(checkpoint, shapes, names, stored, np.dtype(dtype), place)


def _layer_of(name: str) -> int:
  """The decoder layer a canonical tensor name belongs to ('layers.12.mlp...' -> 12), else -1."""
  parts = name.split(".")
  return int(parts[1]) if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit() else -1


def _describe(checkpoint: Checkpoint) -> str:
  return checkpoint_files(checkpoint.model_dir) or checkpoint.model_dir
