"""The cardiac dipole: wave catalogue, Gaussian rendering of wave events, projection onto the leads.

A beat is a sum of Gaussian waves, each a 3-D dipole vector (x: patient's left, y: inferior,
z: anterior, in mV) times a Gaussian in time. Leads are projections of the dipole onto lead
vectors: I and II in the frontal plane, V1..V6 in the horizontal plane. III, aVR, aVL and aVF
are then derived from I and II (signal.from_independent), so their identities hold exactly.
"""

from __future__ import annotations

import numpy as np

# Wave types of the dipole model. P1/P2: right/left atrial; PX: ectopic or retrograde P;
# Q R S R2 DELTA: conducted QRS (R2 = late terminal forces, DELTA = pre-excitation);
# ST T1 T2 U: repolarisation; VQ1 VQ2 VT: ventricular ectopic / paced QRS and T; SPIKE: pacing;
# VQ3 VQ4 VT2: a second ventricular focus (multifocal premature beats).
WAVES = (
  "P1",
  "P2",
  "PX",
  "Q",
  "R",
  "S",
  "R2",
  "DELTA",
  "ST",
  "T1",
  "T2",
  "U",
  "VQ1",
  "VQ2",
  "VT",
  "SPIKE",
  "VQ3",
  "VQ4",
  "VT2",
)
W = {name: i for i, name in enumerate(WAVES)}
QRS_WAVES = tuple(W[n] for n in ("Q", "R", "S", "R2", "DELTA"))
QT_SCALED = np.array(
  [n in ("ST", "T1", "T2", "U", "VT", "VT2") for n in WAVES]
)  # timing in units of QT

# Beat kinds and the waves each one fires.
SINUS_P, ECTOPIC_P = 0, 1
CONDUCTED, ECTOPIC_V, PACED, ECTOPIC_V2 = 0, 1, 2, 3  # ECTOPIC_V2: from the second focus
ATRIAL_WAVES = {SINUS_P: (W["P1"], W["P2"]), ECTOPIC_P: (W["PX"],)}
VENTRICULAR_WAVES = {
  CONDUCTED: tuple(W[n] for n in ("Q", "R", "S", "R2", "DELTA", "ST", "T1", "T2", "U")),
  ECTOPIC_V: (W["VQ1"], W["VQ2"], W["VT"]),
  PACED: (W["SPIKE"], W["VQ1"], W["VQ2"], W["VT"]),
  ECTOPIC_V2: (W["VQ3"], W["VQ4"], W["VT2"]),
}


def frontal(angle_deg: np.ndarray, z: np.ndarray) -> np.ndarray:
  """Unit vectors (n, 3) with frontal-plane angle `angle_deg` (0 = lead I, +90 = aVF) and anterior part z."""
  a = np.deg2rad(angle_deg)
  r = np.sqrt(np.clip(1.0 - np.square(z), 0.0, 1.0))
  return np.stack([r * np.cos(a), r * np.sin(a), np.broadcast_to(z, np.shape(a))], axis=-1)


CHEST_ANGLES = np.array(
  [120.0, 95.0, 75.0, 55.0, 30.0, 0.0]
)  # V1..V6, degrees in the horizontal plane
CHEST_HEIGHT = 0.12  # inferior component of a chest lead vector at the 4th-5th interspace


def chest_leads(angle_shift: np.ndarray, height: np.ndarray) -> np.ndarray:
  """(..., 6, 3) V1..V6 lead vectors with electrodes moved by angle_shift (..., 6) degrees around the chest
  and placed at `height` (..., 1) (CHEST_HEIGHT: textbook; smaller: an interspace high, sees more from above)."""
  a = np.deg2rad(CHEST_ANGLES + angle_shift)
  return np.stack([np.cos(a), np.broadcast_to(height, a.shape), np.sin(a)], axis=-1)


def _lead_vectors() -> np.ndarray:
  """(8, 3): I, II (frontal) and V1..V6 (horizontal plane, V6 lateral, V1 right parasternal)."""
  frontal_leads = [[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]]
  chest = chest_leads(np.zeros(6), np.array([CHEST_HEIGHT]))
  return np.concatenate([frontal_leads, chest]).astype(np.float32)


LEAD_VECTORS = _lead_vectors()


