"""The synthetic generator: signatures measured on the waveforms, reports, labels, determinism.

Measurements work on the int16 records the dataset stores: QRS bounds from the spatial velocity
of a median beat, axis from the net QRS area in I and aVF, PR from the P wave in II, R peaks
detected from the waveform. Ground-truth beat times only align beats, they are never the answer.
"""

import ast
import hashlib
import itertools
import json
import pathlib

import numpy as np
import pytest

from ecg_contrastive.data.synthetic import dipole, findings, morphology, noise, synth
from ecg_contrastive.data.synthetic.dipole import CONDUCTED, ECTOPIC_V, ECTOPIC_V2
from ecg_contrastive.ecg.signal import LEADS, SAMPLE_RATE, from_independent
from ecg_contrastive.vocab import report_ja, terms

L = {name: i for i, name in enumerate(LEADS)}
MS = 1000 / SAMPLE_RATE  # ms per sample


@pytest.fixture(scope="module")
def clean():
  return synth.generate(1024, seed=3, noisy=False)


@pytest.fixture(scope="module")
def noisy():
  return synth.generate(768, seed=4)


def _with_primary(records, primary):
  rows = [i for i, p in enumerate(records.primary_label) if p == primary]
  assert len(rows) >= 5, f"too few {primary} records ({len(rows)}) to measure"
  return rows


def _median_beat(records, i, before_ms=500, after_ms=600):
  """(W, 12) mV median of the conducted beats of record i, QRS onset (scheduled) at sample before_ms/MS."""
  b = records.beats[i]
  onsets = np.round(b.vent_t[b.vent_kind == CONDUCTED] / MS).astype(int)
  before, after = int(before_ms / MS), int(after_ms / MS)
  onsets = onsets[(onsets >= before) & (onsets + after <= records.ecg.shape[1])]
  return np.median(
    np.stack([records.ecg[i, o - before : o + after] for o in onsets]), axis=0
  ) / 1000.0, before


def _qrs_bounds(beat, at):
  """(onset, end) samples: the run of summed |slope| > 8% of its QRS peak around that peak (gaps < 30 ms bridged)."""
  velocity = np.abs(np.diff(beat, axis=0)).sum(axis=1)
  peak = at - int(40 / MS) + int(np.argmax(velocity[at - int(40 / MS) : at + int(120 / MS)]))
  above = np.flatnonzero(velocity > 0.08 * velocity[peak])
  gap = int(30 / MS)
  onset = end = peak
  for a in above[above < peak][::-1]:
    if onset - a > gap:
      break
    onset = a
  for a in above[above > peak]:
    if a - end > gap:
      break
    end = a
  return onset, end + 1


def _qrs_ms(beat, at):
  onset, end = _qrs_bounds(beat, at)
  return (end - onset) * MS


def _axis(beat, at):
  onset, end = _qrs_bounds(beat, at)
  lead_i, avf = beat[onset:end, L["I"]].sum(), beat[onset:end, L["aVF"]].sum()
  return np.degrees(np.arctan2(avf * 2 / np.sqrt(3), lead_i))  # aVF = (sqrt(3)/2) * y


def _pr_ms(beat, at):
  """QRS onset minus the start of the last P-wave excursion (|II| > 25 uV) before it."""
  onset, _ = _qrs_bounds(beat, at)
  above = np.abs(beat[: onset - int(10 / MS), L["II"]]) > 0.025
  start = np.flatnonzero(above)[-1]
  while start > 0 and above[start - 1]:
    start -= 1
  return (onset - start) * MS


def _r_peaks(ecg_mv):
  """QRS locations (samples) from the waveform: 20 + 16 ms moving averages (nulls at 50 and 62.5 Hz),
  then peaks of the summed |slope| above 40% of its 99.5th percentile, >= 250 ms apart."""
  smooth = ecg_mv
  for width in (10, 8):
    smooth = np.apply_along_axis(
      lambda x: np.convolve(x, np.ones(width) / width, mode="same"), 0, smooth
    )
  velocity = np.abs(np.diff(smooth, axis=0)).sum(axis=1)
  velocity[:10], velocity[-10:] = 0, 0  # the averages' edges
  threshold, peaks, i = 0.4 * np.percentile(velocity, 99.5), [], 0
  while i < len(velocity):
    if velocity[i] > threshold:
      peaks.append(i + int(np.argmax(velocity[i : i + 60])))
      i = peaks[-1] + int(250 / MS)
    else:
      i += 1
  return np.array(peaks)


