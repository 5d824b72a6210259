"""Per-record wave morphology: the dipole wave table of a normal heart, and voltage calibration.

Timing convention: atrial waves are placed relative to the P onset, ventricular waves relative
to the QRS onset, in ms; QT-scaled waves (dipole.QT_SCALED) store offset and width as fractions
of the beat's QT interval, so repolarisation follows the rate (Bazett) beat by beat.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ecg_contrastive.data.synthetic import dipole
from ecg_contrastive.data.synthetic.dipole import W, frontal
from ecg_contrastive.ecg.signal import SAMPLE_RATE, from_independent

K = len(dipole.WAVES)
MS_PER_SAMPLE = 1000 / SAMPLE_RATE
NORMAL, LOW, HIGH = 0, 1, 2  # voltage classes
CHEST_PROFILE = np.array([1.6, 2.2, 2.2, 2.0, 1.6, 1.35])  # V2-V4 sit closest to the heart


@dataclasses.dataclass
class Heart:
  """Morphology of n records; every array has leading dimension n."""

  axis: np.ndarray  # (n,) frontal angle of the main R vector, degrees
  r_z: np.ndarray  # (n,) anterior component of the R vector (sets the precordial transition)
  qtc: np.ndarray  # (n,) corrected QT, ms
  offset: np.ndarray  # (n, K) wave centres: ms after the P / QRS onset, or fraction of QT
  sigma: np.ndarray  # (n, K) wave widths (Gaussian sd), same units as offset
  vector: np.ndarray  # (n, K, 3) dipole vector of each wave, mV
  atrial: np.ndarray  # (n, 3) dipole of continuous atrial activity (fibrillation / flutter), mV
  limb_gain: np.ndarray  # (n,) gain of I and II
  chest_gain: np.ndarray  # (n, 6) gains of V1..V6
  rotation: np.ndarray  # (n,) degrees about the long axis, clockwise positive (dipole.lead_matrix)
  chest_leads: (
    np.ndarray
  )  # (n, 6, 3) V1..V6 lead vectors: where the electrodes sat (dipole.chest_leads)
  voltage: np.ndarray  # (n,) target voltage class: NORMAL, LOW or HIGH
  peak: np.ndarray  # (n, K) target peak |voltage| of a wave on the 12 leads, mV (NaN: no target)
  arms_swapped: np.ndarray  # (n,) bool: left/right arm electrodes exchanged

  def __len__(self) -> int:
    return len(self.axis)


def draw_patients(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  """Stable per-patient traits (n patients): axis, transition, wave sizes, PR, QTc, base rate, gains."""
  u = rng.uniform
  return dict(
    # Normal axis over its whole range: measured about -30..+90 (Q, S and the torso's tilt widen -32..+66).
    axis=np.clip(rng.normal(45, 27, n), -30, 64),
    r_z=u(-0.6, -0.25, n),
    r_mag=u(1.0, 1.7, n),
    q_mag=u(0.08, 0.22, n),
    s_mag=u(0.2, 0.5, n),
    width=u(0.9, 1.1, n),
    t_ratio=u(0.15, 0.35, n),
    t_z=u(0.1, 0.45, n),
    p_mag=u(0.06, 0.16, n),
    p_split=u(
      -8, 6, n
    ),  # ms: left-atrial P component earlier / later (rounder or flatter, bifid P)
    pr=u(135, 190, n),
    qtc=u(380, 440, n),
    hr=u(52, 96, n),
    chest_gain=CHEST_PROFILE * u(0.88, 1.12, (n, 6)),
    tilt=u(-10, 10, n),  # degrees: heart in its torso (rotate_torso)
    turn=u(-8, 8, n),
  )


def normal_hearts(
  rng: np.random.Generator, patients: dict[str, np.ndarray], patient_of: np.ndarray
) -> Heart:
  """A normal sinus heart for each record, from its patient's traits plus day-to-day jitter."""
  p = {k: v[patient_of] for k, v in patients.items()}
  n = len(patient_of)
  axis = np.clip(p["axis"] + rng.normal(0, 3, n), -32, 66)
  w = p["width"]
  offset = np.zeros((n, K))
  sigma = np.ones((n, K))
  vector = np.zeros((n, K, 3))
  for name, off, sd in (("P1", 30, 13), ("P2", 58, 15), ("PX", 40, 16)):
    offset[:, W[name]], sigma[:, W[name]] = off, sd
  for name, off, sd in (
    ("Q", 12, 6),
    ("R", 40, 10),
    ("S", 66, 9),
    ("R2", 100, 18),
    ("DELTA", 25, 16),
  ):
    offset[:, W[name]], sigma[:, W[name]] = off * w, sd * w
  for name, off, sd in (
    ("ST", 0.40, 0.13),
    ("T1", 0.60, 0.12),
    ("T2", 0.75, 0.11),
    ("U", 1.12, 0.08),
    ("VT", 0.80, 0.13),
  ):
    offset[:, W[name]], sigma[:, W[name]] = off, sd
  for name, off, sd in (
    ("VQ1", 45, 24),
    ("VQ2", 108, 26),
    ("SPIKE", 0, 1.4),
    ("VQ3", 45, 24),
    ("VQ4", 108, 26),
    ("VT2", 0.80, 0.13),
  ):
    offset[:, W[name]], sigma[:, W[name]] = off, sd
  offset[:, W["P2"]] += p["p_split"]
  vector[:, W["P1"]] = frontal(rng.uniform(45, 80, n), 0.45) * p["p_mag"][:, None]
  vector[:, W["P2"]] = (
    frontal(rng.uniform(0, 45, n), -0.5) * (rng.uniform(0.6, 1.0, n) * p["p_mag"])[:, None]
  )
  vector[:, W["PX"]] = (
    frontal(rng.uniform(-100, -60, n), rng.uniform(-0.3, 0.4, n)) * p["p_mag"][:, None]
  )
  vector[:, W["Q"]] = frontal(axis + 150, 0.6) * p["q_mag"][:, None]
  vector[:, W["R"]] = frontal(axis, p["r_z"]) * p["r_mag"][:, None]
  vector[:, W["S"]] = frontal(axis + rng.uniform(150, 210, n), -0.55) * p["s_mag"][:, None]
  t_mag = p["t_ratio"] * p["r_mag"]
  t_dir = frontal(np.clip(axis, 15, 65) + rng.normal(0, 8, n), p["t_z"])
  vector[:, W["T1"]] = t_dir * (0.35 * t_mag)[:, None]
  vector[:, W["T2"]] = t_dir * (0.8 * t_mag)[:, None]
  vector[:, W["U"]] = t_dir * (0.06 * t_mag)[:, None]
  return Heart(
    axis=axis,
    r_z=p["r_z"] + rng.normal(0, 0.03, n),
    qtc=p["qtc"] + rng.normal(0, 8, n),
    offset=offset,
    sigma=sigma,
    vector=vector,
    atrial=np.zeros((n, 3)),
    limb_gain=rng.uniform(0.85, 1.15, n),
    chest_gain=p["chest_gain"] * rng.uniform(0.95, 1.05, (n, 6)),
    rotation=rng.uniform(-8, 8, n),
    chest_leads=electrode_placement(rng, n),
    voltage=np.zeros(n, int),
    peak=np.full((n, K), np.nan),
    arms_swapped=np.zeros(n, bool),
  )


