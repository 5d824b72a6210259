"""Zero-shot and retrieval metrics on hand-built embeddings with known answers."""

import numpy as np
import pytest

from ecg_contrastive.evals.retrieval import retrieval_metrics
from ecg_contrastive.evals.zeroshot import macro_auroc, topk_indices, zero_shot_metrics

NAMES = ["正常心電図", "心房細動", "心房粗動", "完全右脚ブロック", "ST上昇", "洞調律"]
GROUPS = ["総合判定", "調律", "調律", "伝導障害", "虚血・梗塞", "調律"]


def one_hot_rows(idx, dim):
  out = np.zeros((len(idx), dim), np.float32)
  out[np.arange(len(idx)), idx] = 1.0
  return out


def test_topk_is_sorted_best_first():
  scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
  np.testing.assert_array_equal(topk_indices(scores, 3), [[1, 3, 2], [0, 1, 2]])


def test_zero_shot_counts_hits_baselines_and_groups():
  labels = np.eye(len(NAMES), dtype=np.float32)
  # 4 records predicted right, 1 predicted as 心房粗動 when it is 心房細動 (same group: a superset hit)
  predicted = [0, 1, 3, 4, 2]
  primary = ["正常心電図", "心房細動", "完全右脚ブロック", "ST上昇", "心房細動"]
  ecg = one_hot_rows(predicted, len(NAMES)) + 0.01 * np.arange(len(NAMES))[None, ::-1]
  ecg /= np.linalg.norm(ecg, axis=1, keepdims=True)
  record_labels = [
    ["正常心電図"],
    ["心房細動"],
    ["洞調律", "完全右脚ブロック"],
    ["洞調律", "ST上昇"],
    ["心房細動", "未知の所見"],
  ]
  m = zero_shot_metrics(ecg, labels, NAMES, GROUPS, primary, record_labels)
  assert m["top1"] == pytest.approx(4 / 5)
  assert m["top5"] == pytest.approx(1.0)
  assert m["superset_top1"] == pytest.approx(1.0)
  assert m["chance_top1"] == pytest.approx(1 / 6) and m["chance_top5"] == pytest.approx(5 / 6)
  assert m["majority_top1"] == pytest.approx(2 / 5) and m["majority_label"] == "心房細動"
  assert m["labels_outside_label_set"] == 1
  af = m["per_label"]["心房細動"]
  assert (af["support"], af["primary_support"]) == (2, 2)
  assert af["recall_at_1"] == pytest.approx(0.5) and af["primary_top1"] == pytest.approx(0.5)
  sinus = m["per_label"]["洞調律"]  # carried by 2 records, never primary, never ranked first
  assert sinus["support"] == 2 and sinus["primary_support"] == 0 and sinus["recall_at_1"] == 0.0
  assert "心房粗動" not in m["per_label"]  # no record carries it


def test_zero_shot_rejects_unknown_primary_label():
  with pytest.raises(ValueError, match="not in the label set"):
    zero_shot_metrics(
      np.eye(6, dtype=np.float32)[:1], np.eye(6, dtype=np.float32), NAMES, GROUPS, ["謎"], [[]]
    )


def test_macro_auroc_matches_pairwise_definition():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(40, 3))
  targets = rng.random((40, 3)) < 0.4
  targets[:, 2] = False  # a label with no positives is left out
  auc, used = macro_auroc(scores, targets)
  expected = []
  for j in range(2):
    pos, neg = scores[targets[:, j], j], scores[~targets[:, j], j]
    expected.append(
      ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
      / (len(pos) * len(neg))
    )
  assert used == 2 and auc == pytest.approx(np.mean(expected))


def test_retrieval_counts_duplicate_reports_as_hits():
  reports = np.eye(3, dtype=np.float32)
  report_ids = np.array([0, 0, 1, 2])  # records 0 and 1 share a report
  ecg = np.array([[0.8, 0.6, 0], [1, 0, 0], [0.9, 0.1, 0.4], [0, 0, 1]], np.float32)
  m = retrieval_metrics(ecg, reports, report_ids, ks=(1, 5), chunk=2)
  # ECG -> report: record 2 ranks its report 3rd (0.1 < 0.9, 0.4); the others rank theirs first
  assert m["ecg_to_report_r@1"] == pytest.approx(3 / 4)
  assert m["ecg_to_report_r@5"] == pytest.approx(1.0)
  # report -> ECG: report 0 finds record 1 (1.0 beats record 2's 0.9); report 1 is beaten by record 0
  assert m["report_to_ecg_r@1"] == pytest.approx(2 / 3)
  assert m["report_to_ecg_r@5"] == pytest.approx(1.0)
  assert m["distinct_reports"] == 3


def test_evaluation_lives_in_evals_with_keyword_only_arguments():
  """train.py calls evals.evaluate (no copy of its own); every argument is named at the call."""
  import inspect

  from ecg_contrastive import train
  from ecg_contrastive.evals import evaluate as evaluate_lib

  assert train.evaluate is evaluate_lib.evaluate
  params = inspect.signature(evaluate_lib.evaluate).parameters.values()
  assert [p.name for p in params] == [
    "config",
    "model",
    "state",
    "sources",
    "table",
    "label_sets",
    "mesh",
    "out_dir",
    "results_csv",
    "mode",
    "encoders",
  ]
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
  for name in ("evaluate", "embed_split", "make_ecg_encoder", "text_model_dir"):
    assert name == "evaluate" or not hasattr(train, name)