def test_storage_format_and_limb_lead_identities(noisy):
  assert noisy.ecg.dtype == np.int16 and noisy.ecg.shape == (768, 5000, 12)
  x = noisy.ecg.astype(np.int32)
  i, ii = x[..., L["I"]], x[..., L["II"]]
  for lead, derived in (
    ("III", ii - i),
    ("aVR", -(i + ii) / 2),
    ("aVL", i - ii / 2),
    ("aVF", ii - i / 2),
  ):
    assert np.abs(x[..., L[lead]] - derived).max() <= 1.5, lead  # int16 rounding of three numbers
  peak = np.abs(noisy.ecg).max(axis=(1, 2)) / 1000
  assert 0.5 < np.median(peak) < 5.0  # mV: ECG-sized, not noise and not saturated


def test_labels_primary_and_reports(noisy):
  vocabulary = set(terms.term_names())
  for labels, primary, report in zip(noisy.labels, noisy.primary_label, noisy.report):
    assert set(labels) <= vocabulary and primary in labels
    assert report_ja.primary_label(labels) == primary
    for label in labels:
      assert label in report, (label, report)
    others = [
      t for t in vocabulary - set(labels) if t in report and not any(t in l for l in labels)
    ]
    assert not others, (others, report)
    rhythm = next(l for l in labels if l in findings.RHYTHM_OF.values() or l == "洞調律")
    assert report.index(rhythm) == min(report.index(l) for l in labels), report  # rhythm first
  assert len(set(noisy.report)) > 150  # phrasing varies


def test_primary_label_distribution():
  draws = findings.draw_primaries(np.random.default_rng(0), 200_000)
  names, counts = np.unique(draws, return_counts=True)
  share = dict(zip(names, counts / len(draws)))
  assert 24 <= len(names) <= 32
  assert max(share.values()) <= 0.15 and share["正常心電図"] >= 0.08
  assert min(share.values()) >= 0.015
  groups = {terms.term_by_name()[n].group_ja for n in findings.all_findings()}
  assert len(findings.all_findings()) >= 24 and len(groups) >= 6


def test_atrial_fibrillation_irregular_rr_and_no_p_wave(noisy, clean):
  def rr_cv(i):
    rr = np.diff(_r_peaks(noisy.ecg[i] / 1000.0))
    return rr.std() / rr.mean()

  af = [rr_cv(i) for i in _with_primary(noisy, "心房細動")]
  sinus = [rr_cv(i) for i in _with_primary(noisy, "正常心電図")]
  assert np.median(af) > 0.1 and min(af) > 0.075
  # respiratory sinus arrhythmia (+-7% of the RR at most: a range under the 0.16 s a reader would call 洞性不整脈)
  assert 0.03 < max(sinus) < 0.075 and np.percentile(sinus, 10) < 0.03

  def p_consistency(
    i,
  ):  # mean pairwise correlation of II 200-40 ms before each QRS (after RR > 700 ms)
    b = clean.beats[i]
    onsets = np.round(b.vent_t / MS).astype(int)
    keep = (np.diff(b.vent_t, prepend=-1e9) > 700) & (onsets > 100) & (onsets < 5000)
    segments = np.array([clean.ecg[i, o - 100 : o - 20, L["II"]] for o in onsets[keep]], float)
    if len(segments) < 3:
      return np.nan
    c = np.corrcoef(segments)
    return c[np.triu_indices(len(c), 1)].mean()

  af_p = [p_consistency(i) for i in _with_primary(clean, "心房細動")]
  sinus_p = [p_consistency(i) for i in _with_primary(clean, "正常心電図")]
  assert np.sum(np.isfinite(af_p)) >= 5 and np.nanmedian(af_p) < 0.4  # fibrillatory waves, no P
  assert np.nanmin(sinus_p) > 0.95 > np.nanmax(af_p)  # the same P wave before every QRS


