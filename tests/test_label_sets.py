"""Label sets (evals/label_sets.py) and their zero-shot metrics (evals/zeroshot.label_set_metrics): built-ins,
TSV files, the errors of a bad file, labels without positives, numbers against an independent computation."""

import numpy as np
import pytest

from ecg_contrastive.evals.label_sets import (
  BUILTIN,
  LabelSetError,
  load_label_set,
  load_label_sets,
  parse_label_set,
)
from ecg_contrastive.evals.zeroshot import label_set_metrics, zero_shot_metrics
from ecg_contrastive.vocab import terms

HEADER = "label\tprompt\tgroup\ten\tterms\n"


def write(tmp_path, text, name="mine.tsv"):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_builtins_load_with_vocabulary_terms():
  sizes = {name: len(load_label_set(name)) for name in BUILTIN}
  assert sizes == {"terms98": 98, "ptbxl_superclass": 5, "ptbxl_rhythm": 9, "ptbxl_form": 13}
  vocabulary = set(terms.term_names())
  for name in BUILTIN:
    ls = load_label_set(name)
    assert all(t in vocabulary for ts in ls.terms for t in ts), name
    assert all(p for ps in ls.prompts for p in ps), name
  sup = load_label_set("ptbxl_superclass")
  assert sup.labels == ("NORM", "MI", "STTC", "CD", "HYP") and sup.groups is None
  assert "陳旧性下壁梗塞" in sup.terms[1] and "ST低下" not in sup.terms[1]
  assert load_label_set("terms98").groups[0] == "総合判定"
  assert [s.name for s in load_label_sets("terms98, ptbxl_rhythm")] == ["terms98", "ptbxl_rhythm"]


def test_a_file_maps_labels_by_term_by_scp_code_or_by_terms_column(tmp_path):
  path = write(
    tmp_path,
    "# my set\n" + HEADER + "心房細動\t心房細動|AF\t調律\tAF\t\n"
    "AFLT\t心房粗動\t調律\t\t\n"
    "BLOCK\t脚ブロック\t伝導\t\t完全右脚ブロック|完全左脚ブロック\n",
  )
  ls = load_label_set(path)
  assert ls.name == "mine" and ls.labels == ("心房細動", "AFLT", "BLOCK")
  assert ls.prompts[0] == ("心房細動", "AF") and ls.terms[1] == ("心房粗動",)
  assert ls.terms[2] == ("完全右脚ブロック", "完全左脚ブロック")
  assert ls.groups == ("調律", "調律", "伝導")
  assert ls.prompt_texts() == ["心房細動", "AF", "心房粗動", "脚ブロック"]


@pytest.mark.parametrize(
  "text, says",
  [
    ("label\tgroup\n心房細動\t調律\n", r"mine.tsv:1: header .* missing column\(s\) \['prompt'\]"),
    (HEADER + "心房細動\t\t調律\t\t\n", r"mine.tsv:2: label '心房細動' has an empty prompt"),
    (HEADER + "心房細動\t心房細動|\t調律\t\t\n", r"mine.tsv:2: .* empty prompt"),
    (
      HEADER + "心房細動\t心房細動\t調律\t\t\n洞調律\t洞調律\t調律\t\t\n心房細動\tAF\t調律\t\t\n",
      r"mine.tsv:4: duplicate label '心房細動' \(first on line 2\)",
    ),
    (HEADER + "謎の所見\t謎\t\t\t\n", r"mine.tsv:2: label '謎の所見' maps to no vocabulary term"),
    (HEADER + "X\tx\t\t\t謎\n", r"mine.tsv:2: label 'X': \['謎'\] not vocabulary terms"),
    ("label\tprompt\n", r"mine.tsv: a header but no labels"),
  ],
)
def test_bad_files_name_the_file_and_line(tmp_path, text, says):
  with pytest.raises(LabelSetError, match=says):
    load_label_set(write(tmp_path, text))


def test_unknown_name_lists_the_builtins():
  with pytest.raises(LabelSetError, match="not a built-in name; .*ptbxl_superclass"):
    load_label_set("ptbxl_super")


