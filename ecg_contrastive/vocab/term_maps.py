"""Source statements -> vocabulary terms, for the PTB-XL and MIMIC-IV-ECG builders.

Both tables ship with the package (edit them to change a mapping; rebuild the dataset after):
  resources/ptbxl_scp_ja.tsv         scp_code, term_ja, scp_description: one row per PTB-XL SCP code;
                                     an empty term_ja means the code has no vocabulary term (it is counted).
  resources/mimic_statements_ja.tsv  pattern, term_ja: case-insensitive regular expressions tried in file
                                     order on each machine statement; a match's text is used up, so an
                                     earlier "incomplete right bundle branch block" keeps a later
                                     "right bundle branch block" from matching inside it. term_ja "-" marks
                                     boilerplate that carries no finding ("Unconfirmed", "--- ... ---").

"Possible"/"probable"/"consider" before a finding in a statement, or a PTB-XL likelihood of 50 or less
(PTB-XL's "possible"; 0 means "not stated" and counts as certain), makes it suspected: the reading
writes it 〜の疑い (report_ja.render). A term stated plainly anywhere in the record is not suspected.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from importlib import resources

from ecg_contrastive.vocab import terms

SUSPECTED_LIKELIHOOD = 50  # PTB-XL: 0 < likelihood <= 50 is a possible finding
QUALIFIER = re.compile(
  r"\b(possible|possibly|probable|probably|consider|cannot rule out|suggests?|suspect(ed)?)\b",
  re.IGNORECASE,
)
IGNORE = "-"


@dataclasses.dataclass
class Mapped:
  """The vocabulary terms found in one record's statements."""

  labels: list[str]  # distinct terms, in order of first appearance
  suspected: set[str]  # terms only stated as possible
  unmapped: list[str]  # statements / codes that gave no term (counted by the builders)


def _table(name: str, header: list[str]) -> list[list[str]]:
  text = resources.files("ecg_contrastive").joinpath(f"resources/{name}").read_text("utf-8")
  rows = [line.split("\t") for line in text.splitlines() if line.strip()]
  if rows[0] != header:
    raise ValueError(f"resources/{name}: header {rows[0]}, expected {header}")
  vocabulary = set(terms.term_names())
  bad = [
    row for row in rows[1:] if len(row) != len(header) or row[1] not in vocabulary | {"", IGNORE}
  ]
  if bad:
    raise ValueError(
      f"resources/{name}: rows with the wrong column count or a term outside the vocabulary: {bad[:5]}"
    )
  return rows[1:]


@functools.cache
def scp_table() -> dict[str, str]:
  """PTB-XL SCP code -> vocabulary term ('' when the code has none)."""
  return {
    code: term
    for code, term, _ in _table("ptbxl_scp_ja.tsv", ["scp_code", "term_ja", "scp_description"])
  }


@functools.cache
def statement_table() -> tuple[tuple[re.Pattern, str], ...]:
  """(compiled case-insensitive pattern, term or '-') in the order they are tried."""
  return tuple(
    (re.compile(p, re.IGNORECASE), t)
    for p, t in _table("mimic_statements_ja.tsv", ["pattern", "term_ja"])
  )


def _collect(found: list[tuple[str, bool]], unmapped: list[str]) -> Mapped:
  labels = list(dict.fromkeys(term for term, _ in found))
  plain = {term for term, suspected in found if not suspected}
  return Mapped(labels, {t for t in labels if t not in plain}, unmapped)


def map_scp_codes(scp_codes: dict[str, float]) -> Mapped:
  """PTB-XL scp_codes {code: likelihood} -> terms; codes without a term (or unknown codes) go to `unmapped`."""
  table = scp_table()
  found, unmapped = [], []
  for code, likelihood in scp_codes.items():
    term = table.get(code, "")
    if term:
      found.append((term, 0 < float(likelihood) <= SUSPECTED_LIKELIHOOD))
    else:
      unmapped.append(code)
  return _collect(found, unmapped)


@functools.lru_cache(maxsize=1 << 16)
def _statement_terms(statement: str) -> tuple[tuple[tuple[str, bool], ...], bool]:
  """((term, suspected) in text order, whether boilerplate matched) of one statement (machine statements
  repeat, hence the cache)."""
  text, hits, ignored = statement, [], False
  qualifier = QUALIFIER.search(text)
  for pattern, term in statement_table():
    for match in list(pattern.finditer(text)):
      ignored |= term == IGNORE
      if term != IGNORE:
        hits.append((match.start(), term))
      text = (
        text[: match.start()] + " " * (match.end() - match.start()) + text[match.end() :]
      )  # used up
  return tuple(
    (term, qualifier is not None and qualifier.start() < start) for start, term in sorted(hits)
  ), ignored


def map_statements(statements: list[str]) -> Mapped:
  """Machine statements (English) -> terms; a statement that gives no term and is not boilerplate is unmapped."""
  found, unmapped = [], []
  for statement in statements:
    hits, ignored = _statement_terms(statement.strip())
    found.extend(hits)
    if not hits and not ignored:
      unmapped.append(statement.strip())
  return _collect(found, unmapped)


def count_unmapped(records: list[Mapped]) -> dict[str, int]:
  """Unmapped code / statement -> number of records, most frequent first."""
  counts = collections.Counter(u for m in records for u in dict.fromkeys(m.unmapped))
  return dict(counts.most_common())