def test_bundle_branch_blocks_widen_qrs(clean):
  def width(primary):
    return [_qrs_ms(*_median_beat(clean, i)) for i in _with_primary(clean, primary)]

  assert min(width("完全右脚ブロック")) >= 120
  assert min(width("完全左脚ブロック")) >= 120
  assert max(width("正常心電図")) <= 110
  for i in _with_primary(
    clean, "完全右脚ブロック"
  ):  # rSR' in V1 (terminal R'), wide terminal S in I and V6
    beat, at = _median_beat(clean, i)
    onset, end = _qrs_bounds(beat, at)
    terminal = slice(end - int(40 / MS), end)
    assert beat[terminal, L["V1"]].max() > 0.1 and beat[terminal, L["I"]].min() < -0.05
    assert beat[terminal, L["V6"]].min() < -0.05
  for i in _with_primary(clean, "完全左脚ブロック"):  # QS in V1, broad R in V6
    beat, at = _median_beat(clean, i)
    onset, end = _qrs_bounds(beat, at)
    assert beat[onset:end, L["V1"]].sum() < 0 < beat[onset:end, L["V6"]].sum()


def test_first_degree_av_block_prolongs_pr(clean):
  av_block = [_pr_ms(*_median_beat(clean, i)) for i in _with_primary(clean, "1度房室ブロック")]
  normal = [_pr_ms(*_median_beat(clean, i)) for i in _with_primary(clean, "正常心電図")]
  assert min(av_block) > 200
  assert 100 < min(normal) and max(normal) < 200


def test_axis_from_leads_i_and_avf(clean):
  def axes(primary):
    return np.array([_axis(*_median_beat(clean, i)) for i in _with_primary(clean, primary)])

  assert axes("左軸偏位").max() < -30
  assert axes("右軸偏位").min() > 100
  normal = axes("正常心電図")
  assert normal.min() > -30 and normal.max() < 100


def test_ventricular_premature_beat_is_early_wide_and_followed_by_a_compensatory_pause(clean):
  for i in _with_primary(clean, "心室期外収縮"):
    b = clean.beats[i]
    for k in np.flatnonzero(b.vent_kind == ECTOPIC_V):
      if (
        not 300 < b.vent_t[k] < 9400
        or k < 2
        or k + 2 >= len(b.vent_t)
        or (b.vent_kind[[k - 2, k + 2]] != CONDUCTED).any()
      ):  # neighbouring cycles must be sinus
        continue
      rr = (
        b.vent_t[k - 1] - b.vent_t[k - 2] + b.vent_t[k + 2] - b.vent_t[k + 1]
      ) / 2  # neighbouring cycles
      assert b.vent_t[k] - b.vent_t[k - 1] < 0.7 * rr
      assert (
        abs((b.vent_t[k + 1] - b.vent_t[k - 1]) / rr - 2) < 0.12
      )  # two sinus cycles (+-sinus variability)
      at = int(round(b.vent_t[k] / MS))
      beat = clean.ecg[i, at - 100 : at + 300] / 1000.0
      assert _qrs_ms(beat, 100) >= 120


def test_voltage_criteria(clean):
  def measures(i):
    beat, at = _median_beat(clean, i)
    onset, end = _qrs_bounds(beat, at)
    qrs = beat[onset:end]
    ptp = np.ptp(qrs, axis=0)
    return ptp[:6].max(), ptp[6:].max(), -qrs[:, L["V1"]].min() + qrs[:, L["V5"]].max()

  low = np.array([measures(i) for i in _with_primary(clean, "低電位")])
  assert (low[:, 0] < 0.5).all() and (low[:, 1] < 1.0).all()
  for primary in ("左室高電位", "左室肥大"):
    assert np.array([measures(i) for i in _with_primary(clean, primary)])[:, 2].min() >= 3.5
  normal = np.array([measures(i) for i in _with_primary(clean, "正常心電図")])
  assert normal[:, 2].max() < 3.5 and (normal[:, 0] >= 0.5).all()


