"""Small PTB-XL / MIMIC-IV-ECG / manifest folders in the real on-disk layouts, from the synthetic generator.

    python -m ecg_contrastive.data.synthetic.fake_folders ptbxl /tmp/ptb-xl [--records 60]
    python -m ecg_contrastive.main --config configs/default.py:tiny --workdir /tmp/run \
        --config.dataset=ptbxl --config.source_dir=/tmp/ptb-xl

Waveforms are `synth` records written as WFDB format 16 with `wfdb.wrsamp` (PTB-XL: 1 uV steps,
records500/ and records100/; MIMIC-IV-ECG: 5 uV steps, its lead order I, II, III, aVR, aVF, aVL, V1-V6)
and, in the manifest folder, also as .npy at 250 Hz in uV. SCP codes / machine statements are written
from the synthetic findings. A few records are broken on purpose (`FakeFolder.bad` says how): a missing
.dat, a truncated .dat, too few leads, NaN samples, a missing file, no term to map. Users can try the
real-data path with them; tests/test_real_data.py uses them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
from importlib import resources

import numpy as np
import wfdb

from ecg_contrastive.data.synthetic import synth
from ecg_contrastive.ecg import signal
from ecg_contrastive.vocab import term_maps, terms

MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
PTBXL_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
# PTB-XL SCP code written for a synthetic finding: the first code of resources/ptbxl_scp_ja.tsv with that term,
# except where a plainer code fits the synthetic finding better.
_SCP_OVERRIDE = {
  "ST低下": "STD_",
  "心室ペーシング": "PACE",
  "2度房室ブロック(ウェンケバッハ型)": "2AVB",
}
# A machine statement (MIMIC-IV-ECG style) per synthetic finding; resources/mimic_statements_ja.tsv maps it back.
STATEMENT = {
  "電極付け間違いの疑い": "Arm leads reversed",
  "心室頻拍": "Ventricular tachycardia",
  "ST上昇": "Inferior ST elevation",
  "完全房室ブロック": "Complete heart block",
  "2度房室ブロック(ウェンケバッハ型)": "2nd degree A-V block, Mobitz I",
  "上室頻拍": "Supraventricular tachycardia",
  "心房粗動": "Atrial flutter",
  "心房細動": "Atrial fibrillation",
  "心室ペーシング": "Ventricular paced rhythm",
  "WPW症候群": "Wolff-Parkinson-White pattern",
  "右胸心": "Dextrocardia",
  "陳旧性前壁中隔梗塞": "Anteroseptal infarct - age undetermined",
  "陳旧性下壁梗塞": "Inferior infarct - age undetermined",
  "完全左脚ブロック": "Left bundle branch block",
  "完全右脚ブロック": "Right bundle branch block",
  "テント状T波": "Peaked T waves",
  "QT延長": "Prolonged QT interval",
  "左室肥大": "Left ventricular hypertrophy",
  "右室肥大": "Right ventricular hypertrophy",
  "ST低下": "Lateral ST depression",
  "陰性T波": "T wave inversion in anterior leads",
  "接合部調律": "Junctional rhythm",
  "心室期外収縮": "Ventricular premature complexes",
  "心房期外収縮": "Atrial premature complexes",
  "1度房室ブロック": "1st degree A-V block",
  "低電位": "Low QRS voltages",
  "左室高電位": "Voltage criteria for LVH",
  "右軸偏位": "Right axis deviation",
  "左軸偏位": "Left axis deviation",
  "洞性頻脈": "Sinus tachycardia",
  "洞性徐脈": "Sinus bradycardia",
  "ストレイン型ST-T変化": "Lateral strain pattern",
  "異常Q波": "Q waves in inferior leads",
  "右房負荷": "Right atrial enlargement",
  "左房負荷": "Left atrial enlargement",
  "U波増高": "Prominent U waves",
  "平低T波": "Flat T waves",
  "時計方向回転": "Clockwise rotation",
  "反時計方向回転": "Counterclockwise rotation",
  "正常心電図": "Normal ECG",
  "洞調律": "Sinus rhythm",
  "基線の動揺": "Baseline wander",
  "筋電図混入": "Muscle artifact",
  "交流障害": "60 Hz interference",
}
UNKNOWN_STATEMENT = "Nonspecific QRS abnormality"  # maps to no term: counted as unmapped


@dataclasses.dataclass
class FakeFolder:
  """What was written. ecg: record_id -> int16 (5000, 12) uV in signal.LEADS order, as generated."""

  root: str
  ecg: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  findings: dict[str, list[str]] = dataclasses.field(
    default_factory=dict
  )  # synthetic findings per record
  patient: dict[str, str] = dataclasses.field(default_factory=dict)
  bad: dict[str, str] = dataclasses.field(default_factory=dict)  # record_id -> what is broken
  suspected: dict[str, set[str]] = dataclasses.field(
    default_factory=dict
  )  # terms written as possible


def _scp_code_of() -> dict[str, str]:
  first = {}
  for code, term in term_maps.scp_table().items():
    first.setdefault(term, code)
  return {**first, **_SCP_OVERRIDE}


def _write_wfdb(
  folder: str, name: str, ecg_uv: np.ndarray, leads: tuple[str, ...], gain: float, fs: int = 500
):
  """uV (T, 12) in signal.LEADS order -> WFDB format 16 with channels `leads` (any spelling); NaN -> WFDB's gap."""
  os.makedirs(folder, exist_ok=True)
  order = [signal.LEADS.index(signal.canonical_lead(lead)) for lead in leads]
  mv = ecg_uv[:, order].astype(np.float64) / 1000.0
  wfdb.wrsamp(
    name,
    fs=fs,
    units=["mV"] * len(leads),
    sig_name=list(leads),
    p_signal=mv,
    fmt=["16"] * len(leads),
    adc_gain=[gain] * len(leads),
    baseline=[0] * len(leads),
    write_dir=folder,
  )


