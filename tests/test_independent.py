"""The independent simulator (evals/independent): its waveforms measured as a reader would (R-R regularity, PR,
QRS width, axis, wander and mains, limb-lead identities), its folder read by the `ecg_manifest` builder with the
right labels, and the check command on a tiny trained run: the table's numbers are those of the scores file."""

import csv
import json
import os

import numpy as np
import pytest

from configs import default
from ecg_contrastive.data import pipeline
from ecg_contrastive.ecg import signal
from ecg_contrastive.evals.independent import check
from ecg_contrastive.evals.independent import simulate as sim
from ecg_contrastive.evals.independent.__main__ import main

FS = signal.SAMPLE_RATE
LEAD = {name: i for i, name in enumerate(signal.LEADS)}


def r_peaks(x: np.ndarray) -> np.ndarray:
  """Sample indices of the QRS complexes of a (N, 12) mV record: maxima of the smoothed summed absolute slope
  above 35% of its 99.5th percentile, at least 250 ms apart."""
  e = np.convolve(np.abs(np.diff(x, axis=0)).sum(axis=1), np.ones(20) / 20, mode="same")
  thr = 0.35 * np.percentile(e, 99.5)
  candidates = np.flatnonzero((e[1:-1] > thr) & (e[1:-1] >= e[:-2]) & (e[1:-1] >= e[2:])) + 1
  peaks = []
  for i in candidates:
    if not peaks or i - peaks[-1] > FS // 4:
      peaks.append(i)
    elif e[i] > e[peaks[-1]]:
      peaks[-1] = i
  return np.array(peaks)


def rr_cv(x: np.ndarray) -> float:
  rr = np.diff(r_peaks(x))
  return float(rr.std() / rr.mean())


def qrs_width(x: np.ndarray) -> float:
  """Median QRS duration (s): first to last sample within 150 ms of the R peak where some lead's slope exceeds
  15% of the beat's steepest (the widest lead decides, as a reader measures it)."""
  slope = np.abs(np.gradient(x, axis=0)).max(axis=1)
  widths = []
  for p in r_peaks(x)[1:-1]:
    seg = slope[p - 75 : p + 75]
    above = np.flatnonzero(seg > 0.15 * seg.max())
    widths.append((above[-1] - above[0]) / FS)
  return float(np.median(widths))


def pr_interval(x: np.ndarray) -> float:
  """Median PR (s) in lead II: P onset (|II| back under 0.02 mV before the P wave) to QRS onset (|II| under
  0.02 mV for 10 ms before the R peak)."""
  ii, out = x[:, LEAD["II"]], []
  for p in r_peaks(x)[1:-1]:
    q = p - 60 + int(np.argmax(np.abs(ii[p - 60 : p + 60])))
    while q > 5 and np.abs(ii[q - 5 : q]).max() >= 0.02:
      q -= 1
    q -= 5
    o = q
    while o > q - 200 and ii[o] < 0.04:  # back through the PR segment into the P wave
      o -= 1
    while o > 0 and ii[o] >= 0.02:  # back to the P onset
      o -= 1
    out.append((q - o) / FS)
  return float(np.median(out))


def qrs_axis(x: np.ndarray) -> float:
  """Frontal QRS axis (degrees) from the net QRS areas (±80 ms) of I and aVF (aVF scaled by 2/√3, hexaxial)."""
  i_area = sum(x[p - 40 : p + 40, LEAD["I"]].sum() for p in r_peaks(x)[1:-1])
  f_area = sum(x[p - 40 : p + 40, LEAD["aVF"]].sum() for p in r_peaks(x)[1:-1])
  return float(np.degrees(np.arctan2(2 * f_area / np.sqrt(3), i_area)))


def records(finding: str, n: int, seed: int = 1, interference: bool = False) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [sim.simulate(rng, finding, interference)[0] for _ in range(n)]


def test_rr_regularity_af_irregular_sinus_regular():
  af = [rr_cv(x) for x in records("心房細動", 8)]
  sinus = [rr_cv(x) for f in ("正常心電図", "洞性頻脈", "洞性徐脈") for x in records(f, 6)]
  assert min(af) > 0.15, af  # AF: irregularly irregular
  assert max(sinus) < 0.08, sinus  # sinus (with sinus arrhythmia from the bimodal RR spectrum)


