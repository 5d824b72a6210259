"""Figures and console tables of evaluation results."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib_fontja  # noqa: E402,F401  (registers a Japanese font: labels are Japanese)

from ecg_contrastive import paths  # noqa: E402


def plot_per_label(metrics: dict, path: str, title: str) -> None:
  """Horizontal bars: per-label top-1 accuracy of records whose primary label it is, and
  recall@5 of records carrying it (labels with a primary record, by support); or, for a label set without
  primary labels, per-label AUROC (labels by support). `path`: a .png, local or gs://."""
  by_auroc = metrics["top1"] is None
  key = "support" if by_auroc else "primary_support"
  rows = [(name, m) for name, m in metrics["per_label"].items() if m[key]]
  rows.sort(key=lambda r: -r[1][key])
  names = [f"{name} (n={m[key]})" for name, m in rows]
  top1 = [m["primary_top1"] or 0.0 for _, m in rows]
  r5 = [m["recall_at_5"] for _, m in rows]
  auroc = [m.get("auroc") or 0.0 for _, m in rows]
  fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
  y = range(len(rows))
  if by_auroc:
    ax.barh(
      list(y), auroc, height=0.6, label="AUROC (records carrying it vs the rest)", color="#08519c"
    )
    ax.axvline(0.5, color="gray", ls=":", lw=1)
    ax.set_xlabel("AUROC")
    headline = (
      f"macro AUROC {metrics['macro_auroc']:.3f} over {metrics['macro_auroc_labels']} labels"
    )
  else:
    ax.barh(
      [i + 0.2 for i in y], r5, height=0.4, label="recall@5 (records carrying it)", color="#9ecae1"
    )
    ax.barh(
      [i - 0.2 for i in y],
      top1,
      height=0.4,
      label="top-1 (records with it as primary)",
      color="#08519c",
    )
    ax.axvline(metrics["chance_top1"], color="gray", ls=":", lw=1)
    ax.set_xlabel("accuracy")
    headline = (
      f"top-1 {metrics['top1']:.3f}, top-5 {metrics['top5']:.3f} "
      f"(chance {metrics['chance_top1']:.3f}, majority {metrics['majority_top1']:.3f}); "
      f"macro AUROC {metrics['macro_auroc']:.3f}"
    )
  ax.set_yticks(list(y), names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_title(f"{title}\n{headline}", fontsize=9)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  paths.write_bytes(path, png.getvalue())


def format_summary(split: str, metrics: dict) -> str:
  """A small console table of the headline numbers of one split (and label set)."""
  if metrics.get("zero_shot", True) is None:
    return f"[{split}] n={metrics['n']}: {metrics['note']}"
  rows = [
    ("zero-shot top-1", metrics["top1"], metrics["chance_top1"], metrics["majority_top1"]),
    ("zero-shot top-5", metrics["top5"], metrics["chance_top5"], None),
    (
      "superset top-1",
      metrics["superset_top1"],
      metrics["superset_chance_top1"],
      metrics["superset_majority_top1"],
    ),
    (f"macro AUROC ({metrics['macro_auroc_labels']} labels)", metrics["macro_auroc"], 0.5, None),
  ]
  for key in ("ecg_to_report_r@1", "ecg_to_report_r@5", "report_to_ecg_r@1", "report_to_ecg_r@5"):
    if key in metrics:
      rows.append((key, metrics[key], None, None))
  fmt = lambda v: "" if v is None else f"{v:.4f}"
  missing = metrics["labels_without_positives"]
  lines = [
    f"[{split}] n={metrics['n']} labels={metrics['num_labels']}"
    + (
      f"; {len(missing)} without positives (not averaged): {', '.join(missing[:8])}"
      + (", ..." if len(missing) > 8 else "")
      if missing
      else ""
    ),
    f"  {'metric':<22}{'value':>9}{'uniform':>9}{'majority':>10}",
  ]
  lines += [f"  {name:<22}{fmt(v):>9}{fmt(c):>9}{fmt(m):>10}" for name, v, c, m in rows]
  return "\n".join(lines)
