"""The independent check: a run's checkpoint on the independent simulator's records, beside its own test numbers.

  python -m ecg_contrastive.evals.independent --workdir RUN [--records 400] [--seed 0] [--out DIR] [--step N]

writes the simulator's folder once (simulate.write_folder; reused while VERSION, seed and records are the same),
evaluates RUN's checkpoint on it through `--mode eval`'s own code (eval_job.evaluate_checkpoint: the run's model
and text tower, dataset `ecg_manifest`, split `test`, label set `terms98`) and prints and writes
RUN/eval/independent.json and .md: per finding n, top-1, top-5 (from the scores file that evaluation writes),
overall top-1 / top-5, and RUN's in-distribution test top-1 / top-5 (the newest `test` row of RUN/eval/results.csv
for the run's own dataset) with the difference in points.
"""

from __future__ import annotations

import csv
import io
import json
import os

import ml_collections
import numpy as np

from ecg_contrastive import checkpoints, paths
from ecg_contrastive.evals.independent import simulate

DATASET = "ecg_manifest"
OUT_NAME = (
  "independent"  # RUN/eval/independent/: apart from a --mode eval of a real ecg_manifest folder
)
SPLIT = "test"
LABEL_SET = "terms98"


def default_root() -> str:
  """Where the folders go without --out: beside the TFDS datasets ($ECG_CONTRASTIVE_DATA or the default)."""
  from ecg_contrastive.data.pipeline import data_dir_default

  return os.path.join(data_dir_default(), "independent")


def eval_config(run_config: ml_collections.ConfigDict, folder: str) -> ml_collections.ConfigDict:
  """The run's config with the data of the independent folder: its own TFDS data_dir (so no other
  `ecg_manifest` build is picked up), split test, label set terms98."""
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.dataset = DATASET
  config.source_dir = folder
  config.data_dir = os.path.join(folder, "tfds")
  config.eval_splits = (SPLIT,)
  config.eval.label_set = LABEL_SET
  return config


def in_distribution(workdir: str, dataset: str) -> dict | None:
  """{"top1", "top5", "step", "dataset"} of the newest test row of RUN/eval/results.csv for `dataset` and terms98,
  or None when there is none."""
  path = paths.join(workdir, "eval", "results.csv")
  if not paths.exists(path):
    return None
  rows = [
    r
    for r in csv.DictReader(io.StringIO(paths.read_text(path)))
    if r.get("dataset") == dataset
    and r.get("split") == SPLIT
    and r.get("label_set", LABEL_SET) in (LABEL_SET, "")
    and r.get("top1")
  ]
  if not rows:
    return None
  r = rows[-1]
  return {
    "top1": float(r["top1"]),
    "top5": float(r["top5"]),
    "step": int(r["step"]),
    "dataset": dataset,
  }


def per_finding(
  scores: np.ndarray, labels: list[str], record_finding: list[str]
) -> dict[str, dict]:
  """{finding: {"n", "top1", "top5"}} from (N, L) scores: top-k = the finding among the k best-scored labels.
  Also "overall" over all records."""
  column = {name: j for j, name in enumerate(labels)}
  truth = np.array([column[f] for f in record_finding])
  rank = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(
    axis=1
  )  # labels scored above the truth
  out = {}
  for finding in simulate.FINDINGS:
    m = np.array([f == finding for f in record_finding])
    if m.any():
      out[finding] = {
        "n": int(m.sum()),
        "top1": float((rank[m] < 1).mean()),
        "top5": float((rank[m] < 5).mean()),
      }
  out["overall"] = {
    "n": len(truth),
    "top1": float((rank < 1).mean()),
    "top5": float((rank < 5).mean()),
  }
  return out


def format_table(result: dict) -> str:
  """Markdown: the per-finding table, then the overall row beside the in-distribution test numbers."""
  lines = [
    f"Independent check ({result['folder_key']}, {result['records']} records) of {result['workdir']} "
    f"at step {result['step']}",
    "",
    "| finding | n | top-1 | top-5 |",
    "|---|---:|---:|---:|",
  ]
  for name, m in result["per_finding"].items():
    if name != "overall":
      lines.append(f"| {name} | {m['n']} | {m['top1']:.3f} | {m['top5']:.3f} |")
  o, ind = result["per_finding"]["overall"], result["in_distribution"]
  lines += ["", "| | top-1 | top-5 |", "|---|---:|---:|"]
  lines.append(f"| independent (all {o['n']}) | {o['top1']:.3f} | {o['top5']:.3f} |")
  if ind is None:
    lines.append(
      f"| in-distribution test | absent: no `test` row for the run's dataset in "
      f"{result['workdir']}/eval/results.csv | |"
    )
  else:
    lines.append(
      f"| in-distribution test ({ind['dataset']}, step {ind['step']}) | {ind['top1']:.3f} | {ind['top5']:.3f} |"
    )
    d = result["difference_points"]
    lines.append(f"| difference (points) | {d['top1']:+.1f} | {d['top5']:+.1f} |")
  return "\n".join(lines)


def run_check(
  workdir: str, records: int = 400, seed: int = 0, out: str | None = None, step: int | None = None
) -> dict:
  """Writes (or reuses) the folder, evaluates `workdir` on it, writes RUN/eval/independent.{json,md}; returns
  the result dict."""
  from ecg_contrastive.eval_job import evaluate_checkpoint
  from ecg_contrastive.evals.evaluate import file_stem

  run_config = checkpoints.read_config(workdir)
  ind = in_distribution(workdir, run_config.dataset)  # before our own row is appended
  folder = simulate.write_folder(out or default_root(), records, seed)
  results = evaluate_checkpoint(
    eval_config(run_config, folder), workdir, step=step, out_name=OUT_NAME
  )
  metrics = results[SPLIT][LABEL_SET]
  scores_file = paths.join(workdir, "eval", OUT_NAME, f"{file_stem(SPLIT, LABEL_SET)}.scores.npz")
  with np.load(io.BytesIO(paths.read_bytes(scores_file))) as z:
    record_id, labels, scores = list(z["record_id"]), list(z["labels"]), z["scores"]
  with open(os.path.join(folder, "manifest.csv"), encoding="utf-8") as f:
    finding_of = {os.path.splitext(r["path"])[0]: r["finding"] for r in csv.DictReader(f)}
  table = per_finding(scores, labels, [finding_of[str(r)] for r in record_id])
  o = table["overall"]
  result = {
    "workdir": workdir,
    "folder": folder,
    "folder_key": simulate.folder_name(seed, records),
    "records": records,
    "step": metrics["step"],
    "per_finding": table,
    "eval_top1": metrics.get("top1"),
    "eval_top5": metrics.get("top5"),
    "in_distribution": ind,
    "difference_points": None
    if ind is None
    else {k: round(100 * (o[k] - ind[k]), 1) for k in ("top1", "top5")},
  }
  result["table"] = format_table(result)
  paths.write_text(
    paths.join(workdir, "eval", "independent.json"),
    json.dumps(result, ensure_ascii=False, indent=1),
  )
  paths.write_text(paths.join(workdir, "eval", "independent.md"), result["table"] + "\n")
  return result
