"""Zero-shot classification metrics: ECG embeddings scored against label-prompt embeddings.

All arrays are host numpy. Scores are cosine similarities (unit-norm embeddings), so the
logit scale does not change any ranking here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
  """(N, L) scores -> (N, k) label indices, best first."""
  k = min(k, scores.shape[1])
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
  return np.take_along_axis(part, order, axis=1)


def label_aurocs(scores: np.ndarray, targets: np.ndarray) -> list[float | None]:
  """One-vs-rest AUROC of each label (Mann-Whitney U, ties at average ranks); None for a label without both
  positives and negatives. scores (N, L) float, targets (N, L) bool."""
  aucs = []
  for j in range(scores.shape[1]):
    pos = targets[:, j]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
      aucs.append(None)
      continue
    ranks = rankdata(scores[:, j])
    aucs.append(float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)))
  return aucs


def macro_auroc(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
  """Mean one-vs-rest AUROC over labels that have both positives and negatives.

  scores (N, L) float, targets (N, L) bool. Returns (macro AUROC, number of labels averaged).
  """
  aucs = [a for a in label_aurocs(scores, targets) if a is not None]
  return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def zero_shot_metrics(
  ecg_emb: np.ndarray,
  label_emb: np.ndarray,
  label_names: Sequence[str],
  label_groups: Sequence[str],
  primary: Sequence[str],
  record_labels: Sequence[Sequence[str]],
) -> dict:
  """Zero-shot metrics of one split over labels that are findings themselves (the 98 terms).

  Args:
    ecg_emb: (N, E) unit-norm ECG embeddings.
    label_emb: (L, E) unit-norm label-prompt embeddings.
    label_names, label_groups: (L,) label names and their superset group.
    primary: (N,) each record's primary label (must be in label_names).
    record_labels: (N,) each record's full list of findings (names outside label_names are
      counted under "labels_outside_label_set" and otherwise ignored).
  Returns label_set_metrics' dict.
  """
  unknown = sorted({p for p in primary if p not in set(label_names)})
  if unknown:
    raise ValueError(f"primary labels not in the label set: {unknown[:10]}")
  names = [(name,) for name in label_names]
  return label_set_metrics(
    ecg_emb, label_emb, label_names, names, label_groups, primary, record_labels
  )


def label_set_metrics(
  ecg_emb: np.ndarray,
  label_emb: np.ndarray,
  label_names: Sequence[str],
  label_terms: Sequence[Sequence[str]],
  label_groups: Sequence[str] | None,
  primary: Sequence[str],
  record_labels: Sequence[Sequence[str]],
) -> dict:
  """Zero-shot metrics of one split over a label set (evals/label_sets.py).

  Args:
    ecg_emb: (N, E) unit-norm ECG embeddings.
    label_emb: (L, E) unit-norm label embeddings.
    label_names: (L,) names; label_terms: (L,) the findings that make a record a positive of each label.
    label_groups: (L,) superset groups, or None (no superset accuracy).
    primary: (N,) each record's primary finding; its label is the one label holding it (none: the record is
      left out of top-k; `n_with_primary` counts those kept).
    record_labels: (N,) each record's findings (findings of no label count in "labels_outside_label_set").
  Returns n, num_labels, n_with_primary, top1, top5, top1_any_finding, chance_top1, chance_top5, majority_top1,
  majority_label, superset_top1 (+ chance, majority; None without groups), macro_auroc over the labels with
  positives and negatives (macro_auroc_labels of them), labels_without_positives, labels_without_negatives,
  labels_outside_label_set, per_label {name: {support, auroc, recall_at_1, recall_at_5, primary_support,
  primary_top1}} of the labels with positives. Top-k values are None when no record has a primary label.
  """
  n, num_labels = ecg_emb.shape[0], len(label_names)
  of_finding: dict[str, list[int]] = {}
  for j, found in enumerate(label_terms):
    for finding in found:
      of_finding.setdefault(finding, []).append(j)
  scores = ecg_emb @ label_emb.T  # (N, L)
  top5 = topk_indices(scores, 5)
  targets = np.zeros((n, num_labels), bool)
  outside = 0
  for i, findings in enumerate(record_labels):
    for name in findings:
      if name in of_finding:
        targets[i, of_finding[name]] = True
      else:
        outside += 1
  y = np.array([of_finding[p][0] if len(of_finding.get(p, ())) == 1 else -1 for p in primary], int)
  y = y.reshape(n)
  has = y >= 0
  targets[np.flatnonzero(has), y[has]] = True
  ranks_le5 = np.zeros((n, num_labels), bool)
  ranks_le5[np.arange(n)[:, None], top5] = True
  aucs = label_aurocs(scores, targets)
  per_label = {}
  for j, name in enumerate(label_names):
    carriers, prim = targets[:, j], y == j
    if not carriers.any():
      continue
    per_label[name] = {
      "support": int(carriers.sum()),
      "auroc": aucs[j],
      "recall_at_1": float((top5[carriers, 0] == j).mean()),
      "recall_at_5": float(ranks_le5[carriers, j].mean()),
      "primary_support": int(prim.sum()),
      "primary_top1": float((top5[prim, 0] == j).mean()) if prim.any() else None,
    }
  used = [a for a in aucs if a is not None]
  k = has.sum()
  yk, top5k = y[has], top5[has]
  counts = np.bincount(yk, minlength=num_labels)
  out = {
    "n": n,
    "num_labels": num_labels,
    "n_with_primary": int(k),
    "top1": float((top5k[:, 0] == yk).mean()) if k else None,
    "top5": float((top5k == yk[:, None]).any(axis=1).mean()) if k else None,
    "top1_any_finding": float(targets[np.arange(n), top5[:, 0]].mean()) if n else None,
    "chance_top1": 1.0 / num_labels,
    "chance_top5": min(5, num_labels) / num_labels,
    "majority_top1": float(counts.max() / k) if k else None,
    "majority_label": label_names[int(counts.argmax())] if k else None,
    "superset_top1": None,
    "superset_chance_top1": None,
    "superset_majority_top1": None,
    "macro_auroc": float(np.mean(used)) if used else float("nan"),
    "macro_auroc_labels": len(used),
    "labels_without_positives": [l for l, t in zip(label_names, targets.T) if not t.any()],
    "labels_without_negatives": [l for l, t in zip(label_names, targets.T) if t.all()],
    "labels_outside_label_set": outside,
    "per_label": per_label,
  }
  if label_groups is not None:
    groups = list(dict.fromkeys(label_groups))
    group_of = np.array([groups.index(g) for g in label_groups])
    group_scores = np.full((n, len(groups)), -np.inf)
    for g in range(len(groups)):  # a group scores as its best label
      group_scores[:, g] = scores[:, group_of == g].max(axis=1)
    out["superset_chance_top1"] = 1.0 / len(groups)
    if k:
      out["superset_top1"] = float((group_scores[has].argmax(axis=1) == group_of[yk]).mean())
      out["superset_majority_top1"] = float(
        np.bincount(group_of[yk], minlength=len(groups)).max() / k
      )
  return out
