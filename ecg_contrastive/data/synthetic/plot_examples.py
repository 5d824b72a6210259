"""Figure of generated 12-lead records with their Japanese reports, on ECG paper.

    python -m ecg_contrastive.data.synthetic.plot_examples                      # docs/figures/synthetic_ecgs.png
    python -m ecg_contrastive.data.synthetic.plot_examples --findings 心房細動 完全右脚ブロック --out /tmp/x.png

Layout per record: the usual 3 x 4 grid (2.5 s per lead: I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6)
and a 10 s rhythm strip of II; 10 mm/mV, 25 mm/s grid.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib_fontja  # noqa: E402,F401  (registers a Japanese font for the reports)
import numpy as np  # noqa: E402

from ecg_contrastive.data.synthetic import synth  # noqa: E402
from ecg_contrastive.ecg.signal import LEADS, SAMPLE_RATE, to_millivolts  # noqa: E402

GRID = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
DEFAULT_FINDINGS = (
  "正常心電図",
  "心房細動",
  "完全右脚ブロック",
  "心室期外収縮",
  "ST上昇",
  "左室肥大",
)


def _paper(ax, width_s: float, rows: int) -> None:
  ax.set_xlim(0, width_s)
  ax.set_ylim(-1.5 - 3 * (rows - 1), 1.5)
  for x in np.arange(0, width_s + 1e-9, 0.04):
    ax.axvline(
      x,
      color="#f6c9c9" if round(x / 0.04) % 5 else "#ec9a9a",
      lw=0.3 if round(x / 0.04) % 5 else 0.6,
    )
  for y in np.arange(-1.5 - 3 * (rows - 1), 1.5 + 1e-9, 0.1):
    major = abs(y * 2 - round(y * 2)) < 1e-6
    ax.axhline(y, color="#ec9a9a" if major else "#f6c9c9", lw=0.6 if major else 0.3)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_record(ax, ecg_mv: np.ndarray, title: str) -> None:
  """One record (5000, 12) mV on `ax`: 3 x 4 grid plus a rhythm strip of II."""
  _paper(ax, 10.0, 4)
  segment = int(2.5 * SAMPLE_RATE)
  t = np.arange(segment) / SAMPLE_RATE
  for row, leads in enumerate(GRID):
    for col, lead in enumerate(leads):
      x = ecg_mv[col * segment : (col + 1) * segment, LEADS.index(lead)]
      ax.plot(t + 2.5 * col, x - 3 * row, color="k", lw=0.6)
      ax.text(2.5 * col + 0.05, 0.9 - 3 * row, lead, fontsize=7)
  strip = ecg_mv[:, LEADS.index("II")]
  ax.plot(np.arange(len(strip)) / SAMPLE_RATE, strip - 9, color="k", lw=0.6)
  ax.text(0.05, 0.9 - 9, "II", fontsize=7)
  ax.set_title(title, fontsize=9, loc="left")


def plot_examples(
  path: str, findings: tuple[str, ...] = DEFAULT_FINDINGS, seed: int = 0, pool: int = 512
) -> None:
  """Writes a PNG with one record per primary finding in `findings` (the first such record of `pool`)."""
  records = synth.generate(pool, seed=seed)
  chosen = []
  for finding in findings:
    hits = [i for i, p in enumerate(records.primary_label) if p == finding]
    if not hits:
      raise ValueError(
        f"no record with primary label {finding!r} among the first {pool} of seed {seed}; "
        "raise --pool or pick another finding"
      )
    chosen.append(hits[0])
  fig, axes = plt.subplots(len(chosen), 1, figsize=(12, 3.9 * len(chosen)))
  for ax, i in zip(np.atleast_1d(axes), chosen):
    plot_record(
      ax,
      to_millivolts(records.ecg[i]),
      f"{records.record_id[i]}  [{records.primary_label[i]}]  {records.report[i]}",
    )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="docs/figures/synthetic_ecgs.png")
  parser.add_argument("--findings", nargs="+", default=list(DEFAULT_FINDINGS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--pool", type=int, default=512, help="records generated to pick the examples from"
  )
  args = parser.parse_args()
  plot_examples(args.out, tuple(args.findings), args.seed, args.pool)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
