"""Users' own ECG files -> the model input, through the same standardisation as the training data.

A record becomes float32 (5000, 12) millivolts, channels-last (the Flax model's layout; the
PyTorch export takes the transpose) by `ecg_contrastive.data.signal.standardize`, which every
dataset builder uses:
  leads      matched by name in any order and common spelling ('AVR', 'avr', 'Lead aVR', 'DII');
             III/aVR/aVL/aVF are derived from I and II if absent; any other missing lead is an
             error naming it; extra leads are ignored.
  rate       resampled to 500 Hz (scipy.signal.resample_poly, anti-aliased).
  duration   the first 10 s; a shorter record is zero-padded at the end.
  storage    rounded to int16 microvolts (NaN samples or |x| > 32.767 mV are errors), then
             mV = int16 / 1000, exactly what training feeds the model.
Inputs: a WFDB record (header units per channel, usually mV) or a .npy array with the sampling
rate, units and lead names given by the caller ((T, C) or (C, T), C = number of lead names).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import wfdb

from ecg_contrastive.data import signal

_MV_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


@dataclasses.dataclass
class Record:
  ecg: np.ndarray    # float32 (5000, 12) mV, leads in signal.LEADS order
  rate: float        # the file's sampling rate (Hz)
  duration_s: float  # the file's duration before cropping / padding to 10 s


def mv_per_unit(units: str) -> float:
  """Millivolts per unit of `units` ('mV', 'uV', 'µV', 'V')."""
  factor = _MV_PER_UNIT.get(units.strip().lower())
  if factor is None:
    raise ValueError(f"unknown signal units {units!r}; expected one of mV, uV, V")
  return factor


def standardize(values: np.ndarray, rate: float, leads: list[str], what: str) -> Record:
  """(T, C) float mV with C named leads at `rate` Hz -> Record (the training standardisation)."""
  units = signal.standardize(values, rate, leads, mv_per_unit=1.0, what=what)
  return Record(signal.to_millivolts(units), float(rate), values.shape[0] / rate)


def wfdb_base(path: str) -> str:
  """A WFDB record's path without .hea/.dat."""
  return os.path.splitext(path)[0] if path.endswith((".hea", ".dat")) else path


def load_wfdb(path: str) -> tuple[np.ndarray, float, list[str]]:
  """A WFDB record -> (float (T, C) mV, rate, lead names): each channel's units converted, a channel without
  units read as mV (the WFDB default). Shared by the predictor and the dataset builders' record reader."""
  record = wfdb.rdrecord(wfdb_base(path))
  scale = np.array([mv_per_unit(u or "mV") for u in record.units])
  return record.p_signal * scale, float(record.fs), list(record.sig_name)


class LeadShapeError(ValueError):
  """An array whose shape is not (samples, leads) or (leads, samples)."""


def load_npy(path: str, units: str, leads: list[str]) -> np.ndarray:
  """A .npy array (T, C) or (C, T), C = len(leads), in `units` -> float (T, C) mV; LeadShapeError on another shape."""
  values = np.load(path, allow_pickle=False)
  if values.ndim != 2 or len(leads) not in values.shape:
    raise LeadShapeError(f"{path}: array of shape {values.shape} does not fit {len(leads)} leads {leads}; "
                     "expected (samples, leads) or (leads, samples)")
  if values.shape[1] != len(leads):
    values = values.T
  return values.astype(np.float64) * mv_per_unit(units)


def read_wfdb(path: str) -> Record:
  """A WFDB record (path with or without .hea/.dat) -> Record, converting each channel's units."""
  values, rate, leads = load_wfdb(path)
  return standardize(values, rate, leads, what=path)


def read_npy(path: str, rate: float, units: str, leads: list[str]) -> Record:
  """A .npy array (T, C) or (C, T), C = len(leads), in `units` at `rate` Hz -> Record."""
  return standardize(load_npy(path, units, leads), rate, leads, what=path)


def read_record(path: str, rate: float | None = None, units: str | None = None,
                leads: list[str] | None = None) -> Record:
  """Dispatches on the file: `.npy` needs rate and units (leads default to signal.LEADS); else WFDB."""
  if path.endswith(".npy"):
    if rate is None or units is None:
      raise ValueError(f"{path}: a .npy file carries no sampling rate or units; pass --fs and --units (uV|mV)")
    return read_npy(path, rate, units, list(leads or signal.LEADS))
  return read_wfdb(path)
