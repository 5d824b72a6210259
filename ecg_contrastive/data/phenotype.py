"""What each finding does to a record: its signature on the rhythm, the dipole waves and the noise.

`apply_findings` runs the effects in a fixed order (rhythm, axis, conduction and structure,
atria, repolarisation, voltage, position, recording quality), each vectorised over the records
that carry the finding. Signatures, in short:
  rhythm   AF: no P, f waves, irregular RR; flutter: sawtooth F waves; junctional / SVT: retrograde P;
           VT / CAVB: atria dissociated from ventricles; Wenckebach: PR grows until a beat drops;
           ectopy: premature beats (PAC: abnormal P, reset; PVC: wide, compensatory pause).
  QRS      BBB: late forces widen QRS >= 120 ms (RBBB rSR' V1, wide S in I/V6; LBBB broad notched R
           in I/V6, QS in V1, discordant ST-T); WPW: short PR + delta wave; old MI: pathological Q.
  axis     rotation of the main R vector in the frontal plane; rotation (transition) from its z part.
  ST-T     injury / ischaemia ST vectors, inverted, peaked or flat T, long QT, prominent U.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ecg_contrastive.data import rhythm as rh
from ecg_contrastive.data.dipole import W, frontal
from ecg_contrastive.data.morphology import HIGH, LOW, Heart


class Plan:
  """Everything the renderer needs about n records, mutated by the finding effects."""

  def __init__(self, heart: Heart, rhythm: rh.Rhythm, labels: list[list[str]], rng: np.random.Generator):
    n = len(heart)
    self.heart, self.rhythm, self.labels = heart, rhythm, labels
    self.wander = rng.uniform(0.02, 0.12, n)             # mV
    self.emg = rng.uniform(0.003, 0.012, n)              # mV rms
    self.mains = rng.uniform(0.0, 0.01, n)               # mV rms
    self.mains_hz = rng.choice([50.0, 60.0], n)          # eastern / western Japan
    self.where: list[dict[str, str]] = [{} for _ in range(n)]


Effect = Callable[[np.random.Generator, np.ndarray, Plan], None]


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _mag(h: Heart, idx: np.ndarray, wave: str) -> np.ndarray:
  return np.linalg.norm(h.vector[idx, W[wave]], axis=-1)[:, None]


def _set_t(h: Heart, idx: np.ndarray, direction: np.ndarray, mag: np.ndarray) -> None:
  h.vector[idx, W["T1"]] = direction * (0.35 * mag)[:, None]
  h.vector[idx, W["T2"]] = direction * (0.8 * mag)[:, None]
  h.vector[idx, W["U"]] = direction * (0.06 * mag)[:, None]


def _reorient(h: Heart, idx: np.ndarray, turn: np.ndarray | float = 0.0) -> None:
  """Re-aims Q, R and T (keeping its anterior part) after h.axis / h.r_z changed; S turns by `turn` degrees."""
  h.vector[idx, W["Q"]] = frontal(h.axis[idx] + 150, 0.6) * _mag(h, idx, "Q")
  h.vector[idx, W["R"]] = frontal(h.axis[idx], h.r_z[idx]) * _mag(h, idx, "R")
  s, s_mag = h.vector[idx, W["S"]], _mag(h, idx, "S")
  s_angle = np.degrees(np.arctan2(s[:, 1], s[:, 0]))
  h.vector[idx, W["S"]] = frontal(s_angle + turn, s[:, 2] / np.maximum(s_mag[:, 0], 1e-9)) * s_mag
  t_mag = np.linalg.norm(h.vector[idx, W["T2"]], axis=-1) / 0.8
  t_z = h.vector[idx, W["T2"], 2] / np.maximum(0.8 * t_mag, 1e-9)
  _set_t(h, idx, frontal(np.clip(h.axis[idx], 10, 75), t_z), t_mag)


def _rhythm(kind: int, lo: float, hi: float) -> Effect:
  def effect(rng, idx, plan):
    plan.rhythm.kind[idx] = kind
    plan.rhythm.rate[idx] = rng.uniform(lo, hi, len(idx))
  return effect


def _where(text: str, finding: str) -> Effect:
  def effect(rng, idx, plan):
    for i in idx:
      plan.where[i][finding] = text
  return effect


def _fibrillation(rng, idx, plan):
  _rhythm(rh.AF, 70, 130)(rng, idx, plan)
  plan.heart.atrial[idx] = frontal(rng.uniform(60, 100, len(idx)), rng.uniform(0.5, 0.7, len(idx))) \
      * rng.uniform(0.04, 0.1, (len(idx), 1))


def _flutter(rng, idx, plan):
  r, m = plan.rhythm, len(idx)
  r.kind[idx] = rh.FLUTTER
  r.flutter_rate[idx] = rng.uniform(260, 320, m)
  r.flutter_ratio[idx] = rng.choice([2, 4, 0], m, p=[0.45, 0.35, 0.2])
  plan.heart.atrial[idx] = frontal(rng.uniform(80, 100, m), rng.uniform(-0.1, 0.3, m)) * rng.uniform(0.15, 0.3, (m, 1))


def _junctional(rng, idx, plan):
  _rhythm(rh.JUNCTIONAL, 40, 58)(rng, idx, plan)
  plan.heart.vector[idx, W["PX"]] = frontal(rng.uniform(-100, -75, len(idx)), 0.0) * rng.uniform(0.08, 0.14, (len(idx), 1))


def _svt(rng, idx, plan):
  _rhythm(rh.SVT, 160, 210)(rng, idx, plan)
  plan.heart.vector[idx, W["PX"]] = frontal(np.full(len(idx), -90.0), 0.0) * rng.uniform(0.03, 0.06, (len(idx), 1))


def _ectopic_focus(rng, idx, plan):
  """A random ventricular focus for every record: wide, bizarre QRS with a discordant T."""
  h, m = plan.heart, len(idx)
  q1 = _unit(rng.normal(size=(m, 3))) * rng.uniform(1.2, 2.0, (m, 1))
  q2 = _unit(_unit(q1) + _unit(rng.normal(size=(m, 3))) * 1.2) * rng.uniform(0.6, 1.1, (m, 1))
  h.vector[idx, W["VQ1"]], h.vector[idx, W["VQ2"]] = q1, q2
  h.vector[idx, W["VT"]] = -_unit(q1 + q2) * rng.uniform(0.35, 0.55, (m, 1))


def _paced(rng, idx, plan):
  h, m = plan.heart, len(idx)
  plan.rhythm.kind[idx] = rh.PACED_RHYTHM
  plan.rhythm.rate[idx] = rng.uniform(60, 85, m)
  plan.rhythm.pr[idx] = rng.uniform(140, 170, m)  # AV delay
  h.vector[idx, W["SPIKE"]] = frontal(rng.uniform(-120, -60, m), rng.uniform(-0.3, 0.3, m)) * rng.uniform(2, 4, (m, 1))
  q1 = frontal(rng.uniform(-75, -45, m), rng.uniform(-0.7, -0.5, m)) * rng.uniform(1.0, 1.5, (m, 1))
  q2 = frontal(rng.uniform(-40, -10, m), rng.uniform(-0.8, -0.6, m)) * rng.uniform(0.6, 1.0, (m, 1))
  h.vector[idx, W["VQ1"]], h.vector[idx, W["VQ2"]] = q1, q2
  h.vector[idx, W["VT"]] = -_unit(q1 + q2) * rng.uniform(0.3, 0.5, (m, 1))


def _cavb(rng, idx, plan):
  r, m = plan.rhythm, len(idx)
  _rhythm(rh.CAVB, 65, 95)(rng, idx, plan)
  r.escape_wide[idx] = rng.random(m) < 0.6
  r.escape_rate[idx] = np.where(r.escape_wide[idx], rng.uniform(28, 40, m), rng.uniform(38, 50, m))


def _wenckebach(rng, idx, plan):
  _rhythm(rh.WENCKEBACH, 70, 100)(rng, idx, plan)
  plan.rhythm.group[idx] = rng.choice([3, 4, 5], len(idx))
  plan.rhythm.pr[idx] = rng.uniform(160, 210, len(idx))


def _set(path: str, lo: float, hi: float) -> Effect:
  """Draws plan.<path> (e.g. 'rhythm.pr', 'emg') uniformly in [lo, hi) for the records."""
  def effect(rng, idx, plan):
    *owners, attr = path.split(".")
    obj = plan
    for owner in owners:
      obj = getattr(obj, owner)
    getattr(obj, attr)[idx] = rng.uniform(lo, hi, len(idx))
  return effect


def _count(attr: str) -> Effect:
  """Premature beats per 10 s: 2-4, so one strip shows the pattern (and its pause) more than once."""
  def effect(rng, idx, plan):
    getattr(plan.rhythm, attr)[idx] = rng.choice([2, 3, 4], len(idx), p=[0.4, 0.4, 0.2])
  return effect


def _axis(lo: float, hi: float) -> Effect:
  def effect(rng, idx, plan):
    turn = -plan.heart.axis[idx]
    plan.heart.axis[idx] = rng.uniform(lo, hi, len(idx))
    _reorient(plan.heart, idx, turn + plan.heart.axis[idx])
  return effect


def _rotation(sign: float) -> Effect:
  """Clockwise (+) / counterclockwise (-) rotation: the precordial transition moves to V5-V6 / V1-V2."""
  def effect(rng, idx, plan):
    plan.heart.rotation[idx] = sign * rng.uniform(28, 40, len(idx))
  return effect


def _rbbb(rng, idx, plan):
  h, m = plan.heart, len(idx)
  h.vector[idx, W["R2"]] = frontal(rng.uniform(165, 195, m), rng.uniform(0.7, 0.85, m)) * rng.uniform(0.45, 0.75, (m, 1))
  t = h.vector[idx, W["T2"]]
  _set_t(h, idx, _unit(t * [1.0, 1.0, 0.0] + np.linalg.norm(t, axis=1, keepdims=True) * [0, 0, -0.5]),
         np.linalg.norm(t, axis=1) / 0.8)


def _lbbb(rng, idx, plan):
  h, m = plan.heart, len(idx)
  normal_axis = h.axis[idx] > -30
  h.axis[idx] = np.where(normal_axis, rng.uniform(-10, 45, m), rng.uniform(-55, -40, m))
  r_mag = _mag(h, idx, "R")
  r = frontal(h.axis[idx], rng.uniform(-0.65, -0.5, m)) * r_mag
  h.vector[idx, W["Q"]] = 0.0
  h.vector[idx, W["S"]] = 0.0
  h.vector[idx, W["R"]] = r
  h.vector[idx, W["R2"]] = frontal(h.axis[idx] + rng.uniform(-15, 15, m), -0.7) * (0.8 * r_mag)
  h.offset[idx, W["R"]], h.sigma[idx, W["R"]] = 48, 19
  h.offset[idx, W["R2"]], h.sigma[idx, W["R2"]] = 95, 20
  _set_t(h, idx, -_unit(r), rng.uniform(0.3, 0.5, m))
  h.vector[idx, W["ST"]] = -_unit(r) * rng.uniform(0.08, 0.15, (m, 1))


def _wpw(rng, idx, plan):
  h, m = plan.heart, len(idx)
  plan.rhythm.pr[idx] = rng.uniform(80, 110, m)
  shift = rng.uniform(25, 35, (m, 1))
  for wave in ("Q", "R", "S"):
    h.offset[idx, W[wave]] += shift[:, 0]
  delta = frontal(rng.uniform(20, 70, m), rng.uniform(0.4, 0.7, m))
  h.vector[idx, W["DELTA"]] = delta * rng.uniform(0.35, 0.6, (m, 1))
  h.vector[idx, W["T1"]] = h.vector[idx, W["T1"]] * 0.3 - 0.1 * delta
  h.vector[idx, W["T2"]] = h.vector[idx, W["T2"]] * 0.3 - 0.2 * delta


def _q_wave(direction: Callable[[np.random.Generator, int], np.ndarray], text: str, finding: str) -> Effect:
  def effect(rng, idx, plan):
    h, m = plan.heart, len(idx)
    h.vector[idx, W["Q"]] = direction(rng, m) * rng.uniform(0.35, 0.6, (m, 1))
    h.offset[idx, W["Q"]], h.sigma[idx, W["Q"]] = 18, 12
    _where(text, finding)(rng, idx, plan)
  return effect


def _inferior(rng, m):
  return frontal(rng.uniform(-100, -80, m), rng.uniform(-0.1, 0.1, m))


def _posterior(rng, m):
  return _unit(np.stack([rng.uniform(0.1, 0.35, m), np.full(m, 0.1), -np.ones(m)], axis=1))


def _old_anterior(rng, idx, plan):
  plan.heart.r_z[idx] = np.minimum(plan.heart.r_z[idx], rng.uniform(-0.8, -0.65, len(idx)))
  _reorient(plan.heart, idx)
  _q_wave(_posterior, "V1-V3", "陳旧性前壁中隔梗塞")(rng, idx, plan)


def _lvh(rng, idx, plan):
  """High voltage with strain: ST depression and T inversion opposite the tall R (I, aVL, V5-V6)."""
  h, m = plan.heart, len(idx)
  h.voltage[idx] = HIGH
  r = _unit(h.vector[idx, W["R"]])
  _set_t(h, idx, _unit(-r + [0.0, 0.0, 0.3]), rng.uniform(0.25, 0.45, m))
  h.vector[idx, W["ST"]] = -r * rng.uniform(0.08, 0.15, (m, 1))
  for wave in ("Q", "R", "S"):
    h.offset[idx, W[wave]] *= 1.08
    h.sigma[idx, W[wave]] *= 1.08


def _rvh(rng, idx, plan):
  """Right axis, dominant anterior R (R > S in V1), deep S in V5-V6, T inversion V1-V3."""
  h, m = plan.heart, len(idx)
  turn = -h.axis[idx]
  h.axis[idx] = rng.uniform(110, 150, m)
  h.r_z[idx] = rng.uniform(0.35, 0.6, m)
  _reorient(h, idx, turn + h.axis[idx])
  _set_t(h, idx, frontal(rng.uniform(20, 60, m), rng.uniform(-0.6, -0.45, m)), rng.uniform(0.2, 0.35, m))


def _atrial_overload(right: bool) -> Effect:
  def effect(rng, idx, plan):
    h, m = plan.heart, len(idx)
    if right:  # tall peaked P >= 0.25 mV in II
      h.vector[idx, W["P1"]] = _unit(h.vector[idx, W["P1"]]) * rng.uniform(0.3, 0.38, (m, 1))
    else:      # broad notched P >= 120 ms, deep terminal negative P in V1
      h.vector[idx, W["P2"]] = frontal(rng.uniform(10, 35, m), -0.7) * rng.uniform(0.16, 0.22, (m, 1))
      h.offset[idx, W["P2"]] += 22
      h.sigma[idx, W["P2"]] += 4
  return effect


def _st_elevation(rng, idx, plan):
  """Injury current towards the inferior or anterior wall, hyperacute T; with 異常Q波 a Q wave too."""
  h, m = plan.heart, len(idx)
  inferior = rng.random(m) < 0.5
  direction = np.where(inferior[:, None], frontal(rng.uniform(80, 110, m), rng.uniform(-0.1, 0.1, m)),
                       _unit(np.stack([rng.uniform(0.1, 0.4, m), np.zeros(m), np.ones(m)], axis=1)))
  h.vector[idx, W["ST"]] = direction
  h.peak[idx, W["ST"]] = rng.uniform(0.2, 0.5, m)  # mV on the most elevated lead
  h.vector[idx, W["T2"]] += direction * rng.uniform(0.15, 0.3, (m, 1))
  for j, i in enumerate(idx):
    plan.where[i]["ST上昇"] = "II, III, aVF" if inferior[j] else "V1-V4"
  with_q = np.array(["異常Q波" in plan.labels[i] for i in idx])
  q = np.where(inferior[:, None], _inferior(rng, m), _posterior(rng, m)) * rng.uniform(0.3, 0.5, (m, 1))
  h.vector[idx[with_q], W["Q"]] = q[with_q]
  h.offset[idx[with_q], W["Q"]], h.sigma[idx[with_q], W["Q"]] = 18, 12


def _st_depression(rng, idx, plan):
  """Subendocardial ischaemia: ST vector away from the apex (down in II, aVF, V4-V6; up in aVR)."""
  m = len(idx)
  plan.heart.vector[idx, W["ST"]] = -frontal(rng.uniform(30, 70, m), rng.uniform(-0.1, 0.2, m))
  plan.heart.peak[idx, W["ST"]] = rng.uniform(0.12, 0.25, m)
  _where("V4-V6", "ST低下")(rng, idx, plan)


def _negative_t(rng, idx, plan):
  """Inverted T: inferior beside an old inferior infarct, else anterior (V1-V4) or lateral."""
  h, m = plan.heart, len(idx)
  territory = np.where([plan.where[i].get("陳旧性下壁梗塞") for i in idx], 2, rng.integers(0, 2, m))
  directions = (frontal(np.clip(h.axis[idx], 10, 60), rng.uniform(-0.85, -0.7, m)),
                frontal(rng.uniform(160, 210, m), rng.uniform(-0.3, 0.1, m)),
                frontal(rng.uniform(-80, -50, m), rng.uniform(-0.1, 0.2, m)))
  direction = np.choose(territory[:, None], directions)
  _set_t(h, idx, direction, rng.uniform(0.25, 0.5, m))
  for j, i in enumerate(idx):
    plan.where[i]["陰性T波"] = ("V1-V4", "I, aVL, V5, V6", "II, III, aVF")[territory[j]]


def _peaked_t(rng, idx, plan):
  h, m = plan.heart, len(idx)
  h.vector[idx, W["T1"]] = 0.0
  h.vector[idx, W["T2"]] = frontal(rng.uniform(30, 60, m), rng.uniform(0.3, 0.5, m))
  h.peak[idx, W["T2"]] = rng.uniform(1.0, 2.0, m)  # tall, narrow, symmetric
  h.offset[idx, W["T2"]], h.sigma[idx, W["T2"]] = 0.72, 0.075


def _scale_t(lo: float, hi: float, u_to_r: tuple[float, float] | None = None) -> Effect:
  """Flat T (scale T down) and, with u_to_r, a prominent U wave sized relative to R."""
  def effect(rng, idx, plan):
    h, m = plan.heart, len(idx)
    scale = rng.uniform(lo, hi, (m, 1))
    h.vector[idx, W["T1"]] *= scale
    h.vector[idx, W["T2"]] *= scale
    if u_to_r:
      h.vector[idx, W["U"]] = _unit(h.vector[idx, W["T2"]]) * _mag(h, idx, "R") * rng.uniform(*u_to_r, (m, 1))
  return effect


def _voltage(cls: int) -> Effect:
  def effect(rng, idx, plan):
    plan.heart.voltage[idx] = cls
  return effect


def _dextrocardia(rng, idx, plan):
  """Mirror image: every dipole x-component flips; chest voltages fade from V1 to V6."""
  h = plan.heart
  h.vector[idx, :, 0] *= -1
  h.atrial[idx, 0] *= -1
  h.chest_gain[idx] *= [1.0, 0.85, 0.7, 0.55, 0.45, 0.35]


def _arms_swapped(rng, idx, plan):
  plan.heart.arms_swapped[idx] = True


# Application order matters: rhythm, then axis, conduction, structure, atria, repolarisation, voltage,
# position, recording quality. Findings without an entry (洞調律, 正常心電図, 異常Q波 and
# ストレイン型ST-T変化) need no change beyond what their companions do.
EFFECTS: dict[str, Effect] = {
    "洞性頻脈": _set("rhythm.rate", 105, 150), "洞性徐脈": _set("rhythm.rate", 38, 52),
    "心房細動": _fibrillation, "心房粗動": _flutter, "接合部調律": _junctional, "上室頻拍": _svt,
    "心室頻拍": _rhythm(rh.VT, 140, 190), "心室ペーシング": _paced, "完全房室ブロック": _cavb,
    "2度房室ブロック(ウェンケバッハ型)": _wenckebach, "1度房室ブロック": _set("rhythm.pr", 240, 360),
    "心房期外収縮": _count("pac"), "心室期外収縮": _count("pvc"),
    "左軸偏位": _axis(-70, -42), "右軸偏位": _axis(110, 140),
    "時計方向回転": _rotation(1.0), "反時計方向回転": _rotation(-1.0),
    "完全右脚ブロック": _rbbb, "完全左脚ブロック": _lbbb, "WPW症候群": _wpw,
    "陳旧性下壁梗塞": _q_wave(_inferior, "II, III, aVF", "陳旧性下壁梗塞"), "陳旧性前壁中隔梗塞": _old_anterior,
    "左室肥大": _lvh, "右室肥大": _rvh, "右房負荷": _atrial_overload(True), "左房負荷": _atrial_overload(False),
    "ST上昇": _st_elevation, "ST低下": _st_depression, "陰性T波": _negative_t, "テント状T波": _peaked_t,
    "QT延長": _set("heart.qtc", 490, 580), "U波増高": _scale_t(0.5, 0.7, (0.1, 0.14)),
    "平低T波": _scale_t(0.1, 0.25),
    "低電位": _voltage(LOW), "左室高電位": _voltage(HIGH),
    "右胸心": _dextrocardia, "電極付け間違いの疑い": _arms_swapped,
    "基線の動揺": _set("wander", 0.35, 0.8), "筋電図混入": _set("emg", 0.035, 0.08),
    "交流障害": _set("mains", 0.05, 0.15),
}


def apply_findings(rng: np.random.Generator, plan: Plan) -> None:
  """Applies every record's findings (plan.labels) to `plan` in EFFECTS order; ectopic foci for all."""
  _ectopic_focus(rng, np.arange(len(plan.labels)), plan)
  for name, effect in EFFECTS.items():
    idx = np.array([i for i, l in enumerate(plan.labels) if name in l], dtype=int)
    if len(idx):
      effect(rng, idx, plan)
