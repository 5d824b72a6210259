"""Users' own ECG files -> the model input, through the same standardisation as the training data.

A record becomes float32 (5000, 12) millivolts, channels-last (the Flax model's layout; the
PyTorch export takes the transpose) by `ecg_contrastive.ecg.signal.standardize`, which every
dataset builder uses:
  leads      matched by name in any order and common spelling ('AVR', 'avr', 'Lead aVR', 'DII');
             III/aVR/aVL/aVF are derived from I and II if absent; any other missing lead is an
             error naming it; extra leads are ignored.
  rate       resampled to 500 Hz (scipy.signal.resample_poly, anti-aliased).
  duration   the first 10 s; a shorter record is zero-padded at the end (under MIN_DURATION_S: an error).
  storage    rounded to int16 microvolts (NaN samples or |x| > 32.767 mV are errors), then
             mV = int16 / 1000, exactly what training feeds the model.
Inputs: a WFDB record (header units per channel, usually mV) or a .npy array with the sampling
rate, units and lead names given by the caller ((T, C) or (C, T), C = number of lead names).
A file that cannot be used raises BadRecordError naming the file and what to do: missing, truncated or
unreadable files, a sampling rate outside [MIN_RATE_HZ, MAX_RATE_HZ], NaN/inf samples, under MIN_DURATION_S.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import wfdb

from ecg_contrastive.ecg import quality, signal
from ecg_contrastive.errors import UserError

_MV_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}
MIN_DURATION_S = 5.0  # shorter: refused (the model saw 10 s; at most half a record is zero-padding)
MIN_RATE_HZ, MAX_RATE_HZ = (
  50.0,
  20_000.0,
)  # ECG recorders: 100 Hz .. 10 kHz; outside is a wrong --fs or header
MAX_READ_S = (
  60  # only the first 60 s are resampled (10 s are kept): memory stays bounded for any file length
)
_BYTES_PER_SAMPLE = {
  "8": 1,
  "16": 2,
  "24": 3,
  "32": 4,
  "61": 2,
  "80": 1,
  "160": 2,
  "212": 1.5,
  "310": 4 / 3,
  "311": 4 / 3,
}


class BadRecordError(UserError, ValueError):
  """A record file that cannot be used; the message names the file and what to do."""


@dataclasses.dataclass
class Record:
  ecg: np.ndarray  # float32 (5000, 12) mV, leads in signal.LEADS order
  rate: float  # the file's sampling rate (Hz)
  duration_s: float  # the file's duration before cropping / padding to 10 s
  leads: quality.LeadReport | None = (
    None  # leads present, derived, renamed; flat, clipped, noisy, implausible
  )


def mv_per_unit(units: str) -> float:
  """Millivolts per unit of `units` ('mV', 'uV', 'µV', 'V')."""
  factor = _MV_PER_UNIT.get(units.strip().lower())
  if factor is None:
    raise BadRecordError(f"unknown signal units {units!r}; expected one of mV, uV, V")
  return factor


def check_rate(rate: float, what: str, source: str) -> float:
  """`rate` as float if it is a plausible ECG sampling rate; else BadRecordError naming `what` and `source`."""
  try:
    value = float(rate)
  except (TypeError, ValueError):
    value = math.nan
  if not math.isfinite(value) or not MIN_RATE_HZ <= value <= MAX_RATE_HZ:
    raise BadRecordError(
      f"bad rate: {what}: sampling rate {rate!r} Hz (from {source}) is not an ECG rate; give the "
      f"rate the record was sampled at, between {MIN_RATE_HZ:g} and {MAX_RATE_HZ:g} Hz (e.g. 500)"
    )
  return value


def to_contract(values: np.ndarray, rate: float, leads: list[str], what: str) -> np.ndarray:
  """(T, C) float mV at `rate` Hz -> int16 (5000, 12), as signal.standardize, after the checks that make a record
  unusable (BadRecordError): under MIN_DURATION_S, NaN/inf, missing leads, beyond the int16 range. Only the first
  MAX_READ_S seconds are resampled (the first 10 s are kept)."""
  duration = values.shape[0] / rate
  if duration < MIN_DURATION_S:
    raise BadRecordError(
      f"too short: {what} holds {duration:.2f} s ({values.shape[0]} samples at {rate:g} Hz); "
      f"at least {MIN_DURATION_S:g} s are needed (the model reads 10 s), check the rate or use a "
      "longer record"
    )
  values = values[: math.ceil(MAX_READ_S * rate)]
  try:
    return signal.standardize(values, rate, leads, mv_per_unit=1.0, what=what)
  except ValueError as e:
    message = str(e) if str(e).startswith(what) else f"{what}: {e}"
    raise BadRecordError(f"bad signal: {message}") from e


def is_flat(ecg: np.ndarray) -> bool:
  """Every lead constant (an all-zero or disconnected recording, or a signal far below 1 uV)."""
  return bool(np.all(ecg.max(axis=0) == ecg.min(axis=0)))


def standardize(values: np.ndarray, rate: float, leads: list[str], what: str) -> Record:
  """(T, C) float mV with C named leads at `rate` Hz -> Record (the training standardisation)."""
  units = to_contract(values, rate, leads, what)
  if is_flat(units):
    raise BadRecordError(
      f"flat signal: {what}: every lead is constant (all zero, or below 1 uV in the units given); "
      "a flat ECG has no findings to report: check the file and its units"
    )
  ecg = signal.to_millivolts(units)
  report = quality.check_record(ecg, values, rate, leads)
  return Record(ecg, float(rate), values.shape[0] / rate, report)


def wfdb_base(path: str) -> str:
  """A WFDB record's path without .hea/.dat."""
  return os.path.splitext(path)[0] if path.endswith((".hea", ".dat")) else path