def test_repolarisation_findings(clean):
  def st_and_t(i):  # ST level 20 ms after the QRS end (J point), and extreme T per lead
    beat, at = _median_beat(clean, i)
    onset, end = _qrs_bounds(beat, at)
    st = beat[end + int(20 / MS)]
    t = beat[end + int(80 / MS) : onset + int(420 / MS)]
    return st, t.min(axis=0), t.max(axis=0)

  normal = np.array([st_and_t(i)[0] for i in _with_primary(clean, "正常心電図")])
  assert np.abs(np.delete(normal, [L["V2"], L["V3"]], axis=1)).max() < 0.1
  assert np.abs(normal[:, [L["V2"], L["V3"]]]).max() < 0.2  # the usual V2-V3 allowance
  assert all(
    np.sort(st_and_t(i)[0])[-2] >= 0.1 for i in _with_primary(clean, "ST上昇")
  )  # >= 2 leads
  assert all(
    st_and_t(i)[0][[L["V5"], L["V6"], L["II"]]].min() <= -0.05
    for i in _with_primary(clean, "ST低下")
  )
  assert all((st_and_t(i)[1] < -0.1).sum() >= 2 for i in _with_primary(clean, "陰性T波"))
  assert all(0.8 <= st_and_t(i)[2].max() <= 2.5 for i in _with_primary(clean, "テント状T波"))


def test_long_qt(clean):
  def qtc(
    i,
  ):  # QRS onset to where the largest T falls below 15% of its peak, before the next P; Bazett
    rr = np.median(np.diff(clean.beats[i].vent_t))
    beat, at = _median_beat(clean, i, after_ms=900)
    onset, end = _qrs_bounds(beat, at)
    t = np.abs(beat[end + int(60 / MS) : onset + int(min(0.85 * rr, 800) / MS)])
    lead = int(np.argmax(t.max(axis=0)))
    peak = int(np.argmax(t[:, lead]))
    t_end = peak + int(np.argmax(t[peak:, lead] < 0.15 * t[peak, lead]))
    return (end + int(60 / MS) + t_end - onset) * MS / np.sqrt(rr / 1000)

  long_qt = [
    i for i in _with_primary(clean, "QT延長") if "U波増高" not in clean.labels[i]
  ]  # T-U fusion
  assert len(long_qt) >= 5 and min(qtc(i) for i in long_qt) > 470
  assert max(qtc(i) for i in _with_primary(clean, "正常心電図")) < 450


def test_power_line_interference_at_50_or_60_hz(noisy):
  rows = [i for i, l in enumerate(noisy.labels) if "交流障害" in l]
  assert rows
  freqs = np.fft.rfftfreq(5000, 1 / SAMPLE_RATE)
  mains = set()
  for i in rows:
    spectrum = np.abs(np.fft.rfft(noisy.ecg[i, :, L["I"]] / 1000.0))
    band = (freqs > 40) & (freqs < 70)
    peak = freqs[band][np.argmax(spectrum[band])]
    assert peak in (50.0, 60.0)
    assert spectrum[band].max() > 20 * np.median(spectrum[band])
    mains.add(peak)
  clean_rows = [i for i, l in enumerate(noisy.labels) if "交流障害" not in l]
  assert np.median(
    [np.abs(np.fft.rfft(noisy.ecg[i, :, 0] / 1000.0))[[500, 600]].max() for i in clean_rows]
  ) < 0.2 * np.median(
    [np.abs(np.fft.rfft(noisy.ecg[i, :, 0] / 1000.0))[[500, 600]].max() for i in rows]
  )


