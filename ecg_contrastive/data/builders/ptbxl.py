"""TFDS builder `ptbxl`: PTB-XL 1.0.3 (PhysioNet) from its folder on local disk, with Japanese readings.

    python -m ecg_contrastive.main --config configs/default.py --workdir runs/ptbxl \
        --config.dataset=ptbxl --config.source_dir=/data/ptb-xl-1.0.3

Source folder (as unpacked from PhysioNet): `ptbxl_database.csv` (ecg_id, patient_id, report,
scp_codes, strat_fold, filename_hr, ...), `scp_statements.csv`, `records500/00000/00001_hr.hea/.dat`
(500 Hz, 10 s, 12 leads, mV). Splits follow `strat_fold`: 1-8 train, 9 validation, 10 test (the
recommended split; a patient's records share a fold). `report` is the Japanese reading of the record's
SCP statements mapped to vocabulary terms (`resources/ptbxl_scp_ja.tsv`; likelihood <= 50 -> 〜の疑い),
`report_original` PTB-XL's own (German / English) report, `primary_label` by `report_ja.primary_label`.
Codes without a term are counted in skipped_records.json ("unmapped"); a record none of whose codes
maps to a term is skipped, like one whose waveform cannot be read.
"""

from __future__ import annotations

import ast
import collections
import os

import tensorflow_datasets as tfds

from ecg_contrastive.data.builders.local_source import (
  Listing,
  LocalEcgBuilder,
  RecordRow,
  csv_rows,
  skip,
)
from ecg_contrastive.vocab import report_ja, term_maps

DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
FOLD_SPLIT = {**{f: "train" for f in range(1, 9)}, 9: "validation", 10: "test"}


def _number(value: str) -> int | None:
  """'15709.0' -> 15709 (PTB-XL writes ids as floats); an empty or unreadable cell -> None."""
  try:
    return int(float(value))
  except ValueError:
    return None


class Ptbxl(LocalEcgBuilder):
  """PTB-XL 12-lead ECGs (500 Hz records) with Japanese readings of their SCP statements."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "PTB-XL 1.0.3 at 500 Hz, strat_fold splits, SCP codes -> Japanese readings."
  }
  SOURCE_FILES = {
    DATABASE: ("ecg_id", "patient_id", "report", "scp_codes", "strat_fold", "filename_hr"),
    STATEMENTS: (),
  }
  SOURCE_KIND = "PTB-XL 1.0.3"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Point source_dir (download_config.manual_dir) at the unpacked PTB-XL 1.0.3 folder: ptbxl_database.csv, "
    "scp_statements.csv and records500/."
  )

  def _list_records(self, source_dir: str) -> Listing:
    known = _statement_codes(os.path.join(source_dir, STATEMENTS))
    rows, skipped, mapped_all, undefined = [], [], [], collections.Counter()
    _, reader, f = csv_rows(os.path.join(source_dir, DATABASE), self.SOURCE_FILES[DATABASE])
    with f:
      for line in reader:
        path = os.path.join(source_dir, line["filename_hr"])
        split = FOLD_SPLIT.get(_number(line["strat_fold"]))
        ecg_id, patient = _number(line["ecg_id"]), _number(line["patient_id"] or "-1")
        record_id = line["ecg_id"] if ecg_id is None else f"{ecg_id:05d}"
        if ecg_id is None or patient is None:
          skipped.append(
            skip(
              split or "",
              record_id,
              line["patient_id"],
              path,
              f"unreadable ecg_id {line['ecg_id']!r} or patient_id {line['patient_id']!r}",
            )
          )
          continue
        patient_id = str(patient)
        if split is None:
          skipped.append(
            skip("", record_id, patient_id, path, f"strat_fold {line['strat_fold']!r} is not 1-10")
          )
          continue
        try:
          codes = ast.literal_eval(line["scp_codes"])
          codes = {str(k): float(v) for k, v in codes.items()}
        except (ValueError, SyntaxError, AttributeError, TypeError) as e:
          skipped.append(
            skip(
              split, record_id, patient_id, path, f"unreadable scp_codes {line['scp_codes']!r}: {e}"
            )
          )
          continue
        mapped = term_maps.map_scp_codes(codes)
        undefined.update(c for c in codes if c not in known)
        mapped_all.append(mapped)
        if not mapped.labels:
          skipped.append(
            skip(
              split,
              record_id,
              patient_id,
              path,
              f"no SCP statement maps to a term: {sorted(codes)}",
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
            line["report"].strip(),
            report_ja.ordered(mapped.labels),
            report_ja.primary_label(mapped.labels),
          )
        )
    return Listing(
      rows,
      skipped,
      term_maps.count_unmapped(mapped_all),
      notes={"codes_not_in_scp_statements": dict(undefined.most_common())},
    )


def _statement_codes(path: str) -> set[str]:
  """The SCP codes scp_statements.csv defines (its first, unnamed column)."""
  header, reader, f = csv_rows(path)
  with f:
    return {line[header[0]].strip() for line in reader}