def _pairwise_auroc(scores, positive):
  """AUROC as P(score of a positive > score of a negative) + half the ties, over all pairs."""
  pos, neg = scores[positive], scores[~positive]
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_metrics_of_a_five_label_set_against_a_pairwise_auroc():
  ls = parse_label_set(
    HEADER + "NORM\t正常心電図\t正常\t\t\n"
    "AF\t心房細動\t調律\t\t心房細動|心房粗動\n"
    "CRBBB\t完全右脚ブロック\t伝導\t\t\n"
    "CLBBB\t完全左脚ブロック\t伝導\t\t\n"
    "VF\t心室細動\t調律\t\t心室細動\n",
    "five",
    "five.tsv",
  )
  rng = np.random.default_rng(0)
  record_labels = [
    ["正常心電図", "洞調律"],
    ["心房細動"],
    ["心房粗動", "完全右脚ブロック"],
    ["洞調律", "完全左脚ブロック"],
    ["洞調律", "完全右脚ブロック"],
    ["正常心電図", "洞調律"],
    ["洞調律", "左軸偏位"],  # no label of the set: a negative of every label, no primary
  ] * 3
  primary = [
    "正常心電図",
    "心房細動",
    "心房粗動",
    "完全左脚ブロック",
    "完全右脚ブロック",
    "正常心電図",
  ]
  primary = (primary + ["左軸偏位"]) * 3
  ecg = rng.normal(size=(len(primary), 8)).astype(np.float32)
  ecg /= np.linalg.norm(ecg, axis=1, keepdims=True)
  lab = rng.normal(size=(5, 8)).astype(np.float32)
  lab /= np.linalg.norm(lab, axis=1, keepdims=True)
  m = label_set_metrics(ecg, lab, ls.labels, ls.terms, ls.groups, primary, record_labels)

  scores = ecg @ lab.T
  truth = np.array(
    [[any(t in r for t in ts) for ts in ls.terms] for r in record_labels]
  )  # (N, 5), from the set's terms
  expected = [_pairwise_auroc(scores[:, j], truth[:, j]) for j in range(4)]  # VF: no positives
  assert m["labels_without_positives"] == ["VF"] and "VF" not in m["per_label"]
  assert m["macro_auroc_labels"] == 4
  assert m["macro_auroc"] == pytest.approx(np.mean(expected), abs=1e-12)
  for j, name in enumerate(["NORM", "AF", "CRBBB", "CLBBB"]):
    assert m["per_label"][name]["auroc"] == pytest.approx(expected[j], abs=1e-12)
    assert m["per_label"][name]["support"] == int(truth[:, j].sum())
  # top-1 over the records whose primary finding belongs to one label (18 of 21)
  keep = np.array([p != "左軸偏位" for p in primary])
  y = np.array(
    [next(j for j, ts in enumerate(ls.terms) if p in ts) for p in np.array(primary)[keep]]
  )
  assert m["n_with_primary"] == keep.sum() == 18
  assert m["top1"] == pytest.approx((scores[keep].argmax(axis=1) == y).mean())
  groups = np.array(["正常", "調律", "伝導", "伝導", "調律"])
  best_group = [
    max(set(groups), key=lambda g: scores[i, groups == g].max()) for i in np.flatnonzero(keep)
  ]
  assert m["superset_top1"] == pytest.approx(np.mean(np.array(best_group) == groups[y]))


def test_no_primary_anywhere_gives_no_topk_but_aurocs():
  names, found = ["NORM", "MI"], [("正常心電図",), ("陳旧性下壁梗塞",)]
  ecg, lab = np.eye(3, dtype=np.float32)[:2], np.eye(3, dtype=np.float32)[:2]
  m = label_set_metrics(
    ecg, lab, names, found, None, ["洞調律", "洞調律"], [["正常心電図"], ["陳旧性下壁梗塞"]]
  )
  assert m["top1"] is None and m["n_with_primary"] == 0 and m["superset_top1"] is None
  assert m["macro_auroc"] == 1.0 and m["macro_auroc_labels"] == 2


def test_terms98_through_label_sets_equals_zero_shot_metrics():
  ls = load_label_set("terms98")
  rng = np.random.default_rng(1)
  names = list(ls.labels)
  record_labels = [list(rng.choice(names, size=3, replace=False)) for _ in range(40)]
  primary = [r[0] for r in record_labels]
  ecg = rng.normal(size=(40, 16))
  lab = rng.normal(size=(98, 16))
  a = zero_shot_metrics(ecg, lab, names, list(ls.groups), primary, record_labels)
  b = label_set_metrics(ecg, lab, ls.labels, ls.terms, ls.groups, primary, record_labels)
  assert a == b
  assert a["top1"] is not None and a["n_with_primary"] == 40
