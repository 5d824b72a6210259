"""Out-of-distribution (OOD) score: how unlike the training data an ECG is, seen by the model's own features.

  features    the ECG tower's pooled features (8 x width numbers, before the projection head)
  score       the Mahalanobis distance of the features from the training records' mean, under their covariance
              (shrunk towards its average variance), divided by sqrt(number of features): about 1 for a typical
              training ECG, larger the more unlike them
  percentile  the share (%) of validation-split records whose own score is strictly below it
  unfamiliar  percentile above the threshold percentile (default 99: what 1% of validation records exceed)

Why: a model only ever shown 12-lead 500 Hz ECGs still returns confident findings for one lead in a 12-lead frame,
a wearable's recording or plain noise; the score says when its input is unlike what it was trained on.
Why these features and this distance: measured on a tiny model (configs/default.py:tiny trained 150 steps of 64 on
synthetic_ecg_ja/small; 64 test records, each made unfamiliar; share above the validation records' 99th
percentile), the suggested 1 - mean cosine similarity to the 10 nearest training embeddings of the joint space
flagged 0-12% of noise, baseline wander and random walks (the contrastive head maps them near some label's
cluster), the Mahalanobis distance of the pooled features 55-75%; neither flagged one lead in a 12-lead frame or
a time-reversed ECG (the lead checks name missing and flat leads). Numbers: docs/export.md.

The reference is two files, in a training workdir (written at the end of training by evals/ood.py, or by
`python -m ecg_contrastive.main --mode ood --workdir RUN --config CONFIG`) and copied into the export folder:
  ood.safetensors  "mean" float64 (F,), "precision" float64 (F, F) (the inverse of the shrunk covariance),
                   "validation_scores" float32 (M,) sorted
  ood.json         threshold percentile, the checkpoint step it belongs to, dataset, splits, sizes, quantiles
The exported modeling_ecg.py repeats `mahalanobis_score` and `percentile_of` in torch (parity tested). Here: the
math, the file format (as bytes: callers read and write through paths.py) and the features of a TwoTower; the
records come from evals/ood.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp
import numpy as np

WEIGHTS, META = "ood.safetensors", "ood.json"
BANK_SIZE = (
  4096  # training records that give the mean and covariance: a fixed random subset (seed BANK_SEED)
)
CALIBRATION_SIZE = 4096  # validation records scored for the percentiles (all of them up to this)
PERCENTILE = 99.0
# covariance + SHRINKAGE * (its mean variance) * I: dead or collinear features stay finite (0.01 flagged fewer
# noise records of the measurement above, 0.75 -> 0.33; 1e-4 the same as 1e-3)
SHRINKAGE = 1e-3
BANK_SEED = 0
QUANTILES = (
  50,
  90,
  95,
  99,
  99.9,
)  # stored in ood.json for a reader of the file (the code uses every score)


def mahalanobis_score(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
  """(B, F) features -> (B,) float64 sqrt((x - mean) precision (x - mean) / F)."""
  d = np.asarray(features, np.float64) - mean
  return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, precision, d), 0.0) / len(mean))


def fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N, F) training features -> (mean (F,), precision (F, F)) in float64, the covariance shrunk (SHRINKAGE)."""
  x = np.asarray(features, np.float64)
  mean = x.mean(axis=0)
  cov = np.cov(x, rowvar=False).reshape(len(mean), len(mean))
  cov += SHRINKAGE * max(float(np.trace(cov)) / len(mean), 1e-12) * np.eye(len(mean))
  precision = np.linalg.inv(cov)
  return mean, (precision + precision.T) / 2


def percentile_of(scores: np.ndarray, validation_scores: np.ndarray) -> np.ndarray:
  """(B,) scores -> (B,) % of the sorted validation scores strictly below each."""
  below = np.searchsorted(validation_scores, scores, side="left")
  return 100.0 * below / len(validation_scores)


def share_text(percentile: float, validation_records: int) -> str:
  """'above 97.5% of validation records', or 'above all 2000 validation records'."""
  if percentile >= 100.0:
    return f"above all {validation_records} validation records"
  return f"above {percentile:.1f}% of validation records"


