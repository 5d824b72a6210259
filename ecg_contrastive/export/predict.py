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
Missing leads: a record with fewer leads (one 'MLII', or I, II, V2) goes into the 12-lead frame with the others
zero (III, aVR, aVL, aVF are derived when I and II are there); the printout names the missing leads and stderr
says the model was trained on 12 (or, for a lead_mask model, that its mask tells it which leads are present).
OOD: each record gets an out-of-distribution score and its percentile among validation records (models/ood.py;
the reference is the workdir's or export folder's ood.json, of the same checkpoint step); above the threshold
percentile (--ood-percentile, default the reference's, 99) stderr warns that the ECG is unlike the training data.
Without a reference the run says "no OOD reference" once and prints no score.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Protocol

import numpy as np

from ecg_contrastive.checkpoints import restore_inference
from ecg_contrastive.ecg import preprocess, quality, signal
from ecg_contrastive.errors import UserError, one_line, want_traceback
from ecg_contrastive.export import ood as ood_files
from ecg_contrastive.export.flax_scorer import FlaxScorer
from ecg_contrastive.export.to_torch import load_exported
from ecg_contrastive.models import ood

BATCH = 32


class Scorer(Protocol):
  labels: list[dict]
  lead_mask: bool  # the model sees which leads are all zero

  def encode(self, ecg_mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (B, 5000, 12) mV -> (pooled features (B, 8 * width), unit-norm embeddings (B, embed_dim))."""

  def scores_of(self, embeddings: np.ndarray) -> np.ndarray:
    """(B, embed_dim) -> zero-shot scores (B, num_labels)."""

  def ood(self, features: np.ndarray, percentile: float | None = None) -> list[dict] | None:
    """(B, 8 * width) -> per record {"score", "validation_records", "percentile", "unfamiliar", "warning"};
    None: no OOD reference."""


class JaxScorer(FlaxScorer):
  """A workdir's checkpoint (FlaxScorer) with the workdir's OOD reference when it is of the same step."""

  def __init__(self, workdir: str, step: int | None = None):
    inference = restore_inference(workdir, step)
    super().__init__(inference)
    self.step = inference.step
    self.reference = ood_files.load(workdir)
    self.no_reference = None
    if self.reference is None:
      self.no_reference = ood.no_reference_note(workdir)
    elif self.reference.meta.get("step") != self.step:
      self.no_reference = (
        f"the OOD reference in {workdir} is of step {self.reference.meta.get('step')}, not of step "
        f"{self.step}: no OOD score; compute it for this step with `python -m ecg_contrastive.main --mode ood "
        f"--workdir {workdir} --step {self.step} --config CONFIG`"
      )
      self.reference = None

  def ood(self, features: np.ndarray, percentile: float | None = None) -> list[dict] | None:
    return None if self.reference is None else self.reference.assess(features, percentile)


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
    self.lead_mask = bool(getattr(self.module, "lead_mask", False))
    self.has_features = hasattr(
      self.module, "features"
    )  # an export folder from before the OOD score: none
    has_reference = getattr(self.module, "ood_reference", None) is not None
    self.no_reference = None if has_reference else ood.no_reference_note(folder)

  def encode(self, ecg_mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
      ecg = torch.from_numpy(np.ascontiguousarray(ecg_mv.transpose(0, 2, 1)))
      if not self.has_features:
        return np.zeros((len(ecg_mv), 0), np.float32), self.module(ecg).numpy()
      features = self.module.features(ecg)
      return features.numpy(), self.module.embed(features).numpy()

  def scores_of(self, embeddings: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
      emb = torch.from_numpy(np.ascontiguousarray(embeddings))
      return (self.module.scale() * emb @ self.module.label_embeddings.T).numpy()

  def scores(self, ecg_mv: np.ndarray) -> np.ndarray:
    return self.scores_of(self.encode(ecg_mv)[1])

  def ood(self, features: np.ndarray, percentile: float | None = None) -> list[dict] | None:
    if self.no_reference is not None:
      return None
    import torch

    return self.module.ood_of(torch.from_numpy(np.ascontiguousarray(features)), percentile)


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
    scorer = JaxScorer(workdir, step)
    return scorer, f"JAX checkpoint {workdir} step {scorer.step}"
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
  return predict_with_ood(scorer, ecgs, k)[0]


def predict_with_ood(
  scorer: Scorer, ecgs: np.ndarray, k: int = 5, percentile: float | None = None
) -> tuple[list[list[dict]], list[dict] | None]:
  """float32 (B, 5000, 12) mV -> (per record the top-k findings, per record the OOD assessment
  {"score", "validation_records", "percentile", "unfamiliar", "warning"} or None without an OOD reference);
  percentile: the threshold (default the reference's)."""
  encoded = [scorer.encode(ecgs[i : i + BATCH]) for i in range(0, len(ecgs), BATCH)]
  features = np.concatenate([f for f, _ in encoded])
  embeddings = np.concatenate([e for _, e in encoded])
  return top_k(scorer.scores_of(embeddings), scorer.labels, k), scorer.ood(features, percentile)


def read_record(
  path: str, rate: float | None = None, units: str | None = None, leads: list[str] | None = None
) -> preprocess.Record:
  """preprocess.read_record, but a record with fewer than 12 leads goes into the 12-lead frame with the missing
  ones zero (III, aVR, aVL, aVF still derived when I and II are recorded); record.leads.missing names them."""
  if path.endswith(".npy"):
    if rate is None or units is None:
      return preprocess.read_record(path, rate, units, leads)  # its one-line error
    names = list(leads or signal.LEADS)
    preprocess.check_lead_names(names, f"{path} (--leads)")
    rate = preprocess.check_rate(rate, path, "--fs")
    values = preprocess.load_npy(path, units, names)
  else:
    values, rate, names = preprocess.load_wfdb(path)
  missing = quality.missing_leads(names)
  if len(missing) == signal.NUM_LEADS:
    raise preprocess.BadRecordError(
      f"no ECG lead: {path}: its channels {names} hold none of {', '.join(signal.LEADS)} (or an alias such as "
      "MLII); name the columns with --leads (.npy) or fix the header's signal names"
    )
  if missing:
    values = np.concatenate([values, np.zeros((len(values), len(missing)))], axis=1)
  record = preprocess.standardize(values, rate, list(names) + missing, what=path)
  quality.mark_missing(record.leads, missing)
  return record


def missing_leads_note(record: preprocess.Record, lead_mask: bool) -> str | None:
  """What the model makes of zero-filled leads, or None when all 12 are there."""
  if record.leads is None or not record.leads.missing:
    return None
  return f"missing lead(s) {', '.join(record.leads.missing)} zero-filled: " + (
    "the model's lead mask tells it which leads are present"
    if lead_mask
    else "the model was trained on 12 leads, so findings that depend on the missing leads are guesses"
  )


def format_ood(assessment: dict | None) -> str | None:
  """The record's OOD line, or None without a reference."""
  if assessment is None:
    return None
  share = ood.share_text(assessment["percentile"], assessment["validation_records"])
  return f"  OOD score {assessment['score']:.3f}: {share}" + (
    "  [unlike the training data: warning on stderr]" if assessment["unfamiliar"] else ""
  )


def format_findings(
  path: str, record: preprocess.Record, findings: list[dict], assessment: dict | None = None
) -> str:
  """A readable block: the record, its rate and duration, its leads, its OOD score, then one line per finding."""
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
  if format_ood(assessment):
    lines.append(format_ood(assessment))
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
  parser.add_argument(
    "--ood-percentile",
    type=float,
    default=None,
    help="warn when a record's OOD score is above this percentile of validation records' (default: the "
    "reference's, 99)",
  )
  parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
  parser.add_argument("records", nargs="+", help="WFDB record paths or .npy files")
  args = parser.parse_args(argv)
  if args.top_k < 1:
    parser.error(f"--top-k {args.top_k}: give a positive number of findings per record, e.g. 5")
  if args.ood_percentile is not None and not 0 <= args.ood_percentile < 100:
    parser.error(
      f"--ood-percentile {args.ood_percentile:g}: give a percentile in [0, 100), e.g. 99"
    )
  leads = [name.strip() for name in args.leads.split(",")] if args.leads else None
  try:
    records = [read_record(path, args.fs, args.units, leads) for path in args.records]
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
    note = missing_leads_note(record, scorer.lead_mask)
    if note:
      print(f"warning: {path}: {note}", file=sys.stderr)
  if scorer.no_reference:
    print(f"note: {scorer.no_reference}", file=sys.stderr)
  findings, assessments = predict_with_ood(
    scorer, np.stack([r.ecg for r in records]), args.top_k, args.ood_percentile
  )
  assessments = assessments or [None] * len(records)
  for path, assessment in zip(args.records, assessments):
    if assessment and assessment["warning"]:
      print(f"warning: {path}: {assessment['warning']}", file=sys.stderr)
  print(f"model: {description}")
  for path, record, found, assessment in zip(args.records, records, findings, assessments):
    print(format_findings(path, record, found, assessment))


if __name__ == "__main__":
  main()
