"""Duplicate reports per training batch of the demo data (README "Scale", the batch-size study).

  PYTHONPATH=. python docs/batch_size/duplicates.py > docs/batch_size/duplicates.csv

For each batch size B: shuffled epochs of synthetic_ecg_ja/demo's train split cut into batches of B (as the
trainer does, drop-last), then per batch the number of distinct report strings and, per ECG, the number of
other ECGs in the batch with the very same report (positives under config.loss.duplicate_reports_positive) and
with the same primary label but another wording (negatives under that rule too).
"""

import collections
import sys

import numpy as np

from ecg_contrastive.data import pipeline

SIZES = (32, 128, 512, 2048, 4096)


def main() -> None:
  meta = pipeline.open_source("synthetic_ecg_ja/demo", "train").meta
  reports = list(meta.reports)
  ids = np.unique(reports, return_inverse=True)[1]
  labels = np.unique(np.asarray(meta.primary_label).astype(str), return_inverse=True)[1]
  counts = collections.Counter(reports)
  top = counts.most_common(3)
  print(
    f"# {len(reports)} train records, {len(counts)} distinct reports; most common: "
    + "; ".join(f"{n / len(reports):.1%} {r!r}" for r, n in top),
    file=sys.stderr,
  )
  print(
    "batch_size,distinct_reports,distinct_fraction,same_report_others_per_ecg,ecgs_with_a_duplicate,"
    "same_label_other_wording_per_ecg"
  )
  rng = np.random.default_rng(0)
  for b in SIZES:
    distinct, others, shared, reworded = [], [], [], []
    for _ in range(max(1, 20 * 4096 // len(reports))):  # a few shuffled epochs
      order = rng.permutation(len(ids))
      for start in range(0, len(order) - b + 1, b):
        rows = order[start : start + b]
        batch = ids[rows]
        _, inverse, n = np.unique(batch, return_inverse=True, return_counts=True)
        per_row = n[inverse] - 1
        distinct.append(len(n))
        others.append(per_row.mean())
        shared.append((per_row > 0).mean())
        _, label_inverse, label_n = np.unique(labels[rows], return_inverse=True, return_counts=True)
        reworded.append(
          (label_n[label_inverse] - 1 - per_row).mean()
        )  # same label, not the same string
    print(
      f"{b},{np.mean(distinct):.1f},{np.mean(distinct) / b:.3f},{np.mean(others):.2f},{np.mean(shared):.3f},"
      f"{np.mean(reworded):.2f}"
    )


if __name__ == "__main__":
  main()
