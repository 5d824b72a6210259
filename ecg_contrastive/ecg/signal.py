"""The project's ECG storage contract and the helpers that bring any record to it.

Every dataset stores a record as int16 (5000, 12): 500 Hz x 10 s, leads in LEADS order,
one unit = 1 microvolt (MV_PER_UNIT = 0.001 mV), so the range is +-32.767 mV. The input
pipeline moves int16; the model scales to float on the device: `ecg * MV_PER_UNIT`.

The limb leads are linear in I and II (Einthoven and Goldberger):
  III = II - I,  aVR = -(I + II) / 2,  aVL = I - II / 2,  aVF = II - I / 2.
"""

from __future__ import annotations

import fractions

import numpy as np
import scipy.signal

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NUM_LEADS = len(LEADS)
SAMPLE_RATE = 500  # Hz
DURATION_S = 10
NUM_SAMPLES = SAMPLE_RATE * DURATION_S
MV_PER_UNIT = 1e-3  # millivolts per int16 unit (1 unit = 1 uV)
UNITS_PER_MV = 1000
INT16_LIMIT_MV = 32767 * MV_PER_UNIT
# Names other recorders use for our leads, mapped only where the mapping is standard: DI-DIII / D1-D3 (Einthoven's
# leads in European and Latin-American notation) and MLI-MLIII / ML1-ML3 (the modified limb leads of Holter and
# PhysioNet records such as MIT-BIH's MLII: the limb electrodes moved to the torso, read as I-III by convention).
LEAD_ALIASES = {
  "DI": "I",
  "DII": "II",
  "DIII": "III",
  "D1": "I",
  "D2": "II",
  "D3": "III",
  "MLI": "I",
  "MLII": "II",
  "MLIII": "III",
  "ML1": "I",
  "ML2": "II",
  "ML3": "III",
}
# Names we refuse to guess, and why (a name that is no lead at all, e.g. RESP, is simply unknown).
REFUSED_LEAD_NAMES = {
  "V": "a chest lead without its number (V1..V6 differ by electrode position)",
  "MCL1": "a bipolar modified chest lead (Holter), not the unipolar V1",
  "MCL6": "a bipolar modified chest lead (Holter), not the unipolar V6",
  "CM5": "a bipolar chest lead (exercise tests), not V5",
  "CC5": "a bipolar chest lead (exercise tests), not V5",
  "ECG": "a channel without a lead name",
  "ECG1": "a channel without a lead name",
  "ECG2": "a channel without a lead name",
}


def limb_leads(lead_i: np.ndarray, lead_ii: np.ndarray) -> np.ndarray:
  """I and II, any shape S -> the six limb leads (I, II, III, aVR, aVL, aVF) stacked last: S + (6,)."""
  return np.stack(
    [
      lead_i,
      lead_ii,
      lead_ii - lead_i,
      -(lead_i + lead_ii) / 2,
      lead_i - lead_ii / 2,
      lead_ii - lead_i / 2,
    ],
    axis=-1,
  )


def _derivation() -> np.ndarray:
  """(8, 12): independent leads (I, II, V1..V6) -> LEADS; the coefficients are exact in binary."""
  m = np.zeros((8, NUM_LEADS), np.float32)
  m[:2, :6] = limb_leads(
    np.array([1.0, 0.0]), np.array([0.0, 1.0])
  )  # row: coefficients of I, of II
  m[2:, 6:] = np.eye(6)
  return m


_DERIVATION = _derivation()


def from_independent(leads8: np.ndarray) -> np.ndarray:
  """(..., 8) with I, II, V1..V6 -> (..., 12) in LEADS order, limb leads derived exactly."""
  if leads8.shape[-1] != 8:
    raise ValueError(
      f"expected the 8 independent leads (I, II, V1..V6) last, got shape {leads8.shape}"
    )
  return np.matmul(leads8, _DERIVATION.astype(leads8.dtype, copy=False))


def to_units(millivolts: np.ndarray, what: str = "ECG") -> np.ndarray:
  """float mV (any shape) -> int16 microvolts. NaN/inf or values beyond +-32.767 mV raise, naming `what`."""
  units = np.multiply(millivolts, UNITS_PER_MV, dtype=np.result_type(millivolts, np.float32))
  lo, hi = (
    (float(units.min(initial=0.0)), float(units.max(initial=0.0))) if units.size else (0.0, 0.0)
  )
  if not (np.isfinite(lo) and np.isfinite(hi)):
    bad = ~np.isfinite(units)
    raise ValueError(
      f"{what}: {int(bad.sum())} NaN/inf sample(s) (first at index "
      f"{np.argwhere(bad)[0].tolist()}); fill or drop the gaps before conversion"
    )
  if max(-lo, hi) > 32767:
    raise ValueError(
      f"{what}: |amplitude| reaches {max(-lo, hi) / UNITS_PER_MV:.1f} mV, beyond the int16 range of "
      f"+-{INT16_LIMIT_MV} mV; check the units (the contract is millivolts) or clip artefacts first"
    )
  return np.rint(units, out=units).astype(np.int16)


