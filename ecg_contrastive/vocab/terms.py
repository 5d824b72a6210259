"""The 98-term Japanese ECG vocabulary (fine labels) and its 9 superset groups.

The table ships with the package (`resources/ecg_terms_ja.tsv`, a copy of the project's
reference vocabulary) so nothing outside the package is read at run time.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources


@dataclasses.dataclass(frozen=True)
class Term:
  ja: str  # the label, e.g. "心房細動"
  en: str  # English equivalent, e.g. "atrial fibrillation"
  group_ja: str  # superset label, e.g. "調律"
  group_en: str  # e.g. "rhythm"


@functools.cache
def load_terms() -> tuple[Term, ...]:
  """All 98 terms in file order (the canonical label order of the project)."""
  text = (
    resources.files("ecg_contrastive").joinpath("resources/ecg_terms_ja.tsv").read_text("utf-8")
  )
  lines = [l for l in text.splitlines() if l.strip()]
  header = lines[0].split("\t")
  if header != ["term_ja", "term_en", "group_ja", "group_en"]:
    raise ValueError(f"ecg_terms_ja.tsv: unexpected header {header}")
  terms = tuple(Term(*l.split("\t")) for l in lines[1:])
  names = [t.ja for t in terms]
  if len(set(names)) != len(names):
    raise ValueError("ecg_terms_ja.tsv: duplicate term names")
  return terms


def term_names() -> list[str]:
  """Japanese label names in canonical order."""
  return [t.ja for t in load_terms()]


def term_by_name() -> dict[str, Term]:
  return {t.ja: t for t in load_terms()}


def group_names() -> list[str]:
  """The superset groups (Japanese), in order of first appearance."""
  return list(dict.fromkeys(t.group_ja for t in load_terms()))
