"""Finding effects on the dipole waves: axis, rotation, conduction, infarction, hypertrophy, atria,
ST-T and U, voltage class and position (see phenotype.py for the order they run in)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ecg_contrastive.data.synthetic.dipole import W, frontal
from ecg_contrastive.data.synthetic.morphology import HIGH
from ecg_contrastive.data.synthetic.plan import Effect, mag, reorient, set_t, unit, where


def axis(lo: float, hi: float) -> Effect:
  def effect(rng, idx, plan):
    turn = -plan.heart.axis[idx]
    plan.heart.axis[idx] = rng.uniform(lo, hi, len(idx))
    reorient(plan.heart, idx, turn + plan.heart.axis[idx])

  return effect


def rotation(sign: float) -> Effect:
  """Clockwise (+) / counterclockwise (-) rotation: the precordial transition moves to V5-V6 / V1-V2."""

  def effect(rng, idx, plan):
    plan.heart.rotation[idx] = sign * rng.uniform(28, 40, len(idx))

  return effect


def rbbb(rng, idx, plan):
  """Late rightward-anterior forces of varied size, timing and width (QRS ~120-160 ms): rSR', rsR', wide R in V1."""
  h, m = plan.heart, len(idx)
  h.vector[idx, W["R2"]] = frontal(
    rng.uniform(160, 200, m), rng.uniform(0.7, 0.9, m)
  ) * rng.uniform(0.45, 0.8, (m, 1))
  h.offset[idx, W["R2"]] = rng.uniform(92, 108, m)
  h.sigma[idx, W["R2"]] = rng.uniform(13, 20, m)
  t = h.vector[idx, W["T2"]]
  set_t(
    h,
    idx,
    unit(t * [1.0, 1.0, 0.0] + np.linalg.norm(t, axis=1, keepdims=True) * [0, 0, -0.5]),
    np.linalg.norm(t, axis=1) / 0.8,
  )


def lbbb(rng, idx, plan):
  h, m = plan.heart, len(idx)
  normal_axis = h.axis[idx] > -30
  h.axis[idx] = np.where(normal_axis, rng.uniform(-10, 45, m), rng.uniform(-55, -40, m))
  r_mag = mag(h, idx, "R")
  r = frontal(h.axis[idx], rng.uniform(-0.65, -0.5, m)) * r_mag
  h.vector[idx, W["Q"]] = 0.0
  h.vector[idx, W["S"]] = 0.0
  h.vector[idx, W["R"]] = r
  h.vector[idx, W["R2"]] = frontal(h.axis[idx] + rng.uniform(-15, 15, m), -0.7) * (0.8 * r_mag)
  h.offset[idx, W["R"]], h.sigma[idx, W["R"]] = rng.uniform(44, 52, m), rng.uniform(16, 22, m)
  h.offset[idx, W["R2"]], h.sigma[idx, W["R2"]] = rng.uniform(88, 105, m), rng.uniform(17, 24, m)
  set_t(h, idx, -unit(r), rng.uniform(0.3, 0.5, m))
  h.vector[idx, W["ST"]] = -unit(r) * rng.uniform(0.08, 0.15, (m, 1))


def wpw(rng, idx, plan):
  h, m = plan.heart, len(idx)
  plan.rhythm.pr[idx] = rng.uniform(80, 110, m)
  shift = rng.uniform(25, 35, (m, 1))
  for wave in ("Q", "R", "S"):
    h.offset[idx, W[wave]] += shift[:, 0]
  delta = frontal(rng.uniform(20, 70, m), rng.uniform(0.4, 0.7, m))
  h.vector[idx, W["DELTA"]] = delta * rng.uniform(0.35, 0.6, (m, 1))
  h.vector[idx, W["T1"]] = h.vector[idx, W["T1"]] * 0.3 - 0.1 * delta
  h.vector[idx, W["T2"]] = h.vector[idx, W["T2"]] * 0.3 - 0.2 * delta


def q_wave(
  direction: Callable[[np.random.Generator, int], np.ndarray], text: str, finding: str
) -> Effect:
  def effect(rng, idx, plan):
    h, m = plan.heart, len(idx)
    h.vector[idx, W["Q"]] = direction(rng, m) * rng.uniform(0.35, 0.6, (m, 1))
    h.offset[idx, W["Q"]], h.sigma[idx, W["Q"]] = 18, 12
    where(text, finding)(rng, idx, plan)

  return effect


def inferior(rng, m):
  return frontal(rng.uniform(-100, -80, m), rng.uniform(-0.1, 0.1, m))


def posterior(rng, m):
  return unit(np.stack([rng.uniform(0.1, 0.35, m), np.full(m, 0.1), -np.ones(m)], axis=1))


def old_anterior(rng, idx, plan):
  plan.heart.r_z[idx] = np.minimum(plan.heart.r_z[idx], rng.uniform(-0.8, -0.65, len(idx)))
  reorient(plan.heart, idx)
  q_wave(posterior, "V1-V3", "陳旧性前壁中隔梗塞")(rng, idx, plan)


def lvh(rng, idx, plan):
  """High voltage with strain: ST depression and T inversion opposite the tall R (I, aVL, V5-V6), from
  shallow asymmetric T inversion to deep strain."""
  h, m = plan.heart, len(idx)
  h.voltage[idx] = HIGH
  r = unit(h.vector[idx, W["R"]])
  anterior = np.stack([np.zeros(m), np.zeros(m), rng.uniform(0.0, 0.5, m)], axis=1)
  set_t(h, idx, unit(-r + anterior), rng.uniform(0.15, 0.5, m))
  h.vector[idx, W["ST"]] = -r * rng.uniform(0.05, 0.18, (m, 1))
  for wave in ("Q", "R", "S"):
    h.offset[idx, W[wave]] *= 1.08
    h.sigma[idx, W[wave]] *= 1.08


def rvh(rng, idx, plan):
  """Right axis, dominant anterior R (R > S in V1), deep S in V5-V6, T inversion V1-V3."""
  h, m = plan.heart, len(idx)
  turn = -h.axis[idx]
  h.axis[idx] = rng.uniform(110, 150, m)
  h.r_z[idx] = rng.uniform(0.35, 0.6, m)
  reorient(h, idx, turn + h.axis[idx])
  set_t(
    h, idx, frontal(rng.uniform(20, 60, m), rng.uniform(-0.6, -0.45, m)), rng.uniform(0.2, 0.35, m)
  )


def atrial_overload(right: bool) -> Effect:
  def effect(rng, idx, plan):
    h, m = plan.heart, len(idx)
    if right:  # tall peaked P >= 0.25 mV in II
      h.vector[idx, W["P1"]] = unit(h.vector[idx, W["P1"]]) * rng.uniform(0.3, 0.38, (m, 1))
    else:  # broad notched P >= 120 ms, deep terminal negative P in V1
      h.vector[idx, W["P2"]] = frontal(rng.uniform(10, 35, m), -0.7) * rng.uniform(
        0.16, 0.22, (m, 1)
      )
      h.offset[idx, W["P2"]] = 80  # whatever the normal P2 timing was (morphology p_split)
      plan.rhythm.pr[idx] = np.maximum(
        plan.rhythm.pr[idx], rng.uniform(155, 175, m)
      )  # P ends before QRS
      h.sigma[idx, W["P2"]] += 4

  return effect


def st_elevation(rng, idx, plan):
  """Injury current towards the inferior or anterior wall, hyperacute T; with 異常Q波 a Q wave too."""
  h, m = plan.heart, len(idx)
  is_inferior = rng.random(m) < 0.5
  direction = np.where(
    is_inferior[:, None],
    frontal(rng.uniform(80, 110, m), rng.uniform(-0.1, 0.1, m)),
    unit(np.stack([rng.uniform(0.1, 0.4, m), np.zeros(m), np.ones(m)], axis=1)),
  )
  h.vector[idx, W["ST"]] = direction
  h.peak[idx, W["ST"]] = rng.uniform(0.25, 0.5, m)  # mV on the most elevated lead
  h.vector[idx, W["T2"]] += direction * rng.uniform(0.15, 0.3, (m, 1))
  for j, i in enumerate(idx):
    plan.where[i]["ST上昇"] = "II, III, aVF" if is_inferior[j] else "V1-V4"
  with_q = np.array(["異常Q波" in plan.labels[i] for i in idx])
  q = np.where(is_inferior[:, None], inferior(rng, m), posterior(rng, m)) * rng.uniform(
    0.3, 0.5, (m, 1)
  )
  h.vector[idx[with_q], W["Q"]] = q[with_q]
  h.offset[idx[with_q], W["Q"]], h.sigma[idx[with_q], W["Q"]] = 18, 12


def early_repolarisation(rng, idx, plan):
  """A quarter of normal ECGs: J-point / ST elevation along the T wave, 0.03-0.08 mV at its peak (under ST上昇)."""
  h = plan.heart
  idx = idx[rng.random(len(idx)) < 0.25]
  h.vector[idx, W["ST"]] = unit(h.vector[idx, W["T2"]])
  h.peak[idx, W["ST"]] = rng.uniform(0.03, 0.08, len(idx))


def st_depression(rng, idx, plan):
  """Subendocardial ischaemia: ST vector away from the apex (down in II, aVF, V4-V6; up in aVR)."""
  m = len(idx)
  plan.heart.vector[idx, W["ST"]] = -frontal(rng.uniform(30, 70, m), rng.uniform(-0.1, 0.2, m))
  plan.heart.peak[idx, W["ST"]] = rng.uniform(0.15, 0.3, m)
  where("V4-V6", "ST低下")(rng, idx, plan)


def negative_t(rng, idx, plan):
  """Inverted T: inferior beside an old inferior infarct, else anterior (V1-V4) or lateral."""
  h, m = plan.heart, len(idx)
  territory = np.where([plan.where[i].get("陳旧性下壁梗塞") for i in idx], 2, rng.integers(0, 2, m))
  directions = (
    frontal(np.clip(h.axis[idx], 10, 60), rng.uniform(-0.85, -0.7, m)),
    frontal(rng.uniform(160, 210, m), rng.uniform(-0.3, 0.1, m)),
    frontal(rng.uniform(-80, -50, m), rng.uniform(-0.1, 0.2, m)),
  )
  direction = np.choose(territory[:, None], directions)
  set_t(h, idx, direction, rng.uniform(0.25, 0.5, m))
  for j, i in enumerate(idx):
    plan.where[i]["陰性T波"] = ("V1-V4", "I, aVL, V5, V6", "II, III, aVF")[territory[j]]


def peaked_t(rng, idx, plan):
  h, m = plan.heart, len(idx)
  h.vector[idx, W["T1"]] = 0.0
  h.vector[idx, W["T2"]] = frontal(rng.uniform(30, 60, m), rng.uniform(0.3, 0.5, m))
  h.peak[idx, W["T2"]] = rng.uniform(1.0, 2.0, m)  # tall, narrow, symmetric
  h.offset[idx, W["T2"]], h.sigma[idx, W["T2"]] = 0.72, 0.075


def scale_t(lo: float, hi: float, u_to_r: tuple[float, float] | None = None) -> Effect:
  """Flat T (scale T down) and, with u_to_r, a prominent U wave sized relative to R."""

  def effect(rng, idx, plan):
    h, m = plan.heart, len(idx)
    scale = rng.uniform(lo, hi, (m, 1))
    h.vector[idx, W["T1"]] *= scale
    h.vector[idx, W["T2"]] *= scale
    if u_to_r:
      h.vector[idx, W["U"]] = (
        unit(h.vector[idx, W["T2"]]) * mag(h, idx, "R") * rng.uniform(*u_to_r, (m, 1))
      )

  return effect


def voltage(cls: int) -> Effect:
  def effect(rng, idx, plan):
    plan.heart.voltage[idx] = cls

  return effect


def dextrocardia(rng, idx, plan):
  """Mirror image: every dipole x-component flips; chest voltages fade from V1 to V6."""
  h = plan.heart
  h.vector[idx, :, 0] *= -1
  h.atrial[idx, 0] *= -1
  h.chest_gain[idx] *= [1.0, 0.85, 0.7, 0.55, 0.45, 0.35]


def arms_swapped(rng, idx, plan):
  plan.heart.arms_swapped[idx] = True