def check_dat_files(base: str, header: wfdb.Record) -> None:
  """Every signal file of a WFDB header exists and holds the samples the header promises; else BadRecordError
  starting "missing file: " or "truncated file: "."""
  folder = os.path.dirname(base)
  files: dict[str, list[int]] = {}
  for i, name in enumerate(header.file_name or []):
    files.setdefault(name, []).append(i)
  for name, channels in files.items():
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      raise BadRecordError(
        f"missing file: {path} (named by {base}.hea); copy the record's signal file next to its "
        "header"
      )
    per_sample = _BYTES_PER_SAMPLE.get(str(header.fmt[channels[0]]))
    if per_sample is None or not header.sig_len:
      continue
    offset = int((header.byte_offset or [0] * header.n_sig)[channels[0]] or 0)
    needed = offset + math.ceil(header.sig_len * len(channels) * per_sample)
    size = os.path.getsize(path)
    if size < needed:
      raise BadRecordError(
        f"truncated file: {path} has {size} bytes, its header needs {needed}; copy or download "
        "the record again"
      )


def load_wfdb(path: str) -> tuple[np.ndarray, float, list[str]]:
  """A WFDB record -> (float (T, C) mV, rate, lead names): each channel's units converted, a channel without
  units read as mV (the WFDB default). Shared by the predictor and the dataset builders' record reader.
  BadRecordError for a missing, garbled or truncated header or signal file and a rate that is not an ECG's."""
  base = wfdb_base(path)
  if not os.path.isfile(base + ".hea"):
    raise BadRecordError(
      f"missing file: {base}.hea; give a WFDB record (path/rec, rec.hea or rec.dat with its "
      ".hea next to it) or a .npy file"
    )
  try:
    header = wfdb.rdheader(base)
  except Exception as e:  # noqa: BLE001 (any parser failure means the header is unusable)
    raise BadRecordError(
      f"unreadable: header {base}.hea: {type(e).__name__}: {e}; it is not a WFDB header (check "
      "the file, or convert the record to .npy)"
    ) from e
  check_dat_files(base, header)
  rate = check_rate(header.fs, base, f"{base}.hea")
  try:
    record = wfdb.rdrecord(base)
  except Exception as e:  # noqa: BLE001
    raise BadRecordError(
      f"unreadable: {base}: {type(e).__name__}: {e}; check the .hea and .dat files"
    ) from e
  if record.p_signal is None or record.p_signal.ndim != 2 or not record.p_signal.size:
    raise BadRecordError(f"unreadable: {base}: the header describes no samples; check {base}.hea")
  try:
    scale = np.array([mv_per_unit(u or "mV") for u in record.units])
  except BadRecordError as e:
    raise BadRecordError(f"unreadable: {base}.hea: {e}") from e
  return record.p_signal * scale, rate, list(record.sig_name)