def test_flutter_waves_at_flutter_rate(clean):
  freqs = np.fft.rfftfreq(5000, 1 / SAMPLE_RATE)
  band = (freqs > 3.8) & (freqs < 6.5)  # 230-390 per minute: flutter, not fibrillation or sinus
  for i in _with_primary(clean, "心房粗動"):
    lead_ii = clean.ecg[i, :, L["II"]] / 1000.0
    for onset in np.round(clean.beats[i].vent_t / MS).astype(
      int
    ):  # blank each QRS (onset to +120 ms)
      a, b = max(onset - 5, 1), min(onset + 60, 4999)
      if a < b:
        lead_ii[a:b] = np.linspace(lead_ii[a - 1], lead_ii[b], b - a)
    spectrum = np.abs(np.fft.rfft((lead_ii - lead_ii.mean()) * np.hanning(len(lead_ii))))
    assert 4.2 <= freqs[band][np.argmax(spectrum[band])] <= 5.4  # 250-320 F waves per minute


def test_deterministic_and_seeded():
  a = synth.generate_chunk(7, "validation", 40, 0)
  b = synth.generate_chunk(7, "validation", 40, 0)
  c = synth.generate_chunk(8, "validation", 40, 0)
  assert np.array_equal(a.ecg, b.ecg) and a.report == b.report and a.patient_id == b.patient_id
  assert not np.array_equal(a.ecg, c.ecg)
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    synth.generate_chunk(7, "dev", 40, 0)


_PLAIN_PR = {"WPW症候群", "完全房室ブロック", "2度房室ブロック(ウェンケバッハ型)"}


def _wander_pp(records, i):
  """Baseline wander, mV: peak-to-peak over the beats of the PR-segment level (QRS onset -16..-6 ms), worst
  of I, II, V1-V6. Only for records with sinus P waves and a plain PR segment (None otherwise)."""
  if "洞調律" not in records.labels[i] or _PLAIN_PR & set(records.labels[i]):
    return None
  b = records.beats[i]
  onsets = np.round(b.vent_t[b.vent_kind == CONDUCTED] / MS).astype(int)
  onsets = onsets[(onsets > 20) & (onsets < 5000)]
  level = np.stack([records.ecg[i, o - 8 : o - 3] for o in onsets]).mean(axis=1) / 1000.0
  return np.ptp(level[:, [0, 1, 6, 7, 8, 9, 10, 11]], axis=0).max()


def test_artefacts_are_common_and_named_only_when_severe(noisy):
  """Most records carry some wander, many some mains or EMG, unlabelled; the quality findings appear exactly
  above the noise.SEVERE_* levels (a reader's threshold), measured on the stored leads."""
  freqs = np.fft.rfftfreq(5000, 1 / SAMPLE_RATE)
  leads = noisy.ecg[:, :, [L["I"], L["V5"]]].astype(np.float32)
  spectrum = np.abs(np.fft.rfft(leads, axis=1))  # (n, F, 2): I and V5; uV * samples / 2
  mains_uv = spectrum[:, [500, 600], 0].max(axis=1) * 2 / 5000
  high = spectrum[:, :, 1] * (freqs >= 100)
  emg_uv = np.sqrt(2 * np.square(high).sum(axis=1)) / 5000  # Parseval: rms above 100 Hz
  for term, measure, level, floor, share in (
    ("基線の動揺", [_wander_pp(noisy, i) for i in range(768)], noise.SEVERE_WANDER_PP_MV, 0.1, 0.6),
    ("交流障害", mains_uv, noise.SEVERE_MAINS_UV, 5.0, 0.4),
    ("筋電図混入", emg_uv, noise.SEVERE_EMG_UV, 5.0, 0.2),
  ):
    rows = [
      i for i in range(768) if measure[i] is not None and "心室ペーシング" not in noisy.labels[i]
    ]
    named = np.array([measure[i] for i in rows if term in noisy.labels[i]], float)
    unnamed = np.array([measure[i] for i in rows if term not in noisy.labels[i]], float)
    assert len(named) >= 5 and named.min() > level > unnamed.max(), term
    assert np.mean(unnamed > floor) > share, term  # present without a label
  wander = np.array(
    [
      w
      for i, w in enumerate([_wander_pp(noisy, i) for i in range(768)])
      if w is not None and "基線の動揺" not in noisy.labels[i]
    ]
  )
  assert np.mean(wander > 0.1) > 0.6 and np.percentile(wander, 90) > 0.3  # before 1.4.0: 0.57, 0.28


