"""What each finding does to a record: its signature on the rhythm, the dipole waves and the noise.

The effects live in rhythm_effects.py and wave_effects.py; `apply_findings` runs them in a fixed order
(rhythm, wx.axis, conduction and structure,
atria, repolarisation, wx.voltage, position, recording quality), each vectorised over the records
that carry the finding. Signatures, in short:
  rhythm   AF: no P, f waves, irregular RR; flutter: sawtooth F waves; rx.junctional / SVT: retrograde P;
           VT / CAVB: atria dissociated from ventricles; Wenckebach: PR grows until a beat drops;
           ectopy: premature beats (PAC: abnormal P, reset; PVC: wide, compensatory pause).
  QRS      BBB: late forces widen QRS >= 120 ms (RBBB rSR' V1, wide S in I/V6; LBBB broad notched R
           in I/V6, QS in V1, discordant ST-T); WPW: short PR + delta wave; old MI: pathological Q.
  wx.axis     wx.rotation of the main R vector in the frontal plane; wx.rotation (transition) from its z part.
  ST-T     injury / ischaemia ST vectors, inverted, peaked or flat T, long QT, prominent U.
"""

from __future__ import annotations

import numpy as np

from ecg_contrastive.data.synthetic import rhythm as rh
from ecg_contrastive.data.synthetic import rhythm_effects as rx
from ecg_contrastive.data.synthetic import wave_effects as wx
from ecg_contrastive.data.synthetic.morphology import HIGH, LOW
from ecg_contrastive.data.synthetic.plan import Effect, Plan, draw, rhythm_kind

# Application order matters: rhythm, then axis, conduction, structure, atria, repolarisation, voltage,
# position, recording quality. Findings without an entry (洞調律, 異常Q波 and
# ストレイン型ST-T変化) need no change beyond what their companions do.
EFFECTS: dict[str, Effect] = {
  "洞性頻脈": draw("rhythm.rate", 105, 150),
  "洞性徐脈": draw("rhythm.rate", 38, 49),
  "心房細動": rx.fibrillation,
  "心房粗動": rx.flutter,
  "接合部調律": rx.junctional,
  "上室頻拍": rx.svt,
  "心室頻拍": rhythm_kind(rh.VT, 140, 190),
  "心室ペーシング": rx.paced,
  "完全房室ブロック": rx.cavb,
  "2度房室ブロック(ウェンケバッハ型)": rx.wenckebach,
  "1度房室ブロック": draw("rhythm.pr", 240, 360),
  "心房期外収縮": rx.premature_beats("pac"),
  "心室期外収縮": rx.premature_beats("pvc"),
  "左軸偏位": wx.axis(-88, -52),
  "右軸偏位": wx.axis(108, 165),
  "時計方向回転": wx.rotation(1.0),
  "反時計方向回転": wx.rotation(-1.0),
  "完全右脚ブロック": wx.rbbb,
  "完全左脚ブロック": wx.lbbb,
  "WPW症候群": wx.wpw,
  "陳旧性下壁梗塞": wx.q_wave(wx.inferior, "II, III, aVF", "陳旧性下壁梗塞"),
  "陳旧性前壁中隔梗塞": wx.old_anterior,
  "左室肥大": wx.lvh,
  "右室肥大": wx.rvh,
  "右房負荷": wx.atrial_overload(True),
  "左房負荷": wx.atrial_overload(False),
  "正常心電図": wx.early_repolarisation,
  "ST上昇": wx.st_elevation,
  "ST低下": wx.st_depression,
  "陰性T波": wx.negative_t,
  "テント状T波": wx.peaked_t,
  "QT延長": rx.long_qt,
  "U波増高": wx.scale_t(0.5, 0.7, (0.1, 0.14)),
  "平低T波": wx.scale_t(0.1, 0.25),
  "低電位": wx.voltage(LOW),
  "左室高電位": wx.voltage(HIGH),
  "右胸心": wx.dextrocardia,
  "電極付け間違いの疑い": wx.arms_swapped,
  "基線の動揺": draw("wander", 0.8, 1.6),  # severe: see noise.SEVERE_*
  "筋電図混入": draw("emg", 0.05, 0.1),
  "交流障害": draw("mains", 0.05, 0.15),
}


def apply_findings(rng: np.random.Generator, plan: Plan) -> None:
  """Applies every record's findings (plan.labels) to `plan` in EFFECTS order; ectopic foci for all."""
  rx.ectopic_focus(rng, np.arange(len(plan.labels)), plan)
  for name, effect in EFFECTS.items():
    idx = np.array([i for i, l in enumerate(plan.labels) if name in l], dtype=int)
    if len(idx):
      effect(rng, idx, plan)