def electrode_placement(rng: np.random.Generator, n: int) -> np.ndarray:
  """(n, 6, 3) chest lead vectors of n recordings: the row of electrodes an interspace high (20%) or low
  (20%), shifted around the chest together (sd 4 degrees) and each on its own (sd 3 degrees)."""
  interspace = rng.choice([-1.0, 0.0, 1.0], n, p=[0.2, 0.6, 0.2])
  height = dipole.CHEST_HEIGHT + 0.15 * interspace + rng.normal(0, 0.03, n)
  shift = rng.normal(0, 4, (n, 1)) + rng.normal(0, 3, (n, 6))
  return dipole.chest_leads(shift, height[:, None])


def rotate_torso(heart: Heart, tilt: np.ndarray, turn: np.ndarray) -> None:
  """Turns every dipole of each record (the heart within its torso): `tilt` (n,) degrees about the
  left-right axis (apex forward / back) and `turn` (n,) about the long axis, before the chest-lead
  rotation. Never about the front-to-back axis: that is the frontal QRS axis, which findings set."""
  for field in ("vector", "atrial"):
    v = getattr(heart, field)
    shape = (-1,) + (1,) * (v.ndim - 2)
    a, b = np.deg2rad(tilt).reshape(shape), np.deg2rad(turn).reshape(shape)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    y, z = y * np.cos(a) - z * np.sin(a), y * np.sin(a) + z * np.cos(a)
    x, z = x * np.cos(b) + z * np.sin(b), z * np.cos(b) - x * np.sin(b)
    setattr(heart, field, np.stack([x, y, z], axis=-1))