def test_pr_over_200_ms_in_first_degree_block_only():
  block = [pr_interval(x) for x in records("1度房室ブロック", 8)]
  normal = [pr_interval(x) for x in records("正常心電図", 8)]
  assert min(block) > 0.2, block
  assert max(normal) < 0.2 and min(normal) > 0.1, normal


def test_qrs_wide_in_bundle_branch_blocks_only():
  wide = [qrs_width(x) for f in ("完全右脚ブロック", "完全左脚ブロック") for x in records(f, 6)]
  narrow = [qrs_width(x) for f in ("正常心電図", "左室肥大") for x in records(f, 6)]
  assert min(wide) > 0.12, wide
  assert max(narrow) < 0.11, narrow


@pytest.mark.parametrize(
  "finding, low, high",
  [("左軸偏位", -90.0, -30.0), ("右軸偏位", 90.0, 180.0), ("正常心電図", -30.0, 90.0)],
)
def test_axis_from_i_and_avf(finding, low, high):
  axes = [qrs_axis(x) for x in records(finding, 8)]
  assert all(low < a < high for a in axes), axes


def test_low_voltage_and_hypertrophy_amplitudes():
  low = records("低電位", 6)
  assert (
    max(np.ptp(x[:, :6], axis=0).max() for x in low) < 0.5
  )  # every limb lead < 0.5 mV peak to peak
  assert max(np.ptp(x[:, 6:], axis=0).max() for x in low) < 1.0  # every chest lead < 1.0 mV
  for x in records("左室肥大", 10):
    sokolow = -x[:, LEAD["V1"]].min() + x[:, LEAD["V5"]].max()  # S V1 + R V5
    gubner = x[:, LEAD["I"]].max() - x[:, LEAD["III"]].min()  # R I + S III
    assert sokolow > 3.5 or gubner > 2.5, (sokolow, gubner)  # a voltage criterion of LVH is met
  normal = [-x[:, LEAD["V1"]].min() + x[:, LEAD["V5"]].max() for x in records("正常心電図", 10)]
  assert max(normal) < 3.5, normal


def test_wander_mains_and_limb_identities_in_the_written_records(tmp_path):
  import wfdb

  folder = sim.write_folder(str(tmp_path), records=14, seed=3)
  rows = list(csv.DictReader(open(os.path.join(folder, "manifest.csv"), encoding="utf-8")))
  assert [r["finding"] for r in rows] == list(sim.FINDINGS)
  for r in rows:
    rec = wfdb.rdrecord(os.path.join(folder, r["path"]), physical=False)
    assert rec.fs == FS and rec.sig_len == signal.NUM_SAMPLES and rec.sig_name == list(signal.LEADS)
    d = rec.d_signal.astype(np.int64)  # int16 µV
    i_, ii, iii, avr, avl, avf = (d[:, k] for k in range(6))
    # each lead rounded to the µV on its own: the identities hold to 1 unit (2 for the halves)
    assert np.abs(iii - (ii - i_)).max() <= 1
    assert np.abs(2 * avr + (i_ + ii)).max() <= 2
    assert np.abs(2 * avl - (2 * i_ - ii)).max() <= 2
    assert np.abs(2 * avf - (2 * ii - i_)).max() <= 2
    spectrum = np.abs(np.fft.rfft(d[:, LEAD["II"]] / 1000.0)) / signal.NUM_SAMPLES
    hz = np.fft.rfftfreq(signal.NUM_SAMPLES, 1 / FS)
    wander = np.sqrt(2 * (spectrum[(hz > 0.04) & (hz < 0.5)] ** 2).sum())  # mV rms below 0.5 Hz
    assert wander > 0.03, (r["finding"], wander)
    band = (hz > 40) & (hz < 70)
    every = (np.abs(np.fft.rfft(d / 1000.0, axis=0)) / signal.NUM_SAMPLES)[band].sum(axis=1)
    assert hz[band][np.argmax(every)] in (50.0, 60.0), r["finding"]  # the 12 leads' spectra summed
    assert every.max() > 20 * np.median(every), r["finding"]
  # the same folder is reused, not rewritten
  done = os.path.join(folder, "done.json")
  before = os.stat(done).st_mtime_ns
  assert sim.write_folder(str(tmp_path), records=14, seed=3) == folder
  assert os.stat(done).st_mtime_ns == before


