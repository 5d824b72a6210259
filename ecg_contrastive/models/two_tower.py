"""ECG tower + projection heads into the joint space shared with frozen text embeddings.

Parameter tree (names double as the interface for freezing, loading and export):
  ecg/...       ResNet1d backbone
  ecg_head/     Dense(features -> embed_dim)
  txt_head/     Dense(text_dim -> embed_dim) on the frozen text embeddings
  logit_scale   scalar log(1 / temperature) (trained only when `learn_temperature`)
  logit_bias    scalar, only with the sigmoid loss (`logit_bias` set): SigLIP's learnable bias
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ecg_contrastive.models.resnet1d import ResNet1d

MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP's clamp: temperature never below 0.01
# config.model: the architecture (what an export rebuilds); config.train: TwoTower settings of training only (the
# initial temperature, the compute dtype, the sigmoid loss's initial bias, BatchNorm's backward pass).
ARCHITECTURE_KEYS = ("depth", "width", "downsample", "embed_dim", "lead_mask")
TRAINING_KEYS = ("temperature", "dtype", "logit_bias", "bn_backward", "conv_impl")


def with_presence(ecg_mv: jnp.ndarray) -> jnp.ndarray:
  """(B, T, 12) mV -> (B, T, 24): the leads, then 12 presence channels (1.0 where the lead has a non-zero sample,
  0.0 for a lead that is all zeros: dropped in training, or not recorded and zero-filled)."""
  present = jnp.any(ecg_mv != 0, axis=1, keepdims=True).astype(ecg_mv.dtype)
  return jnp.concatenate([ecg_mv, jnp.broadcast_to(present, ecg_mv.shape)], axis=-1)


def l2_normalize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class TwoTower(nn.Module):
  """Contrastive model. The text tower itself is frozen and precomputed; only its head lives here."""

  depth: int = 18
  width: int = 64
  downsample: int = 1
  embed_dim: int = 256
  lead_mask: bool = (
    False  # the tower also sees which leads are present (with_presence): 24 input channels
  )
  temperature: float = 0.07
  dtype: Any = jnp.float32
  logit_bias: float | None = (
    None  # initial value of the sigmoid loss's bias; None: no bias parameter
  )
  bn_backward: str = (
    "lean"  # BatchNorm's backward: "lean" | "autodiff" (same math, rounding aside; for A/B runs)
  )
  # how the blocks' convolutions + BatchNorms run: "xla" | "shifted_matmul" | "pallas" (models/fused_conv.py;
  # same parameters and mathematics, rounding aside)
  conv_impl: str = "xla"

  def setup(self):
    self.ecg = ResNet1d(
      self.depth, self.width, self.downsample, self.dtype, self.bn_backward, self.conv_impl
    )
    self.ecg_head = nn.Dense(self.embed_dim, dtype=jnp.float32)
    self.txt_head = nn.Dense(self.embed_dim, dtype=jnp.float32)
    self.logit_scale = self.param(
      "logit_scale", lambda _: jnp.asarray(np.log(1.0 / self.temperature), jnp.float32)
    )
    if self.logit_bias is not None:
      self.bias_param = self.param(
        "logit_bias", lambda _: jnp.asarray(self.logit_bias, jnp.float32)
      )

  def encode_ecg(self, ecg_mv: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """(B, T, 12) float mV -> (B, embed_dim) unit-norm embeddings."""
    if self.lead_mask:
      ecg_mv = with_presence(ecg_mv)
    return l2_normalize(self.ecg_head(self.ecg(ecg_mv, train)))

  def encode_text(self, text_emb: jnp.ndarray) -> jnp.ndarray:
    """(N, text_dim) frozen text-tower embeddings -> (N, embed_dim) unit-norm embeddings."""
    return l2_normalize(self.txt_head(text_emb.astype(jnp.float32)))

  def scale(self) -> jnp.ndarray:
    """exp(logit_scale), clamped to at most 100."""
    return jnp.exp(jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE))

  def bias(self) -> jnp.ndarray:
    """The sigmoid loss's logit bias (0 without one). A constant shift: it never changes a ranking."""
    return self.bias_param if self.logit_bias is not None else jnp.zeros((), jnp.float32)

  def __call__(self, ecg_mv: jnp.ndarray, text_emb: jnp.ndarray, train: bool = False):
    """Returns (ecg embeddings (B, E), text embeddings (B, E), logit scale ())."""
    return self.encode_ecg(ecg_mv, train), self.encode_text(text_emb), self.scale()


def _as_dict(node: Any) -> dict:
  return dict(node.to_dict() if hasattr(node, "to_dict") else node or {})


def split_config(config: Any) -> tuple[dict, dict]:
  """(architecture, training settings) of a run config: config.model as is, and the TRAINING_KEYS of config.train.

  The one compat mapping for configs written before the split (an older workdir's config.json): their
  config.model also held the TRAINING_KEYS; these are moved to the training settings (and win over config.train).
  Keys of config.model that are neither stay in the architecture, for the caller to reject.
  """
  model = _as_dict(config["model"])
  train = _as_dict(config.get("train"))
  training = {k: train[k] for k in TRAINING_KEYS if k in train}
  training.update({k: model.pop(k) for k in TRAINING_KEYS if k in model})
  return model, training


def from_config(config: Any) -> TwoTower:
  """The TwoTower of a run config (config.model + config.train; an older mixed config.model too: split_config)."""
  model, training = split_config(config)
  return TwoTower(**model, **training)
