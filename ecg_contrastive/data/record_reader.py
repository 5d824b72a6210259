"""Reads one record from disk (WFDB or .npy) into the storage contract, or says why it cannot.

    ecg = read_ecg("records500/00000/00001_hr")           # int16 (5000, 12) microvolts, 500 Hz, LEADS order
    ecg = read_ecg("x.npy", fs=250, units="uV")           # (T, 12) or (12, T), leads in LEADS order
    results = read_many([("a", None, None), ...])        # per record: the int16 array, or the reason (str)

Conversion is `signal.standardize` (resample to 500 Hz, leads by name, first 10 s, int16 uV) after
the loaders of `export.preprocess` (units per channel, .npy shapes), as in the predictor. A record
that cannot be used raises RecordError whose message starts with its kind: "missing file", "truncated file",
"unreadable", "bad signal" (NaN/inf, missing leads, beyond +-32.767 mV), "too short" (under
MIN_DURATION_S), "flat signal" (every lead constant). No TensorFlow / TFDS import: worker processes
of the dataset builders import only this module.
"""

from __future__ import annotations

import math
import os

import numpy as np
import wfdb

from ecg_contrastive.data import signal
from ecg_contrastive.export.preprocess import LeadShapeError, load_npy, load_wfdb, wfdb_base

MIN_DURATION_S = 5.0
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3,
                     "311": 4 / 3}


class RecordError(ValueError):
  """A record that cannot be brought to the contract; str(error) is the reason listed with the skip."""


def _check_dat_files(base: str, header: wfdb.Record) -> None:
  """Every signal file exists and holds at least the samples the header promises."""
  folder = os.path.dirname(base)
  files: dict[str, list[int]] = {}
  for i, name in enumerate(header.file_name or []):
    files.setdefault(name, []).append(i)
  for name, channels in files.items():
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      raise RecordError(f"missing file: {path}")
    per_sample = _BYTES_PER_SAMPLE.get(str(header.fmt[channels[0]]))
    if per_sample is None or not header.sig_len:
      continue
    offset = int((header.byte_offset or [0] * header.n_sig)[channels[0]] or 0)
    needed = offset + math.ceil(header.sig_len * len(channels) * per_sample)
    size = os.path.getsize(path)
    if size < needed:
      raise RecordError(f"truncated file: {path} has {size} bytes, its header needs {needed}")


def _to_contract(values: np.ndarray, rate: float, leads: list[str], what: str) -> np.ndarray:
  """(T, C) float mV -> int16 (5000, 12), with the checks that make a record unusable."""
  if values.shape[0] < MIN_DURATION_S * rate:
    raise RecordError(f"too short: {values.shape[0] / rate:.2f} s, at least {MIN_DURATION_S:g} s needed")
  try:
    ecg = signal.standardize(values, rate, leads, mv_per_unit=1.0, what=what)
  except ValueError as e:
    raise RecordError(f"bad signal: {e}") from e
  if np.all(ecg.max(axis=0) == ecg.min(axis=0)):
    raise RecordError("flat signal: every lead is constant")
  return ecg


def read_wfdb(path: str) -> np.ndarray:
  """WFDB record (path with or without .hea/.dat) -> int16 (5000, 12); each channel's units converted."""
  base = wfdb_base(path)
  if not os.path.exists(base + ".hea"):
    raise RecordError(f"missing file: {base}.hea")
  try:
    header = wfdb.rdheader(base)
  except Exception as e:  # noqa: BLE001 (any parser failure means the header is unusable)
    raise RecordError(f"unreadable: header {base}.hea: {type(e).__name__}: {e}") from e
  _check_dat_files(base, header)
  try:
    values, rate, leads = load_wfdb(base)
  except Exception as e:  # noqa: BLE001
    raise RecordError(f"unreadable: {base}: {type(e).__name__}: {e}") from e
  return _to_contract(values, rate, leads, base)


def read_npy(path: str, fs: float, units: str) -> np.ndarray:
  """.npy (T, 12) or (12, T), leads in signal.LEADS order, in `units` at `fs` Hz -> int16 (5000, 12)."""
  if not os.path.exists(path):
    raise RecordError(f"missing file: {path}")
  try:
    values = load_npy(path, units, list(signal.LEADS))
  except LeadShapeError as e:
    raise RecordError(f"bad signal: {e}") from e
  except Exception as e:  # noqa: BLE001
    raise RecordError(f"unreadable: {path}: {type(e).__name__}: {e}") from e
  return _to_contract(values, float(fs), list(signal.LEADS), path)


def read_ecg(path: str, fs: float | None = None, units: str | None = None) -> np.ndarray:
  """int16 (5000, 12) of a WFDB record or, for a .npy path, an array at `fs` Hz in `units`."""
  if path.endswith(".npy"):
    if not fs or not units:
      raise RecordError(f"bad signal: {path}: a .npy record needs its sampling rate (fs) and units")
    return read_npy(path, fs, units)
  return read_wfdb(path)


def read_many(items: list[tuple[str, float | None, str | None]]) -> list[np.ndarray | str]:
  """(path, fs, units) per record -> its int16 (5000, 12) array, or the reason it was skipped."""
  out: list[np.ndarray | str] = []
  for path, fs, units in items:
    try:
      out.append(read_ecg(path, fs, units))
    except RecordError as e:
      out.append(str(e))
    except Exception as e:  # noqa: BLE001 (one odd file must not stop a build; it is listed instead)
      out.append(f"unreadable: {path}: {type(e).__name__}: {e}")
  return out
