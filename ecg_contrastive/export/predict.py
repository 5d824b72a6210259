"""Top-k zero-shot findings (Japanese and English) for your own ECGs, from either model form.

  python -m ecg_contrastive.export.predict --workdir runs/demo [--step N] RECORD ...
  python -m ecg_contrastive.export.predict --exported exports/demo RECORD ...
  python -m ecg_contrastive.export.predict --exported exports/demo --label-set ptbxl_superclass RECORD ...

--label-set scores one of the export folder's label_sets/ (written by `python -m ecg_contrastive.main --mode
label_set`), with PyTorch only: the label embeddings were computed by the text tower beforehand.

RECORD is a WFDB record (`path/rec`, `rec.hea` or `rec.dat`) or a `.npy` array; for `.npy` give
--fs and --units (and --leads if not I,II,III,aVR,aVL,aVF,V1..V6). Every record goes through the
training standardisation (preprocess.py); both model forms compute in float32 and print the same
findings: the JAX checkpoint via FlaxScorer, the export via its own modeling_ecg.py.
A file or model that cannot be used stops the run with one line `error: ...` naming it (exit code 2): a missing,
truncated or unreadable file, a wrong shape, NaN/inf samples, a rate outside 50..20000 Hz, a record under 5 s, a
flat signal, an unknown name in --leads. A record between 5 and 10 s is zero-padded to 10 s, with a warning on stderr.
Each record's printout says which leads were present (recorded, derived from I and II, read from an alias such as
MLII); stderr warns, naming the leads, about flat, clipped, noisy or implausibly large leads and ignored channels
(ecg/quality.py): the model saw 12 live leads, so such findings deserve less trust.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Protocol

import numpy as np

from ecg_contrastive.checkpoints import restore_inference
from ecg_contrastive.ecg import preprocess
from ecg_contrastive.errors import UserError, one_line, want_traceback
from ecg_contrastive.export.flax_scorer import FlaxScorer
from ecg_contrastive.export.to_torch import load_exported

BATCH = 32


class Scorer(Protocol):
  labels: list[dict]

  def scores(self, ecg_mv: np.ndarray) -> np.ndarray:
    """float32 (B, 5000, 12) mV -> zero-shot scores (B, num_labels)."""


class TorchScorer:
  """An export folder, loaded with its own modeling_ecg.py, behind the FlaxScorer interface."""

  def __init__(self, folder: str, label_set: str | None = None):
    if not os.path.isfile(os.path.join(folder, "modeling_ecg.py")):
      raise FileNotFoundError(
        f"{folder!r} is not an export folder (no modeling_ecg.py); write one with "
        "`python -m ecg_contrastive.main --mode export --workdir RUN --export_dir FOLDER`"
      )
    self.module = load_exported(folder, label_set)
    self.labels = self.module.labels

  def scores(self, ecg_mv: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
      return self.module.scores(
        torch.from_numpy(np.ascontiguousarray(ecg_mv.transpose(0, 2, 1)))
      ).numpy()


def open_scorer(
  workdir: str | None = None,
  exported: str | None = None,
  step: int | None = None,
  label_set: str | None = None,
) -> tuple[Scorer, str]:
  """(scorer, description) for a training workdir (JAX) or an export folder (PyTorch; label_set: one of its
  label_sets/)."""
  if (workdir is None) == (exported is None):
    raise ValueError("give exactly one of a training workdir or an export folder")
  if label_set and workdir is not None:
    raise ValueError(
      "--label-set works with --exported: write the label set into the export folder with "
      "`python -m ecg_contrastive.main --mode label_set --workdir RUN --export_dir FOLDER --config CONFIG "
      "--config.eval.label_set=NAME`"
    )
  if workdir is not None:
    inference = restore_inference(workdir, step)
    return FlaxScorer(inference), f"JAX checkpoint {workdir} step {inference.step}"
  return TorchScorer(exported, label_set), f"PyTorch export {exported}" + (
    f", label set {label_set}" if label_set else ""
  )


def top_k(scores: np.ndarray, labels: list[dict], k: int) -> list[list[dict]]:
  """(B, N) scores -> per record the k best labels with "score" and "probability" (softmax over N)."""
  shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
  probs = shifted / shifted.sum(axis=1, keepdims=True)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return [
    [dict(labels[j], score=float(scores[i, j]), probability=float(probs[i, j])) for j in row]
    for i, row in enumerate(order)
  ]


def predict(scorer: Scorer, ecgs: np.ndarray, k: int = 5) -> list[list[dict]]:
  """float32 (B, 5000, 12) mV -> per record the top-k findings (see top_k)."""
  scores = np.concatenate([scorer.scores(ecgs[i : i + BATCH]) for i in range(0, len(ecgs), BATCH)])
  return top_k(scores, scorer.labels, k)


def format_findings(path: str, record: preprocess.Record, findings: list[dict]) -> str:
  """A readable block: the record, its rate and duration, then one line per finding."""
  note = (
    ""
    if record.duration_s == 10
    else (" -> first 10 s" if record.duration_s > 10 else " -> zero-padded to 10 s")
  )
  lines = [f"{path}  ({record.rate:g} Hz, {record.duration_s:.2f} s{note})"]
  if record.leads is not None:
    problems = len(record.leads.warnings())
    lines.append(
      f"  {record.leads.summary()}" + (f"  [{problems} warning(s) on stderr]" if problems else "")
    )
  for rank, f in enumerate(findings, 1):
    lines.append(
      f"  {rank}. {f['ja']} / {f['en']}  [{f['group_ja']} / {f['group_en']}]  "
      f"score {f['score']:.3f}  p {f['probability']:.3f}"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  model = parser.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir", help="training workdir (JAX checkpoint)")
  model.add_argument("--exported", help="export folder written by ecg_contrastive.export.to_torch")
  parser.add_argument(
    "--step", type=int, default=None, help="with --workdir: checkpoint step (default: latest)"
  )
  parser.add_argument("--fs", type=float, default=None, help=".npy only: sampling rate in Hz")
  parser.add_argument("--units", choices=("uV", "mV"), default=None, help=".npy only: sample units")
  parser.add_argument(
    "--leads", default=None, help=".npy only: comma-separated lead names in column order"
  )
  parser.add_argument("--top-k", type=int, default=5)
  parser.add_argument(
    "--label-set", default=None, help="with --exported: a label set of the folder's label_sets/"
  )
  parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
  parser.add_argument("records", nargs="+", help="WFDB record paths or .npy files")
  args = parser.parse_args(argv)
  if args.top_k < 1:
    parser.error(f"--top-k {args.top_k}: give a positive number of findings per record, e.g. 5")
  leads = [name.strip() for name in args.leads.split(",")] if args.leads else None
  try:
    records = [preprocess.read_record(path, args.fs, args.units, leads) for path in args.records]
    for path, record in zip(args.records, records):
      if record.duration_s < preprocess.signal.DURATION_S:
        print(
          f"warning: {path}: {record.duration_s:.2f} s, zero-padded to {preprocess.signal.DURATION_S} s; "
          "findings of a short record are less reliable",
          file=sys.stderr,
        )
    scorer, description = open_scorer(args.workdir, args.exported, args.step, args.label_set)
  except (UserError, FileNotFoundError, ValueError) as e:
    if args.verbose or want_traceback():
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
  # lead warnings after the model opened: an unusable model stays one line alone
  for path, record in zip(args.records, records):
    for warning in record.leads.warnings() if record.leads else []:
      print(f"warning: {path}: {warning}", file=sys.stderr)
  findings = predict(scorer, np.stack([r.ecg for r in records]), args.top_k)
  print(f"model: {description}")
  for path, record, found in zip(args.records, records, findings):
    print(format_findings(path, record, found))


if __name__ == "__main__":
  main()
