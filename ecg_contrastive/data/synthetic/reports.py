"""Japanese ECG readings written from a record's findings, the way readers phrase them.

The rhythm comes first; findings follow, joined with 。 or 、 in one of several styles
(〜を認める, 〜を伴う, 〜の疑い, lead locations such as "II, III, aVF誘導で…"). Every finding
appears verbatim as its vocabulary term, and no other vocabulary term is written.
"""

from __future__ import annotations

import numpy as np

from ecg_contrastive.data.synthetic.findings import QUALITY, RHYTHM_OF

RHYTHMS = frozenset(RHYTHM_OF.values()) | {"洞調律"}
# Diagnoses a reader may state as a suspicion (〜の疑い).
_SUSPECTED = frozenset({"左室肥大", "右室肥大", "陳旧性下壁梗塞", "陳旧性前壁中隔梗塞", "WPW症候群", "右胸心",
                        "心房粗動", "心房細動", "上室頻拍", "心室頻拍", "完全房室ブロック", "左房負荷", "右房負荷"})
# Findings that read as one phrase when they occur together.
_FUSED = {
    ("左室肥大", "ストレイン型ST-T変化"): "ストレイン型ST-T変化を伴う左室肥大",
    ("陳旧性下壁梗塞", "異常Q波"): "{where}誘導に異常Q波、陳旧性下壁梗塞",
    ("陳旧性前壁中隔梗塞", "異常Q波"): "{where}誘導に異常Q波、陳旧性前壁中隔梗塞",
    ("ST上昇", "異常Q波"): "{where}誘導でST上昇と異常Q波",
}
_NORMAL = ("洞調律。正常心電図。", "洞調律、正常心電図。", "洞調律。所見なし、正常心電図。", "洞調律。正常心電図と判定。")


def _phrase(rng: np.random.Generator, finding: str, where: str | None) -> str:
  if where and rng.random() < 0.6:
    return f"{where}誘導で{finding}" if rng.random() < 0.5 else f"{finding}（{where}）"
  return finding


def _findings_text(rng: np.random.Generator, findings: list[str], where: dict[str, str]) -> list[str]:
  """Phrases of the findings, fused pairs merged, in the given order."""
  phrases, used = [], set()
  for f in findings:
    if f in used:
      continue
    pair = next(((a, b) for (a, b) in _FUSED if f in (a, b) and a in findings and b in findings), None)
    if pair and rng.random() < 0.7:
      used.update(pair)
      phrases.append(_FUSED[pair].format(where=where.get(pair[0], "")))
    else:
      used.add(f)
      phrases.append(_phrase(rng, f, where.get(f)))
  return phrases


def write_report(rng: np.random.Generator, labels: list[str], where: dict[str, str]) -> str:
  """One reading for a record with findings `labels` (rhythm among them); `where`: finding -> leads."""
  rhythm = next(l for l in labels if l in RHYTHMS)
  quality = [l for l in labels if l in QUALITY]
  findings = [l for l in labels if l not in RHYTHMS and l not in QUALITY]
  if findings == ["正常心電図"]:
    text = _NORMAL[rng.integers(len(_NORMAL))]
  elif not findings:
    forms = ("{}。", "{}を認める。", "調律は{}。") + (("{}の疑い。",) if rhythm in _SUSPECTED else ())
    text = forms[rng.integers(len(forms))].format(rhythm)
  else:
    phrases = _findings_text(rng, findings, where)
    joined = "、".join(phrases)
    if len(phrases) == 1 and findings[-1] in _SUSPECTED and rng.random() < 0.35:
      text = f"{rhythm}。{joined}の疑い。"
    else:
      styles = (f"{rhythm}。{joined}を認める。", f"{rhythm}、{joined}を伴う。",
                f"{rhythm}。" + "".join(f"{p}。" for p in phrases), f"{rhythm}。{joined}あり。")
      text = styles[rng.integers(len(styles))]
  for q in quality:
    text += (f"{q}あり。", f"{q}を認める。", f"{q}のため判読に注意。")[rng.integers(3)]
  return text
