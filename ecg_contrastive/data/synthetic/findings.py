"""The findings the synthetic generator draws and their co-occurrence rules.

Every name is a term of the project vocabulary (`ecg_contrastive.vocab.terms`), verbatim.

Primary label rule: the project's one rule, `vocab.report_ja.primary_label` (first in PRIMARY_ORDER);
SIGNIFICANCE lists the generator's findings in that order. For these findings it reads:
  1. a recording that cannot be read as it is (suspected lead misplacement: repeat it);
  2. life-threatening rhythms and acute injury (VT, ST elevation, complete / Mobitz I AV block);
  3. other rhythm disturbances (SVT, flutter, AF, pacing, pre-excitation);
  4. structural findings (dextrocardia, old infarction, bundle branch block, repolarisation
     disorders, hypertrophy, ST-T changes);
  5. isolated ectopy, first-degree block, voltage, axis, sinus rate;
  6. qualifiers that are never primary: atrial overload, rotation, U wave, flat T, ...
  7. 正常心電図, then plain 洞調律 (only when nothing else is present), then recording quality.
"""

from __future__ import annotations

import numpy as np

from ecg_contrastive.vocab import report_ja, terms

# The findings the generator emits (a primary, its rhythm, secondaries, a recording-quality remark).
_FINDINGS = frozenset(
  {
    "電極付け間違いの疑い",
    "心室頻拍",
    "ST上昇",
    "完全房室ブロック",
    "2度房室ブロック(ウェンケバッハ型)",
    "上室頻拍",
    "心房粗動",
    "心房細動",
    "心室ペーシング",
    "WPW症候群",
    "右胸心",
    "陳旧性前壁中隔梗塞",
    "陳旧性下壁梗塞",
    "完全左脚ブロック",
    "完全右脚ブロック",
    "テント状T波",
    "QT延長",
    "左室肥大",
    "右室肥大",
    "ST低下",
    "陰性T波",
    "接合部調律",
    "心室期外収縮",
    "心房期外収縮",
    "1度房室ブロック",
    "低電位",
    "左室高電位",
    "右軸偏位",
    "左軸偏位",
    "洞性頻脈",
    "洞性徐脈",
    "ストレイン型ST-T変化",
    "異常Q波",
    "右房負荷",
    "左房負荷",
    "U波増高",
    "平低T波",
    "時計方向回転",
    "反時計方向回転",
    "正常心電図",
    "洞調律",
    "基線の動揺",
    "筋電図混入",
    "交流障害",
  }
)
SIGNIFICANCE = tuple(
  t for t in report_ja.PRIMARY_ORDER if t in _FINDINGS
)  # the findings, most urgent first

# Relative frequency of each primary label (normalised when drawn): ~12% normal, the rest balanced.
PRIMARY_WEIGHTS = {
  "正常心電図": 12.0,
  "心房細動": 3.6,
  "心房期外収縮": 3.4,
  "心室期外収縮": 3.4,
  "完全右脚ブロック": 3.4,
  "左軸偏位": 3.2,
  "1度房室ブロック": 3.2,
  "洞性頻脈": 3.0,
  "洞性徐脈": 3.0,
  "左室高電位": 3.0,
  "ST低下": 3.0,
  "陰性T波": 3.0,
  "完全左脚ブロック": 3.0,
  "右軸偏位": 2.8,
  "左室肥大": 2.8,
  "低電位": 2.8,
  "心房粗動": 2.8,
  "QT延長": 2.8,
  "陳旧性下壁梗塞": 2.8,
  "陳旧性前壁中隔梗塞": 2.8,
  "ST上昇": 2.8,
  "接合部調律": 2.6,
  "上室頻拍": 2.6,
  "完全房室ブロック": 2.6,
  "2度房室ブロック(ウェンケバッハ型)": 2.6,
  "心室ペーシング": 2.6,
  "右室肥大": 2.6,
  "WPW症候群": 2.4,
  "テント状T波": 2.4,
  "心室頻拍": 2.4,
  "右胸心": 2.2,
  "電極付け間違いの疑い": 2.2,
}