def test_folder_loads_through_the_manifest_builder(tmp_path):
  folder = sim.write_folder(str(tmp_path / "sim"), records=28, seed=0)
  source = pipeline.open_source("ecg_manifest", "test", str(tmp_path / "tfds"), source_dir=folder)
  rows = {
    os.path.splitext(r["path"])[0]: r
    for r in csv.DictReader(open(os.path.join(folder, "manifest.csv"), encoding="utf-8"))
  }
  meta = source.meta
  assert len(source) == 28
  for rid, primary, labels in zip(meta.record_id, meta.primary_label, meta.labels):
    row = rows[str(rid)]
    assert primary == row["finding"]
    assert list(labels) == row["labels"].split(";")
    assert "基線の動揺" not in labels and "交流障害" not in labels  # the interference is unlabelled
  assert sorted(meta.primary_label) == sorted(list(sim.FINDINGS) * 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir of 2 steps of configs/default.py:tiny, evaluated on its test split (as tests/test_eval_mode.py)."""
  from ecg_contrastive import train

  config = default.get_config("tiny")
  config.update(num_steps=2, checkpoint_every=2, eval_splits=("test",), keep_checkpoints=1)
  workdir = str(tmp_path_factory.mktemp("independent") / "run")
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow  # trains a tiny run and evaluates it (about a minute here)
def test_command_table_equals_the_scores_file(trained, tmp_path, capsys):
  main(["--workdir", trained, "--records", "28", "--out", str(tmp_path)])
  printed = capsys.readouterr().out
  result = json.load(open(os.path.join(trained, "eval", "independent.json"), encoding="utf-8"))
  assert (
    open(os.path.join(trained, "eval", "independent.md"), encoding="utf-8").read().strip()
    == (result["table"])
  )
  assert result["table"] in printed
  z = np.load(os.path.join(trained, "eval", "independent", "test.scores.npz"))
  labels, scores = list(z["labels"]), z["scores"]
  folder = os.path.join(str(tmp_path), sim.folder_name(0, 28))
  finding = {
    os.path.splitext(r["path"])[0]: r["finding"]
    for r in csv.DictReader(open(os.path.join(folder, "manifest.csv"), encoding="utf-8"))
  }
  truth = np.array([labels.index(finding[str(r)]) for r in z["record_id"]])
  order = np.argsort(-scores, axis=1)
  for f in sim.FINDINGS:
    m = np.array([finding[str(r)] == f for r in z["record_id"]])
    row = result["per_finding"][f]
    assert row["n"] == m.sum() == 2
    assert row["top1"] == float((order[m, 0] == truth[m]).mean())
    assert row["top5"] == float((order[m, :5] == truth[m, None]).any(axis=1).mean())
  overall = result["per_finding"]["overall"]
  assert overall["top1"] == float((order[:, 0] == truth).mean())
  assert overall["top1"] == pytest.approx(
    result["eval_top1"], abs=1e-12
  )  # the same as --mode eval's
  assert overall["top5"] == pytest.approx(result["eval_top5"], abs=1e-12)
  rows = [
    r
    for r in csv.DictReader(open(os.path.join(trained, "eval", "results.csv")))
    if r["dataset"] == "synthetic_ecg_ja/tiny" and r["split"] == "test"
  ]
  ind = result["in_distribution"]
  assert ind["top1"] == float(rows[-1]["top1"]) and ind["top5"] == float(rows[-1]["top5"])
  assert result["difference_points"]["top1"] == round(100 * (overall["top1"] - ind["top1"]), 1)
  assert f"{overall['top1']:.3f}" in printed and f"{ind['top1']:.3f}" in printed


def test_in_distribution_absent_and_bad_workdir(tmp_path, capsys):
  assert check.in_distribution(str(tmp_path), "synthetic_ecg_ja/tiny") is None
  with pytest.raises(SystemExit) as e:
    main(["--workdir", str(tmp_path / "nothing"), "--records", "14", "--out", str(tmp_path)])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "config.json" in err and len(err.strip().splitlines()) == 1
