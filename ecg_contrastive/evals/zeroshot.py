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


def macro_auroc(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
  """Mean one-vs-rest AUROC over labels that have both positives and negatives.

  scores (N, L) float, targets (N, L) bool. Returns (macro AUROC, number of labels averaged).
  """
  aucs = []
  for j in range(scores.shape[1]):
    pos = targets[:, j]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
      continue
    ranks = rankdata(scores[:, j])  # Mann-Whitney U, ties get average ranks
    aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
  return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def zero_shot_metrics(
  ecg_emb: np.ndarray,
  label_emb: np.ndarray,
  label_names: Sequence[str],
  label_groups: Sequence[str],
  primary: Sequence[str],
  record_labels: Sequence[Sequence[str]],
) -> dict:
  """Zero-shot metrics of one split.

  Args:
    ecg_emb: (N, E) unit-norm ECG embeddings.
    label_emb: (L, E) unit-norm label-prompt embeddings.
    label_names, label_groups: (L,) label names and their superset group.
    primary: (N,) each record's primary label (must be in label_names).
    record_labels: (N,) each record's full list of findings (names outside label_names are
      counted under "labels_outside_label_set" and otherwise ignored).
  Returns a dict with top1, top5, chance_top1, chance_top5, majority_top1, superset_top1,
  superset_chance_top1, macro_auroc, per_label {name: {support, recall_at_1, recall_at_5,
  primary_support, primary_top1}}, n.
  """
  index = {name: i for i, name in enumerate(label_names)}
  unknown = sorted({p for p in primary if p not in index})
  if unknown:
    raise ValueError(f"primary labels not in the label set: {unknown[:10]}")
  n, num_labels = ecg_emb.shape[0], len(label_names)
  scores = ecg_emb @ label_emb.T  # (N, L)
  top5 = topk_indices(scores, 5)
  y = np.array([index[p] for p in primary])
  targets = np.zeros((n, num_labels), bool)
  outside = 0
  for i, labels in enumerate(record_labels):
    for name in labels:
      if name in index:
        targets[i, index[name]] = True
      else:
        outside += 1
  targets[np.arange(n), y] = True
  in_top1 = targets[np.arange(n)[:, None], top5[:, :1]][:, 0]
  ranks_le5 = np.zeros((n, num_labels), bool)
  ranks_le5[np.arange(n)[:, None], top5] = True

  groups = list(dict.fromkeys(label_groups))
  group_of = np.array([groups.index(g) for g in label_groups])
  group_scores = np.full((n, len(groups)), -np.inf)
  for g in range(len(groups)):  # a group scores as its best label
    group_scores[:, g] = scores[:, group_of == g].max(axis=1)
  counts = np.bincount(y, minlength=num_labels)

  per_label = {}
  for j, name in enumerate(label_names):
    carriers = targets[:, j]
    prim = y == j
    if not carriers.any():
      continue
    per_label[name] = {
      "support": int(carriers.sum()),
      "recall_at_1": float((top5[carriers, 0] == j).mean()),
      "recall_at_5": float(ranks_le5[carriers, j].mean()),
      "primary_support": int(prim.sum()),
      "primary_top1": float((top5[prim, 0] == j).mean()) if prim.any() else None,
    }
  auroc, auroc_labels = macro_auroc(scores, targets)
  return {
    "n": n,
    "num_labels": num_labels,
    "top1": float((top5[:, 0] == y).mean()),
    "top5": float((top5 == y[:, None]).any(axis=1).mean()),
    "top1_any_finding": float(in_top1.mean()),
    "chance_top1": 1.0 / num_labels,
    "chance_top5": min(5, num_labels) / num_labels,
    "majority_top1": float(counts.max() / n),
    "majority_label": label_names[int(counts.argmax())],
    "superset_top1": float((group_scores.argmax(axis=1) == group_of[y]).mean()),
    "superset_chance_top1": 1.0 / len(groups),
    "superset_majority_top1": float(np.bincount(group_of[y], minlength=len(groups)).max() / n),
    "macro_auroc": auroc,
    "macro_auroc_labels": auroc_labels,
    "labels_outside_label_set": outside,
    "per_label": per_label,
  }