def lead_matrix(
  vectors: np.ndarray, gains: np.ndarray, rotation: np.ndarray, chest: np.ndarray | None = None
) -> np.ndarray:
  """Dipole vectors (n, k, 3) mV -> their voltages on the 8 leads, (n, k, 8), with lead gains (n, 8).

  rotation: (n,) degrees the heart turns about its long axis as the chest leads see it (clockwise
  positive: the precordial transition moves towards V5-V6); the frontal leads are unaffected.
  chest: (n, 6, 3) each record's V1..V6 lead vectors (electrode placement, chest_leads); None: textbook.
  """
  theta = np.deg2rad(rotation)[:, None]
  x, z = vectors[..., 0], vectors[..., 2]
  turned = np.stack(
    [x * np.cos(theta) + z * np.sin(theta), vectors[..., 1], z * np.cos(theta) - x * np.sin(theta)],
    -1,
  )
  volts = np.concatenate(
    [
      np.matmul(vectors, LEAD_VECTORS[:2].T),
      np.matmul(turned, LEAD_VECTORS[2:].T if chest is None else chest.transpose(0, 2, 1)),
    ],
    axis=-1,
  )
  return volts * gains[:, None, :]


def render(
  n: int,
  length: int,
  record: np.ndarray,
  wave: np.ndarray,
  center: np.ndarray,
  sigma: np.ndarray,
  amplitude: np.ndarray,
  vectors: np.ndarray,
  gains: np.ndarray,
  rotation: np.ndarray,
  chest: np.ndarray | None = None,
) -> np.ndarray:
  """Gaussian wave events -> independent leads (n, length, 8) float32 (I, II, V1..V6), mV.

  record, wave: (E,) int, which record and which of WAVES each event is; center, sigma: (E,) in
  samples; amplitude: (E,) scale of the event. vectors: (n, len(WAVES), 3) dipole vector of each
  wave of each record (mV); gains: (n, 8) lead gains; rotation: (n,) degrees, chest: (n, 6, 3) (see lead_matrix).
  Each event is a Gaussian on +-3.5 sigma (windows bucketed in steps of 8 samples), scattered with
  one bincount into a channel per (record, wave) that occurs; channels are then projected at once.
  """
  half = (8 * np.ceil(3.5 * np.asarray(sigma) / 8)).astype(np.int64).clip(min=8)
  inside = (center > -half) & (center < length + half) & (amplitude != 0)
  record, wave, center, sigma, amplitude, half = (
    x[inside] for x in (record, wave, center, sigma, amplitude, half)
  )
  key = record.astype(np.int64) * len(WAVES) + wave
  channels, channel_of = np.unique(key, return_inverse=True)
  channel_record = channels // len(WAVES)
  slot = np.arange(len(channels)) - np.searchsorted(channel_record, channel_record)
  slots = int(slot.max(initial=-1)) + 1
  pad = 2 * int(half.max(initial=0)) + 2
  padded = length + 2 * pad
  row = (channel_record * slots + slot)[channel_of] * padded + pad
  index, weight = [], []
  for h in np.unique(half):
    sel = np.flatnonzero(half == h)
    start = np.rint(center[sel])
    x = (
      np.arange(-h, h + 1, dtype=np.float32)[None, :]
      + (start - center[sel]).astype(np.float32)[:, None]
    )
    x *= (np.sqrt(0.5) / sigma[sel]).astype(np.float32)[:, None]
    np.square(x, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x *= amplitude[sel].astype(np.float32)[:, None]
    index.append(((row[sel] + start.astype(np.int64))[:, None] + np.arange(-h, h + 1)).ravel())
    weight.append(x.ravel())
  if not index:
    return np.zeros((n, length, 8), np.float32)
  buffer = np.bincount(
    np.concatenate(index), weights=np.concatenate(weight), minlength=n * slots * padded
  )
  buffer = buffer.reshape(n, slots, padded)[:, :, pad : pad + length].astype(np.float32)
  volts = np.zeros((n, slots, 3))
  volts[channel_record, slot] = vectors[channel_record, channels % len(WAVES)]
  return np.matmul(
    buffer.transpose(0, 2, 1), lead_matrix(volts, gains, rotation, chest).astype(np.float32)
  )