def test_normal_ecgs_in_their_full_variety(clean):
  """Normal ECGs: axis over -30..+90, rate 50-100 with (respiratory) sinus arrhythmia, P waves of many sizes."""
  rows = _with_primary(clean, "正常心電図")
  axes = np.array([_axis(*_median_beat(clean, i)) for i in rows])
  assert -30 < axes.min() < -10 and 80 < axes.max() <= 92  # before 1.4.0: -6..+88
  assert np.mean(axes < 0) > 0.03 and np.mean(axes > 60) > 0.15
  rates, spread, p_wave = [], [], []
  for i in rows:
    rr = np.diff(_r_peaks(clean.ecg[i] / 1000.0)) * MS
    rates.append(60000 / rr.mean())
    spread.append((rr.max() - rr.min()) / rr.mean())
    beat, at = _median_beat(clean, i)
    p_wave.append(beat[at - int(200 / MS) : at - int(20 / MS), L["II"]].max())
  assert 48 < min(rates) < 56 and 92 < max(rates) < 101  # before 1.4.0: 56-92
  assert np.percentile(spread, 90) > 0.08 and np.percentile(spread, 10) < 0.06
  assert np.percentile(p_wave, 90) > 1.8 * np.percentile(p_wave, 10)


def test_right_axis_deviation_is_not_dextrocardia(clean):
  """Both have a negative QRS in I; only dextrocardia inverts P (and T) in I and reverses the R progression."""

  def measures(i):
    beat, at = _median_beat(clean, i)
    onset, end = _qrs_bounds(beat, at)
    qrs = beat[onset:end]
    p = beat[at - int(200 / MS) : at - int(20 / MS), L["I"]].sum()
    return (
      qrs[:, L["I"]].sum(),
      qrs[:, L["aVF"]].sum(),
      p,
      np.ptp(qrs[:, L["V6"]]) / np.ptp(qrs[:, L["V2"]]),
    )

  rad = np.array([measures(i) for i in _with_primary(clean, "右軸偏位")])
  dextro = np.array([measures(i) for i in _with_primary(clean, "右胸心")])
  assert (rad[:, 0] < 0).all() and (rad[:, 1] > 0).all() and (rad[:, 2] > 0).all()
  assert (dextro[:, 0] < 0).all() and (dextro[:, 2] < 0).all()
  assert (
    np.median(dextro[:, 3]) < 0.5 < np.median(rad[:, 3])
  )  # V6 small beside V2 only in dextrocardia


def test_ventricular_ectopy_in_several_families(clean):
  """PVCs of both polarities in V1 (LBBB-like and RBBB-like), inferior and superior, of varied width; a share
  of records multifocal (two different ectopic shapes), the rest unifocal."""
  polarity, vertical, widths, multifocal, unifocal = [], [], [], [], []
  for i in _with_primary(clean, "心室期外収縮"):
    b = clean.beats[i]
    ectopic = [
      (t, k)
      for t, k in zip(b.vent_t, b.vent_kind)
      if k in (ECTOPIC_V, ECTOPIC_V2) and 300 < t < 9300
    ]
    shapes = []
    for t, _ in ectopic:
      at = int(round(t / MS))
      beat = clean.ecg[i, at - 100 : at + 300] / 1000.0
      onset, end = _qrs_bounds(beat, 100)
      shapes.append(beat[90:200].ravel())
      if len(shapes) == 1:
        polarity.append(beat[onset:end, L["V1"]].sum() > 0)
        vertical.append(beat[onset:end, L["aVF"]].sum() > 0)
        widths.append((end - onset) * MS)
    if len(shapes) >= 2:
      r = np.corrcoef(np.stack(shapes))[np.triu_indices(len(shapes), 1)].min()
      (multifocal if len({k for _, k in ectopic}) > 1 else unifocal).append(r)
  assert 0.2 < np.mean(polarity) < 0.8 and 0.2 < np.mean(vertical) < 0.8
  assert min(widths) >= 120 and max(widths) - min(widths) > 30
  assert len(multifocal) >= 2 and max(multifocal) < 0.8 < 0.95 < min(unifocal)


