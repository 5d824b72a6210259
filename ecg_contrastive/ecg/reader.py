"""Reads one record from disk (WFDB or .npy) into the storage contract, or says why it cannot.

    ecg = read_ecg("records500/00000/00001_hr")           # int16 (5000, 12) microvolts, 500 Hz, LEADS order
    ecg = read_ecg("x.npy", fs=250, units="uV")           # (T, 12) or (12, T), leads in LEADS order
    results = read_many([("a", None, None), ...])        # per record: the int16 array, or the reason (str)

Conversion is `export.preprocess.to_contract` (signal.standardize: resample to 500 Hz, leads by name, first 10 s,
int16 uV) after the loaders of `export.preprocess` (units per channel, .npy shapes), as in the predictor. A record
that cannot be used raises RecordError whose message starts with its kind: "missing file", "truncated file",
"unreadable", "bad rate" (not an ECG sampling rate), "bad signal" (NaN/inf, missing leads, beyond +-32.767 mV,
a wrong array shape), "too short" (under MIN_DURATION_S), "flat signal" (every lead constant). No TensorFlow /
TFDS import: worker processes of the dataset builders import only this module.
"""

from __future__ import annotations

import numpy as np

from ecg_contrastive.ecg import signal
from ecg_contrastive.ecg.preprocess import (
  MIN_DURATION_S,
  BadRecordError,
  check_rate,
  is_flat,
  load_npy,
  load_wfdb,
  to_contract,
)
from ecg_contrastive.errors import UserError

__all__ = ["MIN_DURATION_S", "RecordError", "read_ecg", "read_many", "read_npy", "read_wfdb"]


class RecordError(UserError, ValueError):
  """A record that cannot be brought to the contract; str(error) is the reason listed with the skip."""


def _to_contract(values: np.ndarray, rate: float, leads: list[str], what: str) -> np.ndarray:
  """(T, C) float mV -> int16 (5000, 12), with the checks that make a record unusable."""
  try:
    ecg = to_contract(values, rate, leads, what)
  except BadRecordError as e:
    raise RecordError(str(e)) from e
  if is_flat(ecg):
    raise RecordError("flat signal: every lead is constant")
  return ecg


def read_wfdb(path: str) -> np.ndarray:
  """WFDB record (path with or without .hea/.dat) -> int16 (5000, 12); each channel's units converted."""
  try:
    values, rate, leads = load_wfdb(path)
  except BadRecordError as e:
    raise RecordError(str(e)) from e
  return _to_contract(values, rate, leads, path)


def read_npy(path: str, fs: float, units: str) -> np.ndarray:
  """.npy (T, 12) or (12, T), leads in signal.LEADS order, in `units` at `fs` Hz -> int16 (5000, 12)."""
  try:
    rate = check_rate(fs, path, "fs")
    values = load_npy(path, units, list(signal.LEADS))
  except BadRecordError as e:
    raise RecordError(str(e)) from e
  return _to_contract(values, rate, list(signal.LEADS), path)


def read_ecg(path: str, fs: float | None = None, units: str | None = None) -> np.ndarray:
  """int16 (5000, 12) of a WFDB record or, for a .npy path, an array at `fs` Hz in `units`."""
  if path.endswith(".npy"):
    if fs is None or not units:
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
