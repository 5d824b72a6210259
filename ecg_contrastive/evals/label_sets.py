"""Label sets for zero-shot evaluation: which labels are scored, with which Japanese prompts, and which
vocabulary terms of a record make it a positive.

    label_set = load_label_set("ptbxl_superclass")        # a built-in name
    label_set = load_label_set("/path/to/my_labels.tsv")  # or a file

Built in (`BUILTIN`): `terms98`, the paper's 98 terms (the default: one label per term, its group the
superset label); and PTB-XL's benchmark sets as MERL / D-BETA report them: `ptbxl_superclass` (NORM, MI, STTC,
CD, HYP), `ptbxl_rhythm` and `ptbxl_form` (the rhythm and form statements). The PTB-XL sets ship as TSV files
(resources/label_set_ptbxl_*.tsv) and are written in the same format as a user's file:

    # comment lines start with '#'
    label   prompt                       group    en               terms
    AFIB    心房細動                      調律     atrial fib.
    MI      陳旧性下壁梗塞|陳旧性心筋梗塞             myocardial inf.  陳旧性下壁梗塞|陳旧性心筋梗塞

Tab-separated, a header line naming the columns; `label` and `prompt` are required, `group`, `en` and `terms`
optional (a column may be absent or a cell empty). `prompt`: one Japanese text, or several separated by `|`
(PROMPT_SEPARATOR); each is put into config.text.templates and embedded by the run's text tower, and a label with
several prompts scores as the mean of their unit-norm embeddings (prompt ensembling, as CLIP). `terms`: the
vocabulary terms (`|`-separated) whose presence in a record makes it a positive of the label; when empty, the
label itself must be a vocabulary term (resources/ecg_terms_ja.tsv) or a PTB-XL SCP code that maps to one
(resources/ptbxl_scp_ja.tsv). Every dataset stores its records' findings as vocabulary terms (PTB-XL's SCP codes
through that same table), so any label set can be evaluated on any dataset.

A record's primary label in a set (top-1 / top-5) is the one label that contains its primary term; a record whose
primary term is in no label, or in several, has none and is left out of top-k (counted).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from importlib import resources

from ecg_contrastive import paths
from ecg_contrastive.errors import UserError
from ecg_contrastive.vocab import term_maps, terms

PROMPT_SEPARATOR = "|"
TERM_SEPARATOR = "|"
COLUMNS = ("label", "prompt", "group", "en", "terms")
REQUIRED = ("label", "prompt")
DEFAULT = "terms98"
_PTBXL = {
  "ptbxl_superclass": "label_set_ptbxl_superclass.tsv",
  "ptbxl_rhythm": "label_set_ptbxl_rhythm.tsv",
  "ptbxl_form": "label_set_ptbxl_form.tsv",
}
BUILTIN = (DEFAULT, *_PTBXL)


class LabelSetError(UserError, ValueError):
  """A label-set file or name that cannot be used; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class LabelSet:
  """L labels: names, prompts (one or more texts each), optional groups, English names and the vocabulary
  terms that make a record a positive of each label."""

  name: str  # the built-in name or the file's stem
  labels: tuple[str, ...]
  prompts: tuple[tuple[str, ...], ...]
  terms: tuple[tuple[str, ...], ...]
  groups: tuple[str, ...] | None  # None: the set has no groups (no superset accuracy)
  en: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def prompt_texts(self) -> list[str]:
    """Every distinct prompt text, in first-use order (what the text tower embeds)."""
    return list(dict.fromkeys(p for ps in self.prompts for p in ps))


def load_label_set(spec: str) -> LabelSet:
  """A built-in name of BUILTIN, or the path of a TSV file (local or gs://)."""
  if spec in ("", DEFAULT):
    return terms98()
  if spec in _PTBXL:
    text = resources.files("ecg_contrastive").joinpath(f"resources/{_PTBXL[spec]}")
    return parse_label_set(text.read_text("utf-8"), spec, f"resources/{_PTBXL[spec]}")
  if not paths.exists(spec):
    raise LabelSetError(
      f"label set {spec!r}: no such file and not a built-in name; use a TSV file or one of "
      f"{', '.join(BUILTIN)}"
    )
  try:
    text = paths.read_text(spec)
  except UnicodeDecodeError as e:
    raise LabelSetError(f"{spec}: not UTF-8 text ({e}); save the label set as UTF-8 TSV") from e
  name = os.path.splitext(os.path.basename(spec.rstrip("/")))[0]
  return parse_label_set(text, name, spec)