def dominant_qrs(heart: Heart, ventricular: np.ndarray, length: int = 300) -> np.ndarray:
  """QRS of each record's dominant beat, (n, length, 12) mV at 500 Hz, onset at sample 50.

  ventricular: (n,) bool, True where the dominant beat is ventricular (VT, paced, wide escape).
  """
  n = len(heart)
  conducted = np.array(dipole.QRS_WAVES)
  ectopic = np.array([W["VQ1"], W["VQ2"]])
  rec = np.concatenate(
    [
      np.repeat(np.flatnonzero(~ventricular), len(conducted)),
      np.repeat(np.flatnonzero(ventricular), len(ectopic)),
    ]
  )
  wave = np.concatenate(
    [np.tile(conducted, (~ventricular).sum()), np.tile(ectopic, ventricular.sum())]
  )
  centre = 50 + heart.offset[rec, wave] / MS_PER_SAMPLE
  sigma = heart.sigma[rec, wave] / MS_PER_SAMPLE
  leads = dipole.render(
    n,
    length,
    rec,
    wave,
    centre,
    sigma,
    np.ones(len(rec)),
    heart.vector,
    gains(heart),
    heart.rotation,
    heart.chest_leads,
  )
  return from_independent(leads)


def gains(heart: Heart) -> np.ndarray:
  """(n, 8) gains of I, II, V1..V6."""
  return np.concatenate([np.repeat(heart.limb_gain[:, None], 2, axis=1), heart.chest_gain], axis=1)


def calibrate_voltage(rng: np.random.Generator, heart: Heart, ventricular: np.ndarray) -> None:
  """Sets lead gains (and, for HIGH, the QRS size) so each record meets its voltage class on its dominant QRS.

  NORMAL: max limb peak-to-peak 0.8-1.7 mV; max(SV1 + RV5, max chest p-p) 1.7-3.0 mV.
  LOW:    every limb lead < 0.5 mV and every chest lead < 1.0 mV peak-to-peak (0.28-0.45 / 0.55-0.9).
  HIGH:   NORMAL gains, then the QRS vectors grow until SV1 + RV5 is 4.2-6.0 mV (criterion >= 3.5 mV,
          Sokolow-Lyon); T waves keep their size.
  Then every wave with a heart.peak target is scaled to reach it on its largest lead.
  """
  qrs = dominant_qrs(heart, ventricular)
  ptp = qrs.max(axis=1) - qrs.min(axis=1)  # (n, 12)
  limb, chest = ptp[:, :6].max(axis=1), ptp[:, 6:].max(axis=1)
  sokolow = np.maximum(-qrs[:, :, 6].min(axis=1), 0) + np.maximum(qrs[:, :, 10].max(axis=1), 0)
  n = len(heart)
  low, high = heart.voltage == LOW, heart.voltage == HIGH
  limb_target = np.where(low, rng.uniform(0.28, 0.45, n), rng.uniform(0.8, 1.7, n))
  chest_scale = np.where(
    low, rng.uniform(0.55, 0.9, n) / chest, rng.uniform(1.7, 3.0, n) / np.maximum(sokolow, chest)
  )
  heart.limb_gain = heart.limb_gain * limb_target / limb
  heart.chest_gain = heart.chest_gain * chest_scale[:, None]
  grow = np.where(high, rng.uniform(4.2, 6.0, n) / np.maximum(sokolow * chest_scale, 1e-3), 1.0)
  heart.vector[:, list(dipole.QRS_WAVES)] *= grow[:, None, None]
  for wave in np.flatnonzero(np.isfinite(heart.peak).any(axis=0)):
    rows = np.flatnonzero(np.isfinite(heart.peak[:, wave]))
    volts = dipole.lead_matrix(
      heart.vector[rows, wave][:, None],
      gains(heart)[rows],
      heart.rotation[rows],
      heart.chest_leads[rows],
    )[:, 0]
    peak = np.abs(from_independent(volts)).max(axis=-1)
    heart.vector[rows, wave] *= (heart.peak[rows, wave] / np.maximum(peak, 1e-9))[:, None]
