"""TFDS builder `ecg_manifest`: a hospital export described by a manifest (WFDB or .npy records + reports).

    python -m ecg_contrastive.main --config configs/default.py --workdir runs/hospital \
        --config.dataset=ecg_manifest --config.source_dir=/data/hospital_export

Source folder: `manifest.csv` (or `manifest.tsv`, UTF-8), one row per record:
  path        WFDB record (with or without .hea) or .npy file, relative to the manifest's folder (required)
  report      the reading, typically Japanese, used as is (required)
  record_id   default: path without its extension;   patient_id   default: record_id (one record per patient)
  split       train / validation / test; empty or no column: 80/10/10 by a stable hash of patient_id
  labels      ';'-separated vocabulary terms; empty or no column: the terms written verbatim in the report
  fs, units   sampling rate (Hz) and units (mV, uV, V) of a .npy record ((T, 12) or (12, T), leads I, II,
              III, aVR, aVL, aVF, V1-V6); WFDB headers carry their own
Labels outside the 98-term vocabulary are counted ("unmapped") and dropped; a record with no vocabulary
label, an empty report, an unknown split or a repeated record_id is skipped, like an unreadable waveform.
"""

from __future__ import annotations

import collections
import logging
import os

import tensorflow_datasets as tfds

from ecg_contrastive.data.builders.local_source import (
  SPLITS,
  Listing,
  LocalEcgBuilder,
  RecordRow,
  SourceError,
  csv_rows,
  hash_split,
  skip,
)
from ecg_contrastive.vocab import report_ja, terms

MANIFESTS = ("manifest.csv", "manifest.tsv")
REQUIRED = ("path", "report")


def manifest_name(source_dir: str) -> str:
  """The one manifest file of `source_dir`; raises SourceError if there is none or both."""
  present = [m for m in MANIFESTS if os.path.isfile(os.path.join(source_dir, m))]
  if len(present) != 1:
    raise SourceError(
      f"{source_dir}: "
      + ("no manifest" if not present else "both manifest.csv and manifest.tsv")
      + f"; put exactly one of {MANIFESTS} there with columns {list(REQUIRED)} (see docs/data.md)"
    )
  return present[0]


def _float(text: str | None) -> float | None:
  try:
    return float(text) if text and text.strip() else None
  except ValueError:
    return None


class EcgManifest(LocalEcgBuilder):
  """ECG records listed in a manifest with their reports (a hospital export)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Manifest of WFDB / .npy records with reports; split column or patient-hash splits."
  }
  SOURCE_KIND = "hospital export (manifest.csv + records)"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Point source_dir (download_config.manual_dir) at the folder holding manifest.csv "
    "(or manifest.tsv) and the records it lists."
  )

  @classmethod
  def source_files(cls, source_dir: str) -> dict[str, tuple[str, ...]]:
    return {manifest_name(source_dir): REQUIRED}

  def _list_records(self, source_dir: str) -> Listing:
    vocabulary = set(terms.term_names())
    rows, skipped, unmapped, first_row = [], [], collections.Counter(), {}
    header, reader, f = csv_rows(os.path.join(source_dir, manifest_name(source_dir)), REQUIRED)
    with f:
      for n, line in enumerate(reader, start=2):  # row 1 is the header
        relative = (line["path"] or "").strip()
        record_id = (line.get("record_id") or "").strip() or os.path.splitext(relative)[0]
        patient_id = (line.get("patient_id") or "").strip() or record_id
        split = (line.get("split") or "").strip() or hash_split(patient_id)
        path, report = os.path.join(source_dir, relative), (line["report"] or "").strip()
        problem = None
        if split not in SPLITS:
          split, problem = "", f"row {n}: split {split!r} is not one of {list(SPLITS)}"
        elif not relative or not report:
          problem = f"row {n}: empty " + ("path" if not relative else "report")
        elif record_id in first_row:
          problem = f"row {n}: record_id {record_id!r} repeats row {first_row[record_id]}"
        first_row.setdefault(record_id, n)
        cell = (line.get("labels") or "").strip()
        given = (
          [l.strip() for l in cell.split(";") if l.strip()]
          if cell
          else report_ja.terms_in_text(report)
        )
        unmapped.update(l for l in dict.fromkeys(given) if l not in vocabulary)
        labels = [l for l in given if l in vocabulary]
        if not problem and not labels:
          problem = (
            f"row {n}: no vocabulary term in its labels {given}"
            if cell
            else f"row {n}: no vocabulary term written in the report"
          ) + " (evaluation needs a primary label)"
        if problem:
          skipped.append(skip(split, record_id, patient_id, path, problem))
          continue
        rows.append(
          RecordRow(
            split,
            record_id,
            patient_id,
            path,
            report,
            report,
            report_ja.ordered(labels),
            report_ja.primary_label(labels),
            _float(line.get("fs")),
            (line.get("units") or "").strip() or None,
          )
        )
    return Listing(
      rows, skipped, dict(unmapped.most_common()), notes=_patient_overlap(rows, "split" in header)
    )


def _patient_overlap(rows: list[RecordRow], explicit: bool) -> dict:
  """Patients found in more than one split (possible only with an explicit split column); warns."""
  splits_of = collections.defaultdict(set)
  for r in rows:
    splits_of[r.patient_id].add(r.split)
  shared = sorted(p for p, s in splits_of.items() if len(s) > 1)
  if shared:
    logging.getLogger(__name__).warning(
      "ecg_manifest: %d patient(s) have records in more than one split "
      "(the split column says so), e.g. %s",
      len(shared),
      shared[:5],
    )
  return {
    "split_rule": "split column" if explicit else "hash of patient_id",
    "patients_in_several_splits": shared,
  }