class LeadShapeError(BadRecordError):
  """An array whose shape is not (samples, leads) or (leads, samples)."""


def load_npy(path: str, units: str, leads: list[str]) -> np.ndarray:
  """A .npy array (T, C) or (C, T), C = len(leads), in `units` -> float (T, C) mV; LeadShapeError on another shape,
  BadRecordError for a missing or unreadable file."""
  if not os.path.isfile(path):
    raise BadRecordError(f"missing file: {path}; check the path")
  try:
    values = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001 (empty, truncated, pickled or not .npy at all)
    raise BadRecordError(
      f"unreadable: {path}: {type(e).__name__}: {e}; save the array with numpy.save "
      "(a numeric (samples, leads) array)"
    ) from e
  if (
    not isinstance(values, np.ndarray)
    or not np.issubdtype(values.dtype, np.number)
    or np.issubdtype(values.dtype, np.complexfloating)
  ):
    raise BadRecordError(
      f"unreadable: {path}: dtype {getattr(values, 'dtype', type(values))} is not a real number "
      "type; save the samples as an int or float array"
    )
  if values.ndim != 2 or len(leads) not in values.shape:
    raise LeadShapeError(
      f"bad signal: {path}: array of shape {values.shape} does not fit {len(leads)} leads {leads}; "
      "expected (samples, leads) or (leads, samples); name the columns with --leads"
    )
  if values.shape[1] != len(leads):
    values = values.T
  return values.astype(np.float64) * mv_per_unit(units)


def read_wfdb(path: str) -> Record:
  """A WFDB record (path with or without .hea/.dat) -> Record, converting each channel's units."""
  values, rate, leads = load_wfdb(path)
  return standardize(values, rate, leads, what=path)


def check_lead_names(leads: list[str], what: str) -> None:
  """Every name is a lead of ours or one of its aliases (signal.LEAD_ALIASES); else BadRecordError naming it."""
  for name in leads:
    if signal.canonical_lead(name) is None:
      raise BadRecordError(f"bad lead name: {what}: {signal.unknown_lead_message(name)}")


def read_npy(path: str, rate: float, units: str, leads: list[str]) -> Record:
  """A .npy array (T, C) or (C, T), C = len(leads), in `units` at `rate` Hz -> Record. Every lead name must be
  known (the caller names the columns; a WFDB record's other channels, e.g. RESP, are ignored and reported)."""
  check_lead_names(leads, f"{path} (--leads)")
  rate = check_rate(rate, path, "--fs")
  return standardize(load_npy(path, units, leads), rate, leads, what=path)


def read_record(
  path: str, rate: float | None = None, units: str | None = None, leads: list[str] | None = None
) -> Record:
  """Dispatches on the file: `.npy` needs rate and units (leads default to signal.LEADS); else WFDB."""
  if path.endswith(".npy"):
    if rate is None or units is None:
      raise BadRecordError(
        f"{path}: a .npy file carries no sampling rate or units; pass --fs and --units (uV|mV)"
      )
    return read_npy(path, rate, units, list(leads or signal.LEADS))
  return read_wfdb(path)