@functools.cache
def terms98() -> LabelSet:
  """The paper's 98 terms: one label per term, its own prompt and term, its group the superset label."""
  ts = terms.load_terms()
  return LabelSet(
    DEFAULT,
    tuple(t.ja for t in ts),
    tuple((t.ja,) for t in ts),
    tuple((t.ja,) for t in ts),
    tuple(t.group_ja for t in ts),
    tuple(t.en for t in ts),
  )


def _split(cell: str, separator: str) -> tuple[str, ...]:
  return tuple(p.strip() for p in cell.split(separator))


def parse_label_set(text: str, name: str, where: str) -> LabelSet:
  """The label set of a TSV text; LabelSetError naming `where` and the line of the first problem."""
  lines = [
    (n, line.rstrip("\r"))
    for n, line in enumerate(text.splitlines(), 1)
    if line.strip() and not line.lstrip().startswith("#")
  ]
  if not lines:
    raise LabelSetError(
      f"{where}: empty label set; write a header line ({', '.join(COLUMNS)}) and one line per label"
    )
  header_line, header = lines[0][0], [h.strip() for h in lines[0][1].split("\t")]
  missing = [c for c in REQUIRED if c not in header]
  unknown = [c for c in header if c not in COLUMNS]
  if missing or unknown or len(set(header)) != len(header):
    what = (
      f"missing column(s) {missing}"
      if missing
      else (f"unknown column(s) {unknown}" if unknown else "a column repeats")
    )
    raise LabelSetError(
      f"{where}:{header_line}: header {header}: {what}; the header names tab-separated columns of "
      f"{COLUMNS} (label and prompt required)"
    )
  vocabulary, scp = set(terms.term_names()), term_maps.scp_table()
  rows, seen = [], {}
  for n, line in lines[1:]:
    cells = line.split("\t")
    if len(cells) > len(header):
      raise LabelSetError(
        f"{where}:{n}: {len(cells)} tab-separated cells for the {len(header)} columns {header}"
      )
    row = dict(zip(header, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))
    label = row["label"]
    if not label:
      raise LabelSetError(f"{where}:{n}: empty label; every line names its label first")
    if label in seen:
      raise LabelSetError(
        f"{where}:{n}: duplicate label {label!r} (first on line {seen[label]}); give each label one line "
        f"(several prompts go in one prompt cell, separated by '{PROMPT_SEPARATOR}')"
      )
    seen[label] = n
    prompts = _split(row["prompt"], PROMPT_SEPARATOR) if row["prompt"] else ()
    if not prompts or not all(prompts):
      raise LabelSetError(
        f"{where}:{n}: label {label!r} has an empty prompt; write its Japanese prompt text (several "
        f"separated by '{PROMPT_SEPARATOR}')"
      )
    if row.get("terms"):
      label_terms = _split(row["terms"], TERM_SEPARATOR)
      bad = [t for t in label_terms if t not in vocabulary]
      if bad:
        raise LabelSetError(
          f"{where}:{n}: label {label!r}: {bad} not vocabulary terms; the terms column lists terms of "
          "resources/ecg_terms_ja.tsv (the findings datasets store), separated by '|'"
        )
    elif label in vocabulary:
      label_terms = (label,)
    elif scp.get(label):
      label_terms = (scp[label],)
    else:
      raise LabelSetError(
        f"{where}:{n}: label {label!r} maps to no vocabulary term, so no record can be a positive; name a "
        "term of resources/ecg_terms_ja.tsv or a PTB-XL SCP code with a term, or list its terms in a "
        "'terms' column"
      )
    rows.append((label, prompts, label_terms, row.get("group", ""), row.get("en", "")))
  if not rows:
    raise LabelSetError(f"{where}: a header but no labels; write one line per label")
  groups = tuple(r[3] for r in rows)
  if any(groups) and not all(groups):
    first = next(n for (n, _), g in zip(lines[1:], groups) if not g)
    raise LabelSetError(
      f"{where}:{first}: label without a group where others have one; give every label a group or none"
    )
  return LabelSet(
    name,
    tuple(r[0] for r in rows),
    tuple(r[1] for r in rows),
    tuple(r[2] for r in rows),
    groups if all(groups) else None,
    tuple(r[4] for r in rows),
  )


def load_label_sets(spec: str) -> list[LabelSet]:
  """config.eval.label_set: one name or path, or several separated by commas (each evaluated in turn)."""
  sets = [load_label_set(s.strip()) for s in (spec or DEFAULT).split(",") if s.strip()]
  names = [s.name for s in sets]
  if len(set(names)) != len(names):
    raise LabelSetError(f"config.eval.label_set={spec!r}: two label sets share the name in {names}")
  return sets or [terms98()]
