"""Recording noise: baseline wander, muscle (EMG) noise and power-line interference (50 or 60 Hz).

Noise is added to the 8 independent leads (I, II, V1..V6) before the other limb leads are
derived, as it would be on the electrodes, so the limb-lead identities still hold.
Random noise comes from small per-chunk pools read at random offsets: drawing 40k normal
numbers per record would cost more than rendering the whole ECG.

Real recordings are rarely clean, and readers name an artefact only when it gets in the way. So
most records carry some unlabelled artefact (plan.Plan draws it: WANDER_SHARE with respiratory
wander and slower drift, MAINS_SHARE with small 50/60 Hz, EMG_SHARE with some muscle noise), and
the quality findings (基線の動揺 / 交流障害 / 筋電図混入, phenotype.EFFECTS) draw well above it.
Measured on the stored leads (tests/test_synth.py, the SEVERE_* levels below): unlabelled records
stay under the level, labelled ones above it.
"""

from __future__ import annotations

import numpy as np
import scipy.signal

from ecg_contrastive.ecg.signal import SAMPLE_RATE

_POOL_LEN = 20000  # samples (40 s) per pool; each record reads a random 10 s stretch
WANDER_SHARE, MAINS_SHARE, EMG_SHARE = 0.85, 0.6, 0.35  # records with some unlabelled artefact
# The level a reader names, as tests/test_synth.py measures it on the stored int16 leads:
# 基線の動揺: p-p of the PR-segment level over the beats, worst of I, II, V1-V6;
# 交流障害: amplitude of the 50 / 60 Hz line in lead I;
# 筋電図混入: rms above 100 Hz in V5 (paced records aside: their spikes are broadband).
SEVERE_WANDER_PP_MV, SEVERE_MAINS_UV, SEVERE_EMG_UV = 0.8, 30.0, 20.0


def _wander_pool(rng: np.random.Generator) -> np.ndarray:
  """(L, 8) unit-rms drift below ~0.5 Hz (respiration and electrode motion), one lane per lead."""
  coarse_rate = 10.0
  coarse = rng.standard_normal((int(_POOL_LEN / SAMPLE_RATE * coarse_rate) + 1, 8))
  b, a = scipy.signal.butter(2, 0.4 / (coarse_rate / 2))
  coarse = scipy.signal.filtfilt(b, a, coarse, axis=0)
  t = np.arange(_POOL_LEN) / SAMPLE_RATE * coarse_rate
  fine = np.stack([np.interp(t, np.arange(len(coarse)), lane) for lane in coarse.T], axis=1)
  return (fine / fine.std(axis=0)).astype(np.float32)


def _emg_pool(rng: np.random.Generator) -> np.ndarray:
  """(L, 8) unit-rms broadband muscle noise (white, lightly smoothed) in bursts."""
  white = rng.standard_normal((_POOL_LEN + 1, 8), dtype=np.float32)
  noise = white[1:] + white[:-1]
  noise *= (
    0.6 + 0.4 * np.sin(2 * np.pi * np.arange(_POOL_LEN)[:, None] / rng.uniform(800, 2500, 8))
  ).astype(np.float32)
  return noise / noise.std(axis=0)


def make_pools(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(wander, EMG) noise pools, each (L, 8) float32, shared by the records of a chunk."""
  return _wander_pool(rng), _emg_pool(rng)


def add_noise(
  rng: np.random.Generator,
  leads: np.ndarray,
  pools: tuple[np.ndarray, np.ndarray],
  wander_mv: np.ndarray,
  emg_mv: np.ndarray,
  mains_mv: np.ndarray,
  mains_hz: np.ndarray,
  breath_hz: np.ndarray,
) -> None:
  """Adds noise in place to independent leads (n, T, 8) mV. Amplitudes (n,): wander ~ peak, EMG and mains rms.

  Wander is half slow drift (the pool) and half respiration: a sine at breath_hz (n,) whose size and
  sign differ per lead, as the electrodes move with the chest.
  """
  n, length, _ = leads.shape
  wander, emg = pools
  scale = rng.uniform(0.5, 1.5, (2, n, 8)).astype(np.float32)
  scale[0] *= (wander_mv / 4)[:, None]
  scale[1] = emg_mv[:, None] * rng.uniform(0.8, 1.2, (n, 8))
  starts = rng.integers(0, _POOL_LEN - length, (2, n))
  t = np.arange(length) / SAMPLE_RATE
  breath = (wander_mv / 2)[:, None] * rng.uniform(-1, 1, (n, 8))
  breath_phase = rng.uniform(0, 2 * np.pi, n)
  for i in range(n):
    leads[i] += wander[starts[0, i] : starts[0, i] + length] * scale[0, i]
    leads[i] += emg[starts[1, i] : starts[1, i] + length] * scale[1, i]
    wave = np.sin(2 * np.pi * breath_hz[i] * t + breath_phase[i]).astype(np.float32)
    leads[i] += wave[:, None] * breath[i].astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi, (n, 8))
  coef = np.stack([np.cos(phase), np.sin(phase)], axis=1) * (mains_mv * np.sqrt(2))[:, None, None]
  coef *= rng.uniform(0.5, 1.5, (n, 1, 8))
  for hz in np.unique(mains_hz):
    sel = np.flatnonzero(mains_hz == hz)
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1).astype(
      np.float32
    )
    leads[sel] += np.matmul(basis[None], coef[sel].astype(np.float32))
