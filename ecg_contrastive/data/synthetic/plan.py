"""The plan of a chunk of records that finding effects change, and the helpers the effects share."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ecg_contrastive.data.synthetic import noise
from ecg_contrastive.data.synthetic import rhythm as rh
from ecg_contrastive.data.synthetic.dipole import W, frontal
from ecg_contrastive.data.synthetic.morphology import Heart


class Plan:
  """Everything the renderer needs about n records, mutated by the finding effects: the heart
  (morphology.Heart), the rhythm (rhythm.Rhythm), noise amplitudes (n,) and, per record, the leads
  where a finding shows (`where`, for the report)."""

  def __init__(
    self, heart: Heart, rhythm: rh.Rhythm, labels: list[list[str]], rng: np.random.Generator
  ):
    n = len(heart)
    self.heart, self.rhythm, self.labels = heart, rhythm, labels
    # Unlabelled artefacts, as most real recordings carry them (noise.py states the levels a reader
    # would name; the quality findings in phenotype.EFFECTS draw above them).
    self.wander = np.where(
      rng.random(n) < noise.WANDER_SHARE, rng.uniform(0.05, 0.3, n), rng.uniform(0.005, 0.05, n)
    )  # mV
    self.breath = rng.uniform(0.12, 0.4, n)  # Hz, respiration behind the wander
    self.emg = np.where(
      rng.random(n) < noise.EMG_SHARE, rng.uniform(0.008, 0.016, n), rng.uniform(0.002, 0.008, n)
    )  # mV rms
    self.mains = np.where(
      rng.random(n) < noise.MAINS_SHARE, rng.uniform(0.003, 0.013, n), rng.uniform(0.0, 0.003, n)
    )  # mV rms
    self.mains_hz = rng.choice([50.0, 60.0], n)  # eastern / western Japan
    self.where: list[dict[str, str]] = [{} for _ in range(n)]


Effect = Callable[[np.random.Generator, np.ndarray, Plan], None]


def unit(v: np.ndarray) -> np.ndarray:
  """Vectors (..., 3) scaled to length 1."""
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def mag(h: Heart, idx: np.ndarray, wave: str) -> np.ndarray:
  """(m, 1) length of `wave`'s dipole vector in records idx."""
  return np.linalg.norm(h.vector[idx, W[wave]], axis=-1)[:, None]


def set_t(h: Heart, idx: np.ndarray, direction: np.ndarray, size: np.ndarray) -> None:
  """T (two components) and a small U along unit `direction` (m, 3), with overall size (m,) mV."""
  h.vector[idx, W["T1"]] = direction * (0.35 * size)[:, None]
  h.vector[idx, W["T2"]] = direction * (0.8 * size)[:, None]
  h.vector[idx, W["U"]] = direction * (0.06 * size)[:, None]


def reorient(h: Heart, idx: np.ndarray, turn: np.ndarray | float = 0.0) -> None:
  """Re-aims Q, R and T (keeping its anterior part) after h.axis / h.r_z changed; S turns by `turn` degrees."""
  h.vector[idx, W["Q"]] = frontal(h.axis[idx] + 150, 0.6) * mag(h, idx, "Q")
  h.vector[idx, W["R"]] = frontal(h.axis[idx], h.r_z[idx]) * mag(h, idx, "R")
  s, s_mag = h.vector[idx, W["S"]], mag(h, idx, "S")
  s_angle = np.degrees(np.arctan2(s[:, 1], s[:, 0]))
  h.vector[idx, W["S"]] = frontal(s_angle + turn, s[:, 2] / np.maximum(s_mag[:, 0], 1e-9)) * s_mag
  t_mag = np.linalg.norm(h.vector[idx, W["T2"]], axis=-1) / 0.8
  t_z = h.vector[idx, W["T2"], 2] / np.maximum(0.8 * t_mag, 1e-9)
  set_t(h, idx, frontal(np.clip(h.axis[idx], 10, 75), t_z), t_mag)


def rhythm_kind(kind: int, lo: float, hi: float) -> Effect:
  """Sets the records' rhythm to `kind` at a rate drawn in [lo, hi) per minute."""

  def effect(rng, idx, plan):
    plan.rhythm.kind[idx] = kind
    plan.rhythm.rate[idx] = rng.uniform(lo, hi, len(idx))

  return effect


def where(text: str, finding: str) -> Effect:
  """Records the leads (`text`, e.g. "II, III, aVF") where `finding` shows, for the report."""

  def effect(rng, idx, plan):
    for i in idx:
      plan.where[i][finding] = text

  return effect


def draw(path: str, lo: float, hi: float) -> Effect:
  """Draws plan.<path> (e.g. 'rhythm.pr', 'emg') uniformly in [lo, hi) for the records."""

  def effect(rng, idx, plan):
    *owners, attr = path.split(".")
    obj = plan
    for owner in owners:
      obj = getattr(obj, owner)
    getattr(obj, attr)[idx] = rng.uniform(lo, hi, len(idx))

  return effect