def to_millivolts(units, dtype=np.float32):
  """int16 microvolts -> float millivolts. Works on numpy and jax arrays alike (shape unchanged)."""
  return units.astype(dtype) * MV_PER_UNIT


def lead_key(name: str) -> str:
  """A lead name as the alias tables spell it: no spaces, dashes or underscores, upper case, no "LEAD" prefix."""
  key = "".join(c for c in name if c not in " _-").upper()
  return key[4:] if key.startswith("LEAD") else key


def canonical_lead(name: str) -> str | None:
  """'avr', 'Lead AVR', 'V-1', 'DII', 'MLII' -> 'aVR', 'aVR', 'V1', 'II', 'II' (LEAD_ALIASES); unknown -> None."""
  key = lead_key(name)
  key = LEAD_ALIASES.get(key, key)
  return next((lead for lead in LEADS if lead.upper() == key), None)


def unknown_lead_message(name: str) -> str:
  """Why `name` is no lead of ours: refused (REFUSED_LEAD_NAMES, with the reason) or unknown; what to use."""
  reason = REFUSED_LEAD_NAMES.get(lead_key(name))
  said = f"{reason}: not mapped" if reason else "unknown lead name"
  return (
    f"{name!r}: {said}; use {', '.join(LEADS)} (or an alias: "
    f"{', '.join(f'{k}->{v}' for k, v in LEAD_ALIASES.items() if k.startswith('ML'))}, DI..DIII)"
  )


def reorder_leads(signal: np.ndarray, names: list[str]) -> np.ndarray:
  """(T, C) whose columns are the leads `names` (any order, any spelling) -> (T, 12) in LEADS order.

  Missing III/aVR/aVL/aVF are derived from I and II; any other missing lead raises, naming it.
  """
  if signal.ndim != 2 or signal.shape[1] != len(names):
    raise ValueError(
      f"signal of shape {signal.shape} does not match the {len(names)} lead names {list(names)}"
    )
  column = {}
  for i, name in enumerate(names):
    lead = canonical_lead(name)
    if lead is not None:
      column.setdefault(lead, i)
  missing = [
    lead for lead in LEADS if lead not in column and lead not in ("III", "aVR", "aVL", "aVF")
  ]
  if missing:
    raise ValueError(
      f"missing lead(s) {missing}: a record needs I, II and V1-V6 (III, aVR, aVL, aVF can be "
      f"derived); it has {list(names)}"
    )
  limbs = limb_leads(signal[:, column["I"]], signal[:, column["II"]])
  out = np.concatenate([limbs, signal[:, [column[f"V{k}"] for k in range(1, 7)]]], axis=1)
  for j, lead in enumerate(LEADS[:6]):
    if lead in column:  # recorded beats derived
      out[:, j] = signal[:, column[lead]]
  return out


def resample(signal: np.ndarray, rate: float, target_rate: float = SAMPLE_RATE) -> np.ndarray:
  """(T, C) at `rate` Hz -> (round(T * target_rate / rate), C), polyphase with an anti-alias filter."""
  if rate <= 0 or target_rate <= 0:
    raise ValueError(f"sampling rates must be positive, got {rate} -> {target_rate} Hz")
  ratio = fractions.Fraction(target_rate).limit_denominator(1000) / fractions.Fraction(
    rate
  ).limit_denominator(1000)
  if ratio == 1:
    return signal
  return scipy.signal.resample_poly(signal, ratio.numerator, ratio.denominator, axis=0)


def fit_length(signal: np.ndarray, length: int = NUM_SAMPLES) -> np.ndarray:
  """(T, C) -> (length, C): the first `length` samples, zero-padded at the end if shorter."""
  out = np.zeros((length,) + signal.shape[1:], signal.dtype)
  n = min(length, signal.shape[0])
  out[:n] = signal[:n]
  return out


def standardize(
  signal: np.ndarray, rate: float, leads: list[str], mv_per_unit: float = 1.0, what: str = "record"
) -> np.ndarray:
  """Any record (T, C) in units of `mv_per_unit` mV at `rate` Hz -> int16 (5000, 12) as datasets store it.

  NaN samples and out-of-range amplitudes raise, naming `what` and the lead; fill gaps first if expected.
  """
  signal = np.asarray(signal, np.float64)
  if signal.ndim != 2:
    raise ValueError(f"{what}: expected (samples, leads), got shape {signal.shape}")
  bad = ~np.isfinite(signal)
  if bad.any():  # before resampling smears it
    sample, column = np.argwhere(bad)[0]
    raise ValueError(
      f"{what}: {int(bad.sum())} NaN/inf sample(s), first in lead {leads[column]!r} (column {column}) "
      f"at sample {sample}; fill or drop the gaps before conversion"
    )
  ecg = reorder_leads(signal * mv_per_unit, leads)
  return to_units(fit_length(resample(ecg, rate)), what)