def test_atrial_fibrillation_fine_and_coarse_at_many_rates(clean):
  """AF ventricular rate over ~55-150 per minute; f waves fine in some records and coarse in others (p-p in II
  in the T-Q gaps, where only f waves are)."""
  rates, size = [], []
  for i in _with_primary(clean, "心房細動"):
    q = clean.beats[i].vent_t
    rates.append(60000 / np.diff(q).mean())
    gaps = [
      np.ptp(clean.ecg[i, int((a + 450) / MS) : int((b - 40) / MS), L["II"]])
      for a, b in zip(q[:-1], q[1:])
      if b - a > 600 and 0 < a and b < 10000
    ]
    if gaps:
      size.append(np.median(gaps) / 1000.0)
  assert min(rates) < 70 and max(rates) > 125
  assert np.percentile(size, 90) > 2.5 * np.percentile(size, 10)


def test_electrode_placement_and_torso_vary_the_chest_leads_only():
  """Electrode placement moves V1-V6 (an interspace high or low, shifted around the chest) and leaves I and II
  alone, so III = II - I and the other limb identities still hold exactly; the torso turns every dipole."""
  chest = morphology.electrode_placement(np.random.default_rng(0), 2000)
  heights = chest[:, 0, 1]
  assert chest.shape == (2000, 6, 3) and np.allclose(np.linalg.norm(chest[..., [0, 2]], axis=-1), 1)
  assert np.mean(heights < 0.0) > 0.1 and np.mean(heights > 0.22) > 0.1  # one interspace high / low
  assert np.mean(np.abs(heights - dipole.CHEST_HEIGHT) < 0.06) > 0.5
  vectors = np.array([[[0.6, 0.7, -0.4]]] * 2)  # one dipole seen by two placements
  volts = dipole.lead_matrix(vectors, np.ones((2, 8)), np.zeros(2), chest[:2])[:, 0]
  assert (
    np.array_equal(volts[0, :2], volts[1, :2]) and np.abs(volts[0, 2:] - volts[1, 2:]).max() > 0.02
  )
  leads = from_independent(volts[:, None, :])[:, 0]
  assert np.allclose(leads[:, L["III"]], leads[:, L["II"]] - leads[:, L["I"]], atol=1e-6)  # float32
  heart = morphology.normal_hearts(
    np.random.default_rng(1), morphology.draw_patients(np.random.default_rng(2), 4), np.arange(4)
  )
  before = heart.vector.copy()
  morphology.rotate_torso(heart, np.full(4, 10.0), np.full(4, -8.0))
  assert np.allclose(np.linalg.norm(heart.vector, axis=-1), np.linalg.norm(before, axis=-1))
  assert np.abs(heart.vector - before).max() > 0.05


# The simulator's own rule before report_ja.primary_label became the one rule (commit 2e7653b): first in this order.
PREVIOUS_SIGNIFICANCE = (
  "電極付け間違いの疑い",
  "心室頻拍",
  "ST上昇",
  "完全房室ブロック",
  "2度房室ブロック(ウェンケバッハ型)",
  "上室頻拍",
  "心房粗動",
  "心房細動",
  "心室ペーシング",
  "WPW症候群",
  "右胸心",
  "陳旧性前壁中隔梗塞",
  "陳旧性下壁梗塞",
  "完全左脚ブロック",
  "完全右脚ブロック",
  "テント状T波",
  "QT延長",
  "左室肥大",
  "右室肥大",
  "ST低下",
  "陰性T波",
  "接合部調律",
  "心室期外収縮",
  "心房期外収縮",
  "1度房室ブロック",
  "低電位",
  "左室高電位",
  "右軸偏位",
  "左軸偏位",
  "洞性頻脈",
  "洞性徐脈",
  "ストレイン型ST-T変化",
  "異常Q波",
  "右房負荷",
  "左房負荷",
  "U波増高",
  "平低T波",
  "時計方向回転",
  "反時計方向回転",
  "正常心電図",
  "洞調律",
  "基線の動揺",
  "筋電図混入",
  "交流障害",
)