def warning_text(score: float, percentile: float, validation_records: int) -> str:
  """The plain warning of an unfamiliar ECG."""
  return (
    f"this ECG is unlike the training data (OOD score {score:.2f}, "
    f"{share_text(percentile, validation_records)}): treat the findings with caution"
  )


@dataclasses.dataclass
class Reference:
  """The training features' mean and precision, and the validation records' scores."""

  mean: np.ndarray  # float64 (F,) training features' mean
  precision: np.ndarray  # float64 (F, F) inverse of their shrunk covariance
  validation_scores: np.ndarray  # float32 (M,), sorted
  meta: dict  # ood.json: percentile, step, dataset, splits, sizes, quantiles

  def scores(self, features: np.ndarray) -> np.ndarray:
    """(B, F) pooled features -> (B,) OOD scores."""
    return mahalanobis_score(features, self.mean, self.precision)

  def assess(self, features: np.ndarray, percentile: float | None = None) -> list[dict]:
    """(B, F) pooled features -> per record {"score", "validation_records", "percentile", "unfamiliar",
    "warning"} (warning None when familiar); percentile: the threshold (default the reference's own, e.g. 99)."""
    threshold = self.meta["percentile"] if percentile is None else percentile
    scores = self.scores(features)
    pcts = percentile_of(scores, self.validation_scores)
    return [
      {
        "score": float(s),
        "validation_records": len(self.validation_scores),
        "percentile": float(p),
        "unfamiliar": bool(p > threshold),
        "warning": warning_text(s, p, len(self.validation_scores)) if p > threshold else None,
      }
      for s, p in zip(scores, pcts)
    ]


def make_reference(
  train_features: np.ndarray, validation_features: np.ndarray, percentile: float, **meta: Any
) -> Reference:
  """The reference from training and validation records' pooled features; meta: provenance for ood.json."""
  mean, precision = fit(train_features)
  scores = np.sort(mahalanobis_score(validation_features, mean, precision)).astype(np.float32)
  return Reference(
    mean,
    precision,
    scores,
    {
      "format_version": 1,
      "percentile": float(percentile),
      "feature_dim": len(mean),
      "bank_size": len(train_features),
      "calibration_size": len(scores),
      "threshold_score": float(np.percentile(scores, percentile)),
      "validation_quantiles": {f"{q:g}": float(np.percentile(scores, q)) for q in QUANTILES},
      "score": "sqrt(Mahalanobis^2 / feature_dim) of the ECG tower's pooled features from the training "
      f"records' mean, covariance shrunk by {SHRINKAGE:g} x its mean variance",
      **meta,
    },
  )


def to_bytes(reference: Reference) -> dict[str, bytes]:
  """{WEIGHTS: safetensors bytes, META: ood.json bytes} of a reference."""
  from safetensors.numpy import save

  weights = save(
    {
      "mean": np.ascontiguousarray(reference.mean, np.float64),
      "precision": np.ascontiguousarray(reference.precision, np.float64),
      "validation_scores": np.ascontiguousarray(reference.validation_scores, np.float32),
    }
  )
  return {WEIGHTS: weights, META: json.dumps(reference.meta, ensure_ascii=False, indent=1).encode()}


def from_bytes(weights: bytes, meta: bytes | str) -> Reference:
  """The reference of ood.safetensors and ood.json contents."""
  from safetensors.numpy import load

  tensors = load(weights)
  return Reference(
    tensors["mean"], tensors["precision"], tensors["validation_scores"], json.loads(meta)
  )


def no_reference_note(where: str) -> str:
  return (
    f"no OOD reference in {where} (ood.json): predictions carry no OOD score; compute it with "
    "`python -m ecg_contrastive.main --mode ood --workdir RUN --config CONFIG` (then export again)"
  )


def features_and_embeddings(model, ecg_mv: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """For TwoTower.apply(..., method=features_and_embeddings): encode_ecg that also returns the pooled features
  before the projection head (the OOD score's): (B, 8 * width), (B, embed_dim) unit-norm."""
  from ecg_contrastive.models.two_tower import l2_normalize, with_presence

  if model.lead_mask:
    ecg_mv = with_presence(ecg_mv)
  features = model.ecg(ecg_mv, False)
  return features, l2_normalize(model.ecg_head(features))