def _generate(out_dir: str, n_records: int, seed: int) -> tuple[FakeFolder, synth.Records]:
  os.makedirs(out_dir, exist_ok=True)
  return FakeFolder(os.path.abspath(out_dir)), synth.generate(n_records, seed=seed)


def _write_csv(path: str, header: list[str], rows: list[list], delimiter: str = ",") -> None:
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)


def write_ptbxl(out_dir: str, n_records: int = 60, seed: int = 0) -> FakeFolder:
  """ptbxl_database.csv, scp_statements.csv, records500/ and records100/ (PTB-XL 1.0.3 layout)."""
  fake, records = _generate(out_dir, n_records, seed)
  code_of, en = _scp_code_of(), {t.ja: t.en for t in terms.load_terms()}
  rng = np.random.default_rng([seed, 1])
  rows = []
  for i in range(n_records):
    ecg_id, patient = i + 1, int(records.patient_id[i][1:]) + 1000
    record_id, labels = f"{ecg_id:05d}", records.labels[i]
    codes = {}
    for term in labels:
      if term in code_of:
        rhythm = terms.term_by_name()[term].group_ja == "調律"
        codes[code_of[term]] = 0.0 if rhythm else float(rng.choice([100.0, 100.0, 100.0, 50.0]))
    if rng.random() < 0.15:
      codes["ABQRS"] = 0.0
    if not any(term_maps.scp_table().get(c) for c in codes):
      codes.setdefault("ABQRS", 0.0)
      fake.bad[record_id] = "no mapped code"
    folder = f"{ecg_id // 1000 * 1000:05d}"
    _write_wfdb(
      os.path.join(out_dir, "records500", folder),
      f"{record_id}_hr",
      records.ecg[i],
      PTBXL_LEADS,
      1000.0,
    )
    _write_wfdb(
      os.path.join(out_dir, "records100", folder),
      f"{record_id}_lr",
      np.rint(signal.resample(records.ecg[i].astype(np.float64), 500, 100)).astype(np.int16),
      PTBXL_LEADS,
      1000.0,
      fs=100,
    )
    report = ". ".join(en[t] for t in labels) + "."
    rows.append(
      [
        ecg_id,
        f"{patient}.0",
        50 + i % 40,
        i % 2,
        "",
        "",
        0,
        0,
        "CS-12   E",
        "1990-01-01 00:00:00",
        report,
        repr(codes),
        "",
        "",
        "",
        "",
        "False",
        "False",
        "True",
        "",
        "",
        "",
        "",
        "",
        "",
        patient % 10 + 1,
        f"records100/{folder}/{record_id}_lr",
        f"records500/{folder}/{record_id}_hr",
      ]
    )
    fake.ecg[record_id], fake.findings[record_id], fake.patient[record_id] = (
      records.ecg[i],
      labels,
      str(patient),
    )
  good = [r for r in fake.ecg if r not in fake.bad]
  rows[int(good[4]) - 1][1], fake.bad[good[4]] = (
    "n/a",
    "unreadable patient_id",
  )  # a corrupt cell, not a crash
  _write_csv(
    os.path.join(out_dir, "ptbxl_database.csv"),
    [
      "ecg_id",
      "patient_id",
      "age",
      "sex",
      "height",
      "weight",
      "nurse",
      "site",
      "device",
      "recording_date",
      "report",
      "scp_codes",
      "heart_axis",
      "infarction_stadium1",
      "infarction_stadium2",
      "validated_by",
      "second_opinion",
      "initial_autogenerated_report",
      "validated_by_human",
      "baseline_drift",
      "static_noise",
      "burst_noise",
      "electrodes_problems",
      "extra_beats",
      "pacemaker",
      "strat_fold",
      "filename_lr",
      "filename_hr",
    ],
    rows,
  )
  _write_scp_statements(os.path.join(out_dir, "scp_statements.csv"))
  _break(
    os.path.join(out_dir, "records500", "00000", f"{good[2]}_hr.dat"), "missing .dat", fake, good[2]
  )
  _break(
    os.path.join(out_dir, "records500", "00000", f"{good[3]}_hr.dat"),
    "truncated .dat",
    fake,
    good[3],
  )
  return fake