def _previous_primary(labels):
  return min(labels, key=PREVIOUS_SIGNIFICANCE.index)


def test_the_one_primary_label_rule_gives_the_primaries_of_before(noisy):
  """report_ja.primary_label (PRIMARY_ORDER) picks what the simulator's SIGNIFICANCE rule picked: on generated
  records, and on every label set the generator can draw (primary, its rhythm, any secondaries, any quality)."""
  assert (
    findings.SIGNIFICANCE == PREVIOUS_SIGNIFICANCE
  )  # the same findings in the same order (draw_labels sorts so)
  for labels, primary in zip(noisy.labels, noisy.primary_label):
    assert _previous_primary(labels) == primary == report_ja.primary_label(labels)
  checked = 0
  for primary in findings.PRIMARY_WEIGHTS:
    options = findings.SECONDARIES.get(primary, ())
    for count in range(len(options) + 1):
      for secondaries in itertools.combinations(options, count):
        for quality in ((),) + tuple((q,) for q in findings.QUALITY):
          labels = [findings.RHYTHM_OF.get(primary, "洞調律"), primary, *secondaries, *quality]
          assert report_ja.primary_label(labels) == _previous_primary(labels) == primary, labels
          checked += 1
  assert checked > 4 * len(findings.PRIMARY_WEIGHTS)


def test_rhythm_and_quality_terms_come_from_the_vocabulary_groups():
  """The varied writer's rhythm and quality terms (vocab/report_ja, from the vocabulary's groups) are, on the
  simulator's findings, exactly the sets the simulator's writer used."""
  simulated = set(findings.SIGNIFICANCE)
  assert report_ja.rhythm_terms() & simulated == set(findings.RHYTHM_OF.values()) | {"洞調律"}
  assert (
    findings.QUALITY == report_ja.QUALITY == ("基線の動揺", "筋電図混入", "交流障害")
  )  # drawn by index: same order
  groups = terms.term_by_name()
  assert {groups[t].group_ja for t in report_ja.QUALITY} == {report_ja.QUALITY_GROUP}


# SHA-256 of the JSON of [reports, labels, primary labels] of synthetic_ecg_ja 1.4.0 (every random draw before the
# report writer's shifts its stream, so these change with the waveforms: recompute them and bump the dataset version).
DIGESTS_1_4_0 = [
  ((7, "validation", 40, 0), "eb51871a6039bea17835c43dff9d24aaf7d739551c9d6eb19541d124077e5bd9"),
  ((0, "train", 1000, 0), "13ab5370de733554ae99fad22e5c8c0e5254cb43d956cd59ec5e371a1edad11a"),
  ((0, "test", 1000, 1), "600e220b4895b0a153e902b9c5c081467973f4762265d899ecf1a2240898dfea"),
]


@pytest.mark.parametrize("args, digest", DIGESTS_1_4_0)
def test_reports_labels_and_primaries_are_pinned_for_the_dataset_version(args, digest):
  """The same seed gives byte-identical reports, labels and primary labels (the pins of 2e7653b, when the writer
  moved to vocab/report_ja, held until 1.4.0 widened the waveforms). A change here changes every synthetic
  dataset: bump its version (data/builders/synthetic_ecg_ja.py)."""
  chunk = synth.generate_chunk(*args)
  blob = json.dumps([chunk.report, chunk.labels, chunk.primary_label], ensure_ascii=False).encode(
    "utf-8"
  )
  assert hashlib.sha256(blob).hexdigest() == digest


def test_vocab_imports_nothing_of_ours_but_vocab_and_errors():
  root = pathlib.Path(report_ja.__file__).parent
  for path in root.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
      names = (
        [node.module or ""]
        if isinstance(node, ast.ImportFrom)
        else [a.name for a in node.names]
        if isinstance(node, ast.Import)
        else []
      )
      for name in names:
        if name.startswith("ecg_contrastive"):
          assert name.startswith(("ecg_contrastive.vocab", "ecg_contrastive.errors")), (
            path.name,
            name,
          )