# The rhythm term a primary implies; every other primary is read on 洞調律.
RHYTHM_OF = {
  p: p
  for p in (
    "洞性頻脈",
    "洞性徐脈",
    "心房細動",
    "心房粗動",
    "接合部調律",
    "上室頻拍",
    "心室頻拍",
    "心室ペーシング",
  )
}

# Compatible secondary findings per primary (all lower in SIGNIFICANCE than the primary).
SECONDARIES = {
  "洞性頻脈": ("平低T波", "右房負荷"),
  "洞性徐脈": ("U波増高",),
  "心房細動": ("心室期外収縮", "完全右脚ブロック", "平低T波"),
  "上室頻拍": ("ST低下",),
  "心房期外収縮": ("左房負荷", "反時計方向回転"),
  "心室期外収縮": ("時計方向回転", "左房負荷"),
  "1度房室ブロック": ("左軸偏位", "左房負荷"),
  "完全右脚ブロック": ("1度房室ブロック", "左房負荷"),
  "完全左脚ブロック": ("1度房室ブロック", "左軸偏位"),
  "左軸偏位": ("反時計方向回転", "左房負荷"),
  "右軸偏位": ("時計方向回転", "右房負荷"),
  "低電位": ("平低T波",),
  "左室高電位": ("左房負荷", "反時計方向回転"),
  "左室肥大": ("ストレイン型ST-T変化", "左房負荷", "左軸偏位"),
  "右室肥大": ("右房負荷", "右軸偏位"),
  "ST上昇": ("異常Q波",),
  "陳旧性下壁梗塞": ("異常Q波", "陰性T波"),
  "陳旧性前壁中隔梗塞": ("異常Q波",),
  "QT延長": ("U波増高",),
}
QUALITY = (
  report_ja.QUALITY
)  # recording-quality remarks, drawn by index: their order is part of the data
QUALITY_RATE = 0.08  # share of records with one recording-quality finding
SECONDARY_COUNT_P = (
  0.65,
  0.28,
  0.07,
)  # P(0, 1, 2 secondary findings) where the primary allows them

_RANK = report_ja.primary_rank()


def all_findings() -> tuple[str, ...]:
  """Every finding name the generator can emit, in SIGNIFICANCE order."""
  return SIGNIFICANCE


def draw_primaries(rng: np.random.Generator, n: int) -> np.ndarray:
  """n primary labels (object array of str) drawn from PRIMARY_WEIGHTS."""
  names = list(PRIMARY_WEIGHTS)
  p = np.array([PRIMARY_WEIGHTS[k] for k in names])
  return np.array(names, dtype=object)[rng.choice(len(names), size=n, p=p / p.sum())]


def draw_labels(rng: np.random.Generator, primaries: np.ndarray) -> list[list[str]]:
  """Per record: [rhythm, primary, secondaries..., quality?] without duplicates, in SIGNIFICANCE order."""
  out = []
  counts = rng.choice(3, size=len(primaries), p=SECONDARY_COUNT_P)
  quality = rng.random(len(primaries)) < QUALITY_RATE
  for primary, count, noisy in zip(primaries, counts, quality):
    labels = {RHYTHM_OF.get(primary, "洞調律"), primary}
    options = SECONDARIES.get(primary, ())
    if options and count:
      labels.update(rng.choice(options, size=min(count, len(options)), replace=False).tolist())
    if noisy:
      labels.add(QUALITY[rng.integers(len(QUALITY))])
    out.append(sorted(labels, key=_RANK.__getitem__))
  return out


def _check_catalogue() -> None:
  """Import-time guard: every name is a vocabulary term and every secondary ranks below its primary."""
  vocabulary = set(terms.term_names())
  unknown = sorted(_FINDINGS - vocabulary)
  if unknown:
    raise ValueError(f"findings._FINDINGS: not vocabulary terms: {unknown}")
  for primary, options in SECONDARIES.items():
    bad = [s for s in options if _RANK[s] <= _RANK[primary]]
    if primary not in PRIMARY_WEIGHTS or bad:
      raise ValueError(
        f"findings.SECONDARIES[{primary!r}]: {bad or 'not a primary'} would outrank it"
      )


_check_catalogue()
