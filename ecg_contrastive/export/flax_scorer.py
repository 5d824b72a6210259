"""Zero-shot scoring with the JAX checkpoint in float32: the reference the export is held to."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ecg_contrastive.checkpoints import Inference
from ecg_contrastive.models.ood import features_and_embeddings
from ecg_contrastive.models.two_tower import TwoTower


class FlaxScorer:
  """Embeds ECGs and scores them against the projected label embeddings, computing in float32.

  The training compute dtype (e.g. bfloat16) is replaced by float32 so that this reference and
  the float32 PyTorch export are the same function of the same parameters.
  """

  def __init__(self, inference: Inference):
    self.model = inference.model.clone(dtype=jnp.float32)
    self.variables = inference.variables
    self.labels = inference.labels
    self.lead_mask = bool(getattr(self.model, "lead_mask", False))
    params = {"params": self.variables["params"]}
    label_emb = self.model.apply(
      params, inference.label_text_embeddings, method=TwoTower.encode_text
    )
    self.label_embeddings = np.asarray(label_emb, np.float32)  # (num_labels, embed_dim), unit-norm
    self.scale = float(self.model.apply(params, method=TwoTower.scale))
    self._encode = jax.jit(
      lambda variables, ecg: self.model.apply(variables, ecg, method=features_and_embeddings)
    )

  def encode(self, ecg_mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (B, 5000, 12) mV, channels-last -> (pooled features (B, 8 * width), unit-norm embeddings
    (B, embed_dim)), float32."""
    features, embeddings = self._encode(self.variables, jnp.asarray(ecg_mv, jnp.float32))
    return np.asarray(features), np.asarray(embeddings)

  def embed(self, ecg_mv: np.ndarray) -> np.ndarray:
    """float32 (B, 5000, 12) mV, channels-last -> float32 (B, embed_dim) unit-norm embeddings."""
    return self.encode(ecg_mv)[1]

  def scores(self, ecg_mv: np.ndarray) -> np.ndarray:
    """float32 (B, 5000, 12) mV -> zero-shot scores (B, num_labels) = scale * cosine similarity."""
    return self.scores_of(self.embed(ecg_mv))

  def scores_of(self, embeddings: np.ndarray) -> np.ndarray:
    """(B, embed_dim) unit-norm embeddings -> zero-shot scores (B, num_labels)."""
    return self.scale * embeddings @ self.label_embeddings.T