def _write_scp_statements(path: str) -> None:
  """scp_statements.csv with the codes of resources/ptbxl_scp_ja.tsv (the 71 codes of PTB-XL)."""
  lines = (
    resources.files("ecg_contrastive")
    .joinpath("resources/ptbxl_scp_ja.tsv")
    .read_text("utf-8")
    .splitlines()[1:]
  )
  rows = [
    [code, description, "", "", "", "", "", "", description, "", "", "", ""]
    for code, _, description in (l.split("\t") for l in lines if l.strip())
  ]
  _write_csv(
    path,
    [
      "",
      "description",
      "diagnostic",
      "form",
      "rhythm",
      "diagnostic_class",
      "diagnostic_subclass",
      "Statement Category",
      "SCP-ECG Statement Description",
      "AHA code",
      "aECG REFID",
      "CDISC Code",
      "DICOM Code",
    ],
    rows,
  )


def _break(path: str, how: str, fake: FakeFolder, record_id: str) -> None:
  """Deletes (a file or a folder) or truncates what was written at `path`."""
  if how.startswith("missing"):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  else:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  fake.bad[record_id] = how


SUSPECTABLE = frozenset(
  {
    "左室肥大",
    "右室肥大",
    "陳旧性前壁中隔梗塞",
    "陳旧性下壁梗塞",
    "左房負荷",
    "右房負荷",
    "WPW症候群",
  }
)


