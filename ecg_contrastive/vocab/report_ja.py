"""Japanese readings and the primary-label rule for records whose findings are vocabulary terms: the one home of
both writing styles (the canonical `render` of the real-data builders, the varied `write_varied` of the synthetic
data) and of `primary_label` (both).

A canonical reading lists the findings the way a Japanese ECG report is written: the rhythm first, then the
findings in vocabulary order, the overall judgement (正常心電図, 異常心電図, ...) last, joined with "、"
and closed with "。"; a finding stated only as possible is written "〜の疑い":

    render(["正常心電図", "洞調律"]) == "洞調律、正常心電図。"
    render(["完全右脚ブロック", "洞調律", "左室肥大"], suspected={"左室肥大"})
        == "洞調律、完全右脚ブロック、左室肥大の疑い。"

A varied reading (`write_varied`) puts the rhythm first; findings follow, joined with 。 or 、 in one of several
styles (〜を認める, 〜を伴う, 〜の疑い, lead locations such as "II, III, aVF誘導で…"); recording-quality remarks
come last. Every finding appears verbatim as its vocabulary term, and no other vocabulary term is written.

Primary label rule (real and synthetic data): a record's primary label is its term that comes first in
PRIMARY_ORDER, an ordering of all 98 terms by clinical urgency (the simulator's findings,
`data/synthetic/findings.SIGNIFICANCE`, are taken from it in this order): an unreadable recording,
life-threatening rhythms and acute injury, other rhythm disturbances, structural findings,
ectopy / conduction / voltage / axis / sinus rate, qualifiers, the overall judgement, plain 洞調律, recording quality.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable

import numpy as np

from ecg_contrastive.vocab import terms

RHYTHM_GROUP = "調律"
OVERALL_GROUP = "総合判定"
QUALITY_GROUP = "記録品質"
# Tachycardias of another group (期外収縮・頻拍) that are a record's rhythm when sustained: read first, as a rhythm.
RHYTHM_TACHYCARDIAS = ("心室細動", "心室頻拍", "発作性上室頻拍", "上室頻拍")
# Of the recording-quality group, the one that is a finding (repeat the recording), not a remark on quality.
MISPLACEMENT = "電極付け間違いの疑い"
# Recording-quality remarks (the vocabulary's quality group but MISPLACEMENT), in vocabulary order.
QUALITY = tuple(
  t.ja for t in terms.load_terms() if t.group_ja == QUALITY_GROUP and t.ja != MISPLACEMENT
)
PRIMARY_ORDER = (
  "電極付け間違いの疑い",
  # life-threatening rhythms, acute injury, high-grade AV block
  "心室細動",
  "心室頻拍",
  "急性心筋梗塞",
  "ST上昇",
  "完全房室ブロック",
  "高度房室ブロック",
  "2度房室ブロック(モビッツII型)",
  "2:1房室ブロック",
  "2度房室ブロック(ウェンケバッハ型)",
  # other rhythm disturbances and pre-excitation
  "非持続性心室頻拍",
  "発作性上室頻拍",
  "上室頻拍",
  "心房粗動",
  "心房細動",
  "洞不全症候群",
  "洞停止",
  "洞房ブロック",
  "房室解離",
  "心室補充調律",
  "心室ペーシング",
  "ペースメーカ調律",
  "心房ペーシング",
  "WPW症候群",
  "ブルガダ型心電図",
  # structural findings, repolarisation, hypertrophy, ST-T
  "右胸心",
  "陳旧性前壁中隔梗塞",
  "陳旧性下壁梗塞",
  "陳旧性側壁梗塞",
  "陳旧性心筋梗塞",
  "三枝ブロック",
  "二枝ブロック",
  "完全左脚ブロック",
  "完全右脚ブロック",
  "テント状T波",
  "QT延長",
  "QT短縮",
  "両室肥大",
  "左室肥大",
  "右室肥大",
  "ST低下",
  "ST-T異常",
  "冠性T波",
  "陰性T波",
  # ectopy, minor conduction, voltage, axis, sinus rate
  "接合部調律",
  "異所性心房調律",
  "冠静脈洞調律",
  "多源性心室期外収縮",
  "連発性心室期外収縮",
  "心室期外収縮二段脈",
  "心室期外収縮三段脈",
  "心室期外収縮",
  "上室期外収縮二段脈",
  "心房期外収縮",
  "上室期外収縮",
  "接合部補充収縮",
  "変行伝導",
  "1度房室ブロック",
  "PQ短縮",
  "不完全左脚ブロック",
  "左脚前枝ブロック",
  "左脚後枝ブロック",
  "不完全右脚ブロック",
  "心室内伝導障害",
  "低電位",
  "肢誘導低電位",
  "左室高電位",
  "高度の右軸偏位",
  "右軸偏位",
  "高度の左軸偏位",
  "左軸偏位",
  "不定軸",
  "洞性頻脈",
  "洞性徐脈",
  "洞性不整脈",
  "早期再分極",
  # qualifiers
  "ストレイン型ST-T変化",
  "非特異的ST-T変化",
  "異常Q波",
  "両房負荷",
  "右房負荷",
  "左房負荷",
  "R波増高不良",
  "陰性U波",
  "U波増高",
  "平低T波",
  "二相性T波",
  "RSR'型",
  "時計方向回転",
  "反時計方向回転",
  # overall judgement, plain sinus rhythm, recording quality
  "異常心電図",
  "境界域心電図",
  "正常心電図",
  "正常範囲",
  "洞調律",
  "基線の動揺",
  "筋電図混入",
  "交流障害",
)


@functools.cache
def _primary_rank() -> dict[str, int]:
  names = terms.term_names()
  if sorted(PRIMARY_ORDER) != sorted(names):
    raise ValueError(
      f"report_ja.PRIMARY_ORDER must list the {len(names)} vocabulary terms once each; differs by "
      f"{sorted(set(names) ^ set(PRIMARY_ORDER))}"
    )
  return {name: i for i, name in enumerate(PRIMARY_ORDER)}


@functools.cache
def _reading_rank() -> dict[str, tuple[int, int]]:
  """term -> sort key of a reading: rhythm group, other groups, overall judgement; vocabulary order within."""
  tier = {RHYTHM_GROUP: 0, OVERALL_GROUP: 2}
  return {t.ja: (tier.get(t.group_ja, 1), i) for i, t in enumerate(terms.load_terms())}


def primary_rank() -> dict[str, int]:
  """term -> its place in PRIMARY_ORDER (0: the most urgent)."""
  return _primary_rank()


@functools.cache
def rhythm_terms() -> frozenset[str]:
  """Terms read as a record's rhythm: the vocabulary's rhythm group and RHYTHM_TACHYCARDIAS."""
  return frozenset(t.ja for t in terms.load_terms() if t.group_ja == RHYTHM_GROUP) | frozenset(
    RHYTHM_TACHYCARDIAS
  )


def ordered(labels: Iterable[str]) -> list[str]:
  """Vocabulary terms `labels` without duplicates, in reading order; a name outside the vocabulary raises."""
  rank = _reading_rank()
  unknown = sorted({l for l in labels if l not in rank})
  if unknown:
    raise ValueError(f"not vocabulary terms: {unknown}")
  return sorted(set(labels), key=rank.__getitem__)


def render(labels: Iterable[str], suspected: Collection[str] = ()) -> str:
  """The Japanese reading of vocabulary terms `labels`; those in `suspected` are written 〜の疑い."""
  parts = [f"{t}の疑い" if t in suspected else t for t in ordered(labels)]
  if not parts:
    raise ValueError("a reading needs at least one finding")
  return "、".join(parts) + "。"


def primary_label(labels: Iterable[str]) -> str:
  """The term of `labels` that comes first in PRIMARY_ORDER; raises on an empty or unknown list."""
  rank = _primary_rank()
  labels = list(labels)
  unknown = [l for l in labels if l not in rank]
  if unknown or not labels:
    raise ValueError(
      f"cannot pick a primary label from {labels}: "
      + ("not vocabulary terms" if unknown else "empty")
    )
  return min(labels, key=rank.__getitem__)


def terms_in_text(text: str) -> list[str]:
  """Vocabulary terms written verbatim in `text` (longest match first, non-overlapping), in reading order."""
  found, rest = [], text
  for name in sorted(terms.term_names(), key=len, reverse=True):
    if name in rest:
      found.append(name)
      rest = rest.replace(name, "\0")
  return ordered(found)


# ----------------------------------------------------------------------------- the varied style

# Diagnoses a reader may state as a suspicion (〜の疑い).
_SUSPECTED = frozenset(
  {
    "左室肥大",
    "右室肥大",
    "陳旧性下壁梗塞",
    "陳旧性前壁中隔梗塞",
    "WPW症候群",
    "右胸心",
    "心房粗動",
    "心房細動",
    "上室頻拍",
    "心室頻拍",
    "完全房室ブロック",
    "左房負荷",
    "右房負荷",
  }
)
# Findings that read as one phrase when they occur together.
_FUSED = {
  ("左室肥大", "ストレイン型ST-T変化"): "ストレイン型ST-T変化を伴う左室肥大",
  ("陳旧性下壁梗塞", "異常Q波"): "{where}誘導に異常Q波、陳旧性下壁梗塞",
  ("陳旧性前壁中隔梗塞", "異常Q波"): "{where}誘導に異常Q波、陳旧性前壁中隔梗塞",
  ("ST上昇", "異常Q波"): "{where}誘導でST上昇と異常Q波",
}
_NORMAL = (
  "洞調律。正常心電図。",
  "洞調律、正常心電図。",
  "洞調律。所見なし、正常心電図。",
  "洞調律。正常心電図と判定。",
)


def _phrase(rng: np.random.Generator, finding: str, where: str | None) -> str:
  if where and rng.random() < 0.6:
    return f"{where}誘導で{finding}" if rng.random() < 0.5 else f"{finding}（{where}）"
  return finding


def _findings_text(
  rng: np.random.Generator, findings: list[str], where: dict[str, str]
) -> list[str]:
  """Phrases of the findings, fused pairs merged, in the given order."""
  phrases, used = [], set()
  for f in findings:
    if f in used:
      continue
    pair = next(
      ((a, b) for (a, b) in _FUSED if f in (a, b) and a in findings and b in findings), None
    )
    if pair and rng.random() < 0.7:
      used.update(pair)
      phrases.append(_FUSED[pair].format(where=where.get(pair[0], "")))
    else:
      used.add(f)
      phrases.append(_phrase(rng, f, where.get(f)))
  return phrases


def write_varied(rng: np.random.Generator, labels: list[str], where: dict[str, str]) -> str:
  """One reading in a varied style for a record with findings `labels` (a rhythm among them, in PRIMARY_ORDER);
  `where`: finding -> leads. The synthetic data's writer: the draws of `rng` are part of the dataset definition."""
  rhythms, quality_terms = rhythm_terms(), set(QUALITY)
  rhythm = next(l for l in labels if l in rhythms)
  quality = [l for l in labels if l in quality_terms]
  findings = [l for l in labels if l not in rhythms and l not in quality_terms]
  if findings == ["正常心電図"]:
    text = _NORMAL[rng.integers(len(_NORMAL))]
  elif not findings:
    forms = ("{}。", "{}を認める。", "調律は{}。") + (
      ("{}の疑い。",) if rhythm in _SUSPECTED else ()
    )
    text = forms[rng.integers(len(forms))].format(rhythm)
  else:
    phrases = _findings_text(rng, findings, where)
    joined = "、".join(phrases)
    if len(phrases) == 1 and findings[-1] in _SUSPECTED and rng.random() < 0.35:
      text = f"{rhythm}。{joined}の疑い。"
    else:
      styles = (
        f"{rhythm}。{joined}を認める。",
        f"{rhythm}、{joined}を伴う。",
        f"{rhythm}。" + "".join(f"{p}。" for p in phrases),
        f"{rhythm}。{joined}あり。",
      )
      text = styles[rng.integers(len(styles))]
  for q in quality:
    text += (f"{q}あり。", f"{q}を認める。", f"{q}のため判読に注意。")[rng.integers(3)]
  return text
