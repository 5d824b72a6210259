"""Finding effects on the rhythm plan: sinus rate, AF, flutter, junctional and ventricular rhythms,
pacing, AV block and premature beats (see phenotype.py for the order they run in)."""

from __future__ import annotations

import numpy as np

from ecg_contrastive.data.synthetic import rhythm as rh
from ecg_contrastive.data.synthetic.dipole import W, frontal
from ecg_contrastive.data.synthetic.plan import Effect, rhythm_kind, unit


def fibrillation(rng, idx, plan):
  """Ventricular response 55-150 per minute; fine (0.02-0.05 mV dipole) or coarse (0.06-0.16) f waves."""
  m = len(idx)
  rhythm_kind(rh.AF, 55, 150)(rng, idx, plan)
  coarse = rng.random(m) < 0.45
  size = np.where(coarse, rng.uniform(0.06, 0.16, m), rng.uniform(0.02, 0.05, m))
  plan.heart.atrial[idx] = (
    frontal(rng.uniform(60, 110, m), rng.uniform(0.4, 0.8, m)) * size[:, None]
  )


def flutter(rng, idx, plan):
  r, m = plan.rhythm, len(idx)
  r.kind[idx] = rh.FLUTTER
  r.flutter_rate[idx] = rng.uniform(260, 320, m)
  r.flutter_ratio[idx] = rng.choice([2, 4, 0], m, p=[0.45, 0.35, 0.2])
  plan.heart.atrial[idx] = frontal(
    rng.uniform(80, 100, m), rng.uniform(-0.1, 0.3, m)
  ) * rng.uniform(0.15, 0.3, (m, 1))


def junctional(rng, idx, plan):
  rhythm_kind(rh.JUNCTIONAL, 40, 58)(rng, idx, plan)
  plan.heart.vector[idx, W["PX"]] = frontal(rng.uniform(-100, -75, len(idx)), 0.0) * rng.uniform(
    0.08, 0.14, (len(idx), 1)
  )


def svt(rng, idx, plan):
  rhythm_kind(rh.SVT, 160, 210)(rng, idx, plan)
  plan.heart.vector[idx, W["PX"]] = frontal(np.full(len(idx), -90.0), 0.0) * rng.uniform(
    0.03, 0.06, (len(idx), 1)
  )


ECTOPIC_FAMILIES_P = (
  0.3,
  0.3,
  0.4,
)  # outflow tract (LBBB-like), left ventricle (RBBB-like), anywhere


def _focus_direction(rng, m):
  """(m, 3) unit main vector of a ventricular focus, by family: right ventricle / outflow tract (forces
  posterior-leftward: QS in V1, LBBB-like; inferior from the outflow tract, else superior), left ventricle
  (anterior-rightward: R in V1, RBBB-like; inferior or superior), or anywhere."""
  family = rng.choice(3, m, p=ECTOPIC_FAMILIES_P)
  vertical = np.where(rng.random(m) < 0.6, 1.0, -1.0) * rng.uniform(0.3, 0.9, m)
  rv = np.stack([rng.uniform(0.2, 0.7, m), vertical, rng.uniform(-0.9, -0.4, m)], axis=1)
  lv = np.stack([rng.uniform(-0.7, 0.2, m), vertical, rng.uniform(0.4, 0.9, m)], axis=1)
  anywhere = rng.normal(size=(m, 3))
  return unit(np.choose(family[:, None], (rv, lv, anywhere)))


def ectopic_focus(rng, idx, plan):
  """Two ventricular foci for every record (see _focus_direction): wide, bizarre QRS with a discordant T,
  of varied width (QRS waves x0.85-1.3). The first serves PVCs, VT and wide escape; the second multifocal PVCs."""
  h, m = plan.heart, len(idx)
  for main, late, t in (("VQ1", "VQ2", "VT"), ("VQ3", "VQ4", "VT2")):
    q1 = _focus_direction(rng, m) * rng.uniform(1.2, 2.0, (m, 1))
    q2 = unit(unit(q1) + unit(rng.normal(size=(m, 3))) * 1.2) * rng.uniform(0.6, 1.1, (m, 1))
    h.vector[idx, W[main]], h.vector[idx, W[late]] = q1, q2
    h.vector[idx, W[t]] = -unit(q1 + q2) * rng.uniform(0.35, 0.55, (m, 1))
    width = rng.uniform(0.85, 1.3, m)
    for wave in (main, late):
      h.offset[idx, W[wave]] *= width
      h.sigma[idx, W[wave]] *= width


def paced(rng, idx, plan):
  h, m = plan.heart, len(idx)
  plan.rhythm.kind[idx] = rh.PACED_RHYTHM
  plan.rhythm.rate[idx] = rng.uniform(60, 85, m)
  plan.rhythm.pr[idx] = rng.uniform(140, 170, m)  # AV delay
  h.vector[idx, W["SPIKE"]] = frontal(
    rng.uniform(-120, -60, m), rng.uniform(-0.3, 0.3, m)
  ) * rng.uniform(2, 4, (m, 1))
  q1 = frontal(rng.uniform(-75, -45, m), rng.uniform(-0.7, -0.5, m)) * rng.uniform(1.0, 1.5, (m, 1))
  q2 = frontal(rng.uniform(-40, -10, m), rng.uniform(-0.8, -0.6, m)) * rng.uniform(0.6, 1.0, (m, 1))
  h.vector[idx, W["VQ1"]], h.vector[idx, W["VQ2"]] = q1, q2
  h.vector[idx, W["VT"]] = -unit(q1 + q2) * rng.uniform(0.3, 0.5, (m, 1))


def cavb(rng, idx, plan):
  r, m = plan.rhythm, len(idx)
  rhythm_kind(rh.CAVB, 65, 95)(rng, idx, plan)
  r.escape_wide[idx] = rng.random(m) < 0.6
  r.escape_rate[idx] = np.where(r.escape_wide[idx], rng.uniform(28, 40, m), rng.uniform(38, 50, m))


def wenckebach(rng, idx, plan):
  rhythm_kind(rh.WENCKEBACH, 70, 100)(rng, idx, plan)
  plan.rhythm.group[idx] = rng.choice([3, 4, 5], len(idx))
  plan.rhythm.pr[idx] = rng.uniform(160, 210, len(idx))


def premature_beats(attr: str) -> Effect:
  """Premature beats per 10 s: 2-4, so one strip shows the pattern (and its pause) more than once."""

  def effect(rng, idx, plan):
    getattr(plan.rhythm, attr)[idx] = rng.choice([2, 3, 4], len(idx), p=[0.4, 0.4, 0.2])
    if attr == "pvc":  # a quarter multifocal
      plan.rhythm.multifocal[idx] = rng.random(len(idx)) < 0.25

  return effect


def long_qt(rng, idx, plan):
  """QTc 500-590 ms; the rate stays <= 60-85 per minute so the long T ends before the next P."""
  m = len(idx)
  plan.heart.qtc[idx] = rng.uniform(500, 590, m)
  plan.rhythm.rate[idx] = np.minimum(plan.rhythm.rate[idx], rng.uniform(60, 85, m))