def write_mimic_iv_ecg(out_dir: str, n_records: int = 60, seed: int = 0) -> FakeFolder:
  """record_list.csv, machine_measurements.csv and files/pNNNN/pSUBJECT/sSTUDY/STUDY (MIMIC-IV-ECG 1.0 layout)."""
  fake, records = _generate(out_dir, n_records, seed)
  rng = np.random.default_rng([seed, 2])
  listed, measured = [], []
  for i in range(n_records):
    subject, study = 10000000 + 37 * int(records.patient_id[i][1:]), 40000000 + 1013 * i
    record_id, path = str(study), f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
    statements, suspected = [], set()
    for term in records.labels[i]:
      if term in SUSPECTABLE and rng.random() < 0.3:
        statements.append("Possible " + STATEMENT[term][0].lower() + STATEMENT[term][1:])
        suspected.add(term)
      else:
        statements.append(STATEMENT[term])
    if rng.random() < 0.15:
      statements.append(UNKNOWN_STATEMENT)
    if rng.random() < 0.3:
      statements.append("Unconfirmed")  # boilerplate: no term, not counted
    time = f"2180-{1 + i % 12:02d}-{1 + i % 28:02d} 08:{i % 60:02d}:00"
    _write_wfdb(
      os.path.join(out_dir, os.path.dirname(path)), record_id, records.ecg[i], MIMIC_LEADS, 200.0
    )
    listed.append([subject, study, record_id, time, path])
    measured.append(
      [subject, study, 6848296 + i % 7, time]
      + statements
      + [""] * (18 - len(statements))
      + [
        "0.005-150 Hz",
        "60 Hz notch  Baseline filter",
        800 + i,
        40,
        150,
        180,
        270,
        600,
        60,
        45,
        50,
      ]
    )
    fake.ecg[record_id], fake.findings[record_id] = records.ecg[i], records.labels[i]
    fake.patient[record_id], fake.suspected[record_id] = str(subject), suspected
  good = list(fake.ecg)
  _break(
    os.path.join(out_dir, os.path.dirname(listed[2][4])), "missing record folder", fake, good[2]
  )
  _write_wfdb(
    os.path.join(out_dir, os.path.dirname(listed[3][4])),
    good[3],
    records.ecg[3],
    MIMIC_LEADS[:8],
    200.0,
  )
  fake.bad[good[3]] = "8 leads"
  gap = records.ecg[4].astype(np.float64)
  gap[1000:1200, 7] = np.nan
  _write_wfdb(
    os.path.join(out_dir, os.path.dirname(listed[4][4])), good[4], gap, MIMIC_LEADS, 200.0
  )
  fake.bad[good[4]] = "NaN samples"
  del measured[5]
  fake.bad[good[5]] = "no machine_measurements row"
  _write_csv(
    os.path.join(out_dir, "record_list.csv"),
    ["subject_id", "study_id", "file_name", "ecg_time", "path"],
    listed,
  )
  _write_csv(
    os.path.join(out_dir, "machine_measurements.csv"),
    ["subject_id", "study_id", "cart_id", "ecg_time"]
    + [f"report_{k}" for k in range(18)]
    + [
      "bandwidth",
      "filtering",
      "rr_interval",
      "p_onset",
      "p_end",
      "qrs_onset",
      "qrs_end",
      "t_end",
      "p_axis",
      "qrs_axis",
      "t_axis",
    ],
    measured,
  )
  return fake


def write_manifest(out_dir: str, n_records: int = 30, seed: int = 0) -> FakeFolder:
  """manifest.csv + records/ (WFDB, 1 uV steps) + npy/ (.npy (12, T) at 250 Hz in uV): a hospital export."""
  fake, records = _generate(out_dir, n_records, seed)
  rows = []
  for i in range(n_records):
    name, patient = f"M{i:04d}", records.patient_id[i]
    if i % 2 == 0:
      path, fs, units = f"records/{name}.hea", "", ""
      _write_wfdb(os.path.join(out_dir, "records"), name, records.ecg[i], signal.LEADS, 1000.0)
    else:
      path, fs, units = f"npy/{name}.npy", "250", "uV"
      os.makedirs(os.path.join(out_dir, "npy"), exist_ok=True)
      npy = signal.resample(records.ecg[i].astype(np.float64), 500, 250).T.astype(np.float32)
      if i == 3:
        npy[4, 100:140] = np.nan
      np.save(os.path.join(out_dir, path), npy)
    record_id = name if i % 5 else ""  # empty: the builder uses the path without its extension
    key = record_id or os.path.splitext(path)[0]
    split = (
      ("train", "validation", "test")[int(patient[1:]) % 3] if int(patient[1:]) % 2 == 0 else ""
    )
    labels = (
      ";".join(records.labels[i] + ["院内コード123"]) if i % 3 == 0 else ""
    )  # else: the terms in the report
    rows.append([record_id, patient, path, records.report[i], split, labels, fs, units])
    fake.ecg[key], fake.findings[key], fake.patient[key] = (
      records.ecg[i],
      records.labels[i],
      patient,
    )
    if i == 3:
      fake.bad[key] = "NaN samples"
    elif i == 4:
      _break(os.path.join(out_dir, "records", f"{name}.dat"), "missing .dat", fake, key)
  _write_csv(
    os.path.join(out_dir, "manifest.csv"),
    ["record_id", "patient_id", "path", "report", "split", "labels", "fs", "units"],
    rows,
  )
  return fake


WRITERS = {"ptbxl": write_ptbxl, "mimic_iv_ecg": write_mimic_iv_ecg, "manifest": write_manifest}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("layout", choices=sorted(WRITERS))
  parser.add_argument("out_dir")
  parser.add_argument("--records", type=int, default=60)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  fake = WRITERS[args.layout](args.out_dir, args.records, args.seed)
  print(f"wrote {len(fake.ecg)} records to {fake.root}; broken on purpose: {fake.bad}")


if __name__ == "__main__":
  main()
