"""Per-lead checks of an ECG before prediction: which leads are there, and which look unlike an ECG lead.

On the model input (float (5000, 12) mV at 500 Hz, signal.LEADS order; the exported modeling_ecg.py repeats these
checks with the same thresholds in torch) and, for clipping, on the recorded samples at their own rate too:
  flat         peak-to-peak under FLAT_MV (e.g. a lead filled with zeros, or disconnected)
  clipped      runs of at least CLIP_RUN_S at the lead's own maximum or minimum (or at the int16 limit) adding up
               to CLIP_TOTAL_S or more: a saturated amplifier or a recording clipped to its range
  noisy        broadband noise over NOISY_MV: a robust standard deviation of the first difference (the median
               absolute difference / 0.6745 / sqrt(2): white noise's own standard deviation; QRS complexes are
               too brief to move the median)
  implausible  a typical second's peak-to-peak (the median over the 10 s) over LARGE_MV: no heart makes that in
               a surface lead; usually wrong units
The thresholds leave the training data nearly alone: of 300 generated records (synth.generate(300, seed=3), noise
included) one lead was flagged, noisy lead III (0.18 mV) of a record labelled 交流障害 (mains interference);
tests/test_quality.py checks a few generated records raise nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ecg_contrastive.ecg import signal

FLAT_MV = 0.02
CLIP_RUN_S = 0.02
CLIP_TOTAL_S = 0.04
NOISY_MV = 0.15
LARGE_MV = 15.0
_MAD_TO_SD = 1 / (0.6745 * np.sqrt(2))


@dataclasses.dataclass
class LeadReport:
  """What the checks found; leads by their signal.LEADS names."""

  recorded: list[str]  # leads the file holds (canonical names), in LEADS order
  derived: list[str]  # limb leads computed from I and II because the file lacks them
  flat: list[str] = dataclasses.field(default_factory=list)
  clipped: list[str] = dataclasses.field(default_factory=list)
  noisy: dict[str, float] = dataclasses.field(default_factory=dict)  # lead -> noise SD, mV
  implausible: dict[str, float] = dataclasses.field(
    default_factory=dict
  )  # lead -> peak-to-peak, mV
  renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # file's name -> lead (aliases)
  ignored: list[str] = dataclasses.field(default_factory=list)  # file channels that are no ECG lead
  missing: list[str] = dataclasses.field(
    default_factory=list
  )  # not in the file, not derivable: zero-filled

  @property
  def present(self) -> list[str]:
    """Leads with a signal: recorded or derived, and not flat (nor missing)."""
    return [lead for lead in signal.LEADS if lead not in self.flat and lead not in self.missing]

  def summary(self) -> str:
    """One line: the leads present, and where they came from."""
    line = f"leads: {len(self.present)} of {signal.NUM_LEADS} present"
    if len(self.present) < signal.NUM_LEADS:
      line += f" ({', '.join(self.present) or 'none'})"
    if self.derived:
      line += f"; {', '.join(self.derived)} derived from I and II"
    if self.renamed:
      line += "; read " + ", ".join(f"{k!r} as {v}" for k, v in self.renamed.items())
    if self.missing:
      line += f"; missing {', '.join(self.missing)} (zero-filled)"
    return line

  def warnings(self) -> list[str]:
    """One line per problem, naming the leads."""
    out = []
    if self.flat:
      out.append(
        f"flat lead(s) {', '.join(self.flat)} (peak-to-peak under {FLAT_MV * 1000:g} uV): no signal there; "
        "the model saw 12 live leads, so findings that depend on these leads are guesses"
      )
    if self.clipped:
      out.append(
        f"clipped lead(s) {', '.join(self.clipped)}: runs at the lead's extreme value (a saturated "
        "amplifier or a clipped recording); amplitudes there are lost"
      )
    if self.noisy:
      out.append(
        "noisy lead(s) "
        + ", ".join(f"{lead} ({sd * 1000:.0f} uV)" for lead, sd in self.noisy.items())
        + f": broadband noise above {NOISY_MV * 1000:g} uV; check the electrodes and filters"
      )
    if self.implausible:
      out.append(
        "implausible amplitude in lead(s) "
        + ", ".join(f"{lead} ({ptp:.1f} mV)" for lead, ptp in self.implausible.items())
        + f": over {LARGE_MV:g} mV peak-to-peak in a typical second; check the units (the model takes mV)"
      )
    if self.ignored:
      out.append(f"channel(s) {', '.join(map(repr, self.ignored))} are no ECG lead; ignored")
    return out


def missing_leads(names: list[str]) -> list[str]:
  """The leads (LEADS order) that channels `names` neither hold (by name or alias) nor let us derive: III, aVR,
  aVL and aVF are derived from I and II when both are there (signal.reorder_leads)."""
  held = {signal.canonical_lead(name) for name in names} - {None}
  derivable = {"III", "aVR", "aVL", "aVF"} if {"I", "II"} <= held else set()
  return [lead for lead in signal.LEADS if lead not in held and lead not in derivable]


def mark_missing(report: LeadReport, missing: list[str]) -> None:
  """Records in `report` that the leads `missing` were zero-filled (not recorded, not flat: absent)."""
  report.missing = [lead for lead in signal.LEADS if lead in missing]
  report.recorded = [lead for lead in report.recorded if lead not in missing]
  report.flat = [lead for lead in report.flat if lead not in missing]
  report.clipped = [lead for lead in report.clipped if lead not in missing]


def flat_leads(ecg_mv: np.ndarray) -> np.ndarray:
  """(T, 12) mV -> (12,) bool: peak-to-peak under FLAT_MV."""
  return np.ptp(ecg_mv, axis=0) < FLAT_MV


def noise_sd(ecg_mv: np.ndarray) -> np.ndarray:
  """(T, C) mV -> (C,) robust broadband noise SD (mV) from the median absolute first difference."""
  return np.median(np.abs(np.diff(ecg_mv, axis=0)), axis=0) * _MAD_TO_SD


def amplitude(ecg_mv: np.ndarray) -> np.ndarray:
  """(T, C) mV at 500 Hz -> (C,) the median over whole seconds of each second's peak-to-peak (baseline wander
  moves a second's range little, one artefact spike not at all)."""
  seconds = max(1, ecg_mv.shape[0] // signal.SAMPLE_RATE)
  windows = ecg_mv[: seconds * signal.SAMPLE_RATE].reshape(seconds, -1, ecg_mv.shape[1])
  return np.median(np.ptp(windows, axis=1), axis=0)


def clipped_channels(values: np.ndarray, rate: float, limit: float | None = None) -> np.ndarray:
  """(T, C) samples at `rate` Hz -> (C,) bool: runs of >= CLIP_RUN_S at the channel's max or min (or at +-limit)
  adding up to >= CLIP_TOTAL_S. A flat channel is not clipped (it is flat)."""
  run = max(3, int(round(CLIP_RUN_S * rate)))
  need = max(run, int(round(CLIP_TOTAL_S * rate)))
  out = np.zeros(values.shape[1], bool)
  for c in range(values.shape[1]):
    x = values[:, c]
    lo, hi = x.min(), x.max()
    if hi == lo:
      continue
    total = 0
    for extreme in {hi, lo} | ({limit, -limit} if limit else set()):
      at = np.concatenate([[False], x == extreme, [False]])
      edges = np.flatnonzero(np.diff(at.astype(np.int8)))
      lengths = edges[1::2] - edges[::2]
      total += int(lengths[lengths >= run].sum())
    out[c] = total >= need
  return out


def check(ecg_mv: np.ndarray) -> LeadReport:
  """The checks on a model input alone: float (5000, 12) mV (clipping: runs at each lead's extremes there, to the
  int16 unit, 1 uV). Every lead counts as recorded."""
  report = LeadReport(recorded=list(signal.LEADS), derived=[])
  _check_input(ecg_mv, report)
  units = np.rint(np.asarray(ecg_mv, np.float64) * signal.UNITS_PER_MV)
  for lead in np.asarray(signal.LEADS)[clipped_channels(units, signal.SAMPLE_RATE, 32767)]:
    report.clipped.append(str(lead))
  return report


def check_record(
  ecg_mv: np.ndarray, values: np.ndarray, rate: float, names: list[str]
) -> LeadReport:
  """The checks of a record: the model input ecg_mv (5000, 12) and the file's own samples `values` (T, C) at `rate`
  Hz with channel names `names` (clipping is looked for in the recorded samples, before resampling)."""
  column, renamed, ignored = {}, {}, []
  for i, name in enumerate(names):
    lead = signal.canonical_lead(name)
    if lead is None:
      ignored.append(name)
      continue
    column.setdefault(lead, i)
    if signal.lead_key(name) in signal.LEAD_ALIASES:
      renamed[name] = lead
  report = LeadReport(
    recorded=[lead for lead in signal.LEADS if lead in column],
    derived=[lead for lead in signal.LEADS if lead not in column],
    renamed=renamed,
    ignored=ignored,
  )
  _check_input(ecg_mv, report)
  seconds = values[: int(signal.DURATION_S * rate)]  # the part the model reads
  recorded = [column[lead] for lead in report.recorded]
  clipped = clipped_channels(seconds[:, recorded], rate, signal.INT16_LIMIT_MV)
  report.clipped = [lead for lead, c in zip(report.recorded, clipped) if c]
  return report


def _check_input(ecg_mv: np.ndarray, report: LeadReport) -> None:
  ecg_mv = np.asarray(ecg_mv, np.float64)
  flat = flat_leads(ecg_mv)
  report.flat = [lead for lead, f in zip(signal.LEADS, flat) if f]
  for lead, sd, f in zip(signal.LEADS, noise_sd(ecg_mv), flat):
    if sd > NOISY_MV and not f:
      report.noisy[lead] = float(sd)
  for lead, ptp in zip(signal.LEADS, amplitude(ecg_mv)):
    if ptp > LARGE_MV:
      report.implausible[lead] = float(ptp)
