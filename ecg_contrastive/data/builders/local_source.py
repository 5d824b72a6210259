"""The shared base of the builders that read real records from a folder on local disk (nothing is downloaded).

    builder = tfds.builder("ptbxl", data_dir=...)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="/data/ptb-xl-1.0.3"))

A subclass names the files it needs (SOURCE_FILES: file -> required columns, checked by `check_source`
before any work) and lists the records (`_list_records` -> Listing: one RecordRow per usable row, the
rows it had to skip with their reason, the statements that mapped to no term). The base reads the
waveforms (`ecg.reader`, in worker processes for more than one chunk), brings each to int16
(5000, 12) microvolts at 500 Hz and writes the examples. Nothing is lost silently: every skipped record,
from listing or reading, is counted and listed with its reason in `<dataset dir>/skipped_records.json`
(read back into `EcgSource.skipped` by the cache) and a warning names how many.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os

import tensorflow_datasets as tfds

from ecg_contrastive.data import cache
from ecg_contrastive.data.builders.features import CONTRACT, ecg_report_features
from ecg_contrastive.data.builders.tf_free import plain_file_spill
from ecg_contrastive.data.builders.workers import worker_count
from ecg_contrastive.errors import UserError

SPLITS = ("train", "validation", "test")
HASH_SPLIT_PERCENT = (("train", 80), ("validation", 90), ("test", 100))  # cumulative
READ_CHUNK = 64  # records per worker task
log = logging.getLogger(__name__)


class SourceError(UserError, ValueError):
  """The source folder, a file in it or a column is missing or unreadable; the message says what to do."""


@dataclasses.dataclass
class RecordRow:
  """One record to read: where its waveform is and everything else its example carries."""

  split: str
  record_id: str
  patient_id: str
  path: str  # absolute: a WFDB record (no extension) or a .npy file
  report: str  # Japanese
  report_original: str  # the source's own text
  labels: list[str]  # vocabulary terms, reading order
  primary_label: str
  fs: float | None = None  # .npy only
  units: str | None = None  # .npy only


@dataclasses.dataclass
class Listing:
  rows: list[RecordRow]
  skipped: list[dict]  # {split, record_id, patient_id, path, reason} of rows left out while listing
  unmapped: dict[
    str, int
  ]  # source code / statement -> number of records where it mapped to no term
  notes: dict = dataclasses.field(
    default_factory=dict
  )  # builder-specific counts for the build report


def skip(split: str, record_id: str, patient_id: str, path: str, reason: str) -> dict:
  return {
    "split": split,
    "record_id": record_id,
    "patient_id": patient_id,
    "path": path,
    "reason": reason,
  }


def hash_split(key: str) -> str:
  """train / validation / test (80/10/10) from a stable hash of `key` (a patient id): same key, same split."""
  bucket = int.from_bytes(hashlib.sha256(key.strip().encode("utf-8")).digest()[:8], "big") % 100
  return next(split for split, upper in HASH_SPLIT_PERCENT if bucket < upper)


def csv_rows(path: str, required: tuple[str, ...] = ()) -> tuple[list[str], csv.DictReader, object]:
  """(header, DictReader, open file) of a UTF-8 CSV (',' or, for .tsv, tab); raises SourceError naming
  the path when it is missing, not UTF-8 or lacks a column of `required`. Close the file when done."""
  if not os.path.isfile(path):
    raise SourceError(
      f"{path}: file not found; the source folder must hold it as in the original layout "
      "(see docs/data.md)"
    )
  f = open(path, encoding="utf-8-sig", newline="")
  try:
    reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
    header = [h.strip() for h in (reader.fieldnames or [])]
  except UnicodeDecodeError as e:
    f.close()
    raise SourceError(
      f"{path}: not UTF-8 ({e}); convert it, e.g. iconv -f SHIFT_JIS -t UTF-8"
    ) from e
  missing = [c for c in required if c not in header]
  if missing:
    f.close()
    raise SourceError(f"{path}: missing column(s) {missing}; it has {header}")
  reader.fieldnames = header
  return header, reader, f


def _read_in_order(rows: list[RecordRow]):
  """Yields (row, int16 (5000, 12) array or skip reason) in row order; chunks run in worker processes."""
  from ecg_contrastive.ecg import reader  # here: wfdb and pandas load only when records are read

  items = [(r.path, r.fs, r.units) for r in rows]
  chunks = [items[i : i + READ_CHUNK] for i in range(0, len(items), READ_CHUNK)]
  workers = min(worker_count(), len(chunks))
  results = (reader.read_many(c) for c in chunks)
  if workers > 1:
    context = multiprocessing.get_context("spawn")  # never fork a process that may run JAX threads
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    results = _bounded(pool, chunks, window=2 * workers)
  done = 0
  for chunk_results in results:
    for result in chunk_results:
      yield rows[done], result
      done += 1


def _bounded(pool: concurrent.futures.ProcessPoolExecutor, chunks: list, window: int):
  """pool.map(read_many, chunks) in order, with at most `window` chunks in flight (bounded memory)."""
  from ecg_contrastive.ecg import reader

  with pool:
    pending = collections.deque()
    for chunk in chunks:
      pending.append(pool.submit(reader.read_many, chunk))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


class LocalEcgBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the real-data builders; subclasses set SOURCE_FILES, MANUAL_DOWNLOAD_INSTRUCTIONS, _list_records."""

  SOURCE_FILES: dict[str, tuple[str, ...]] = {}
  SOURCE_KIND = "local records"

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @classmethod
  def check_source(cls, source_dir: str) -> None:
    """Raises SourceError (naming the path and what to do) unless `source_dir` has the files and columns."""
    if not source_dir or not os.path.isdir(source_dir):
      raise SourceError(
        f"{cls.name}: source folder {source_dir!r} does not exist; point config.source_dir "
        f"(--config.source_dir=/path) at the {cls.SOURCE_KIND} folder"
      )
    for name, columns in cls.source_files(source_dir).items():
      _, _, f = csv_rows(os.path.join(source_dir, name), columns)
      f.close()

  @classmethod
  def source_files(cls, source_dir: str) -> dict[str, tuple[str, ...]]:
    """File (relative to the source folder) -> required columns."""
    del source_dir
    return cls.SOURCE_FILES

  def _list_records(self, source_dir: str) -> Listing:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=f"{self.SOURCE_KIND}: {CONTRACT} with Japanese reports.",
      features=ecg_report_features("report_original"),
      supervised_keys=None,
    )

  def _download_and_prepare(self, dl_manager, download_config):
    self._build_report = {"dataset": self.name, "version": str(self.version), "skipped": []}
    with plain_file_spill():
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    self._write_build_report()

  def _split_generators(self, dl_manager):
    try:
      source_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS: the manual folder does not exist or is empty
      raise SourceError(
        f"{self.name}: {e}. Point config.source_dir (--config.source_dir=/path) at the "
        f"{self.SOURCE_KIND} folder"
      ) from e
    self.check_source(source_dir)
    listing = self._list_records(source_dir)
    self._build_report.update(
      source_dir=os.path.abspath(source_dir),
      records_listed=len(listing.rows) + len(listing.skipped),
      unmapped=listing.unmapped,
      **listing.notes,
    )
    self._build_report["skipped"].extend(listing.skipped)
    if listing.unmapped:
      log.warning(
        "%s: %d distinct source statement(s) map to no vocabulary term (counted in %s), most frequent: %s",
        self.name,
        len(listing.unmapped),
        cache.BUILD_SKIPS_FILE,
        list(listing.unmapped.items())[:5],
      )
    by_split = {s: [r for r in listing.rows if r.split == s] for s in SPLITS}
    empty = [s for s, rows in by_split.items() if not rows]
    if len(empty) == len(SPLITS):
      raise SourceError(
        f"{self.name}: no usable record in {source_dir}; see the reasons: "
        f"{[s['reason'] for s in listing.skipped[:5]]}"
      )
    if empty:
      log.warning("%s: split(s) %s have no records and are left out", self.name, empty)
    return {s: self._generate_examples(s, rows) for s, rows in by_split.items() if rows}

  def _generate_examples(self, split: str, rows: list[RecordRow]):
    for row, result in _read_in_order(rows):
      if isinstance(result, str):
        self._build_report["skipped"].append(
          skip(split, row.record_id, row.patient_id, row.path, result)
        )
        continue
      yield (
        row.record_id,
        {
          "ecg": result,
          "report": row.report,
          "report_original": row.report_original,
          "labels": row.labels,
          "primary_label": row.primary_label,
          "record_id": row.record_id,
          "patient_id": row.patient_id,
        },
      )

  def _write_build_report(self) -> None:
    """skipped_records.json beside the shards: counts per split, unmapped statements, the skip list with reasons."""
    built, skipped = self._build_report, self._build_report.pop("skipped")
    report = {
      **{
        k: built.pop(k)
        for k in ("dataset", "version", "source_dir", "records_listed")
        if k in built
      },
      "records_kept": {s: int(info.num_examples) for s, info in self.info.splits.items()},
      "skipped_count": dict(collections.Counter(s["split"] for s in skipped)),
      **built,
      "skipped": skipped,
    }
    path = os.path.join(os.fspath(self.data_dir), cache.BUILD_SKIPS_FILE)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(report, f, ensure_ascii=False, indent=1)
    if skipped:
      log.warning(
        "%s: %d of %d record(s) skipped (listed with reasons in %s), e.g. %s",
        self.name,
        len(skipped),
        report.get("records_listed", 0),
        cache.BUILD_SKIPS_FILE,
        [(s["record_id"], s["reason"]) for s in skipped[:3]],
      )
