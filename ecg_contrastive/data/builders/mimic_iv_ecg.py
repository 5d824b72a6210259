"""TFDS builder `mimic_iv_ecg`: MIMIC-IV-ECG 1.0 (PhysioNet) from its folder on local disk, with Japanese readings.

    python -m ecg_contrastive.main --config configs/default.py --workdir runs/mimic \
        --config.dataset=mimic_iv_ecg --config.source_dir=/data/mimic-iv-ecg-1.0

Source folder: `record_list.csv` (subject_id, study_id, file_name, ecg_time, path such as
files/p1000/p10000032/s40689238/40689238), `machine_measurements.csv` (subject_id, study_id, ...,
report_0 ... report_17: the cart's machine statements in English) and the WFDB records at `path`
(500 Hz, 10 s, 12 leads). Splits: 80/10/10 by a stable hash of subject_id (`hash_split`), so a
patient's studies stay in one split. `report` is the Japanese reading of the statements mapped to
vocabulary terms by the phrase table `resources/mimic_statements_ja.tsv`; `report_original` the
statements joined with "; ". Statements that give no term are counted in skipped_records.json; a
study none of whose statements maps to a term, or without a machine_measurements row, is skipped.
"""

from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

from ecg_contrastive.data.builders.local_source import (
  Listing,
  LocalEcgBuilder,
  RecordRow,
  csv_rows,
  hash_split,
  skip,
)
from ecg_contrastive.vocab import report_ja, term_maps

RECORDS = "record_list.csv"
MEASUREMENTS = "machine_measurements.csv"
_REPORT_COLUMN = re.compile(r"report_(\d+)$")


class MimicIvEcg(LocalEcgBuilder):
  """MIMIC-IV-ECG 12-lead ECGs with Japanese readings of their machine statements."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "MIMIC-IV-ECG 1.0, subject-hash splits, machine statements -> Japanese readings."
  }
  SOURCE_FILES = {
    RECORDS: ("subject_id", "study_id", "path"),
    MEASUREMENTS: ("subject_id", "study_id", "report_0"),
  }
  SOURCE_KIND = "MIMIC-IV-ECG 1.0"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Point source_dir (download_config.manual_dir) at the unpacked MIMIC-IV-ECG 1.0 folder: record_list.csv, "
    "machine_measurements.csv and files/."
  )

  def _list_records(self, source_dir: str) -> Listing:
    statements = _statements(os.path.join(source_dir, MEASUREMENTS))
    rows, skipped, mapped_all = [], [], []
    _, reader, f = csv_rows(os.path.join(source_dir, RECORDS), self.SOURCE_FILES[RECORDS])
    with f:
      for line in reader:
        record_id, patient_id = line["study_id"].strip(), line["subject_id"].strip()
        split, path = hash_split(patient_id), os.path.join(source_dir, line["path"].strip())
        texts = statements.get(record_id)
        if texts is None:
          skipped.append(
            skip(
              split, record_id, patient_id, path, f"no row for study {record_id} in {MEASUREMENTS}"
            )
          )
          continue
        mapped = term_maps.map_statements(texts)
        mapped_all.append(mapped)
        if not mapped.labels:
          skipped.append(
            skip(
              split, record_id, patient_id, path, f"no machine statement maps to a term: {texts}"
            )
          )
          continue
        rows.append(
          RecordRow(
            split,
            record_id,
            patient_id,
            path,
            report_ja.render(mapped.labels, mapped.suspected),
            "; ".join(texts),
            report_ja.ordered(mapped.labels),
            report_ja.primary_label(mapped.labels),
          )
        )
    return Listing(rows, skipped, term_maps.count_unmapped(mapped_all))


def _statements(path: str) -> dict[str, list[str]]:
  """study_id -> its non-empty machine statements, in report_0, report_1, ... order."""
  header, reader, f = csv_rows(path, MimicIvEcg.SOURCE_FILES[MEASUREMENTS])
  columns = sorted(
    (c for c in header if _REPORT_COLUMN.match(c)), key=lambda c: int(_REPORT_COLUMN.match(c)[1])
  )
  with f:
    return {
      line["study_id"].strip(): [t.strip() for t in (line[c] or "" for c in columns) if t.strip()]
      for line in reader
    }
