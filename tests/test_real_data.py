"""The real-data builders (ptbxl, mimic_iv_ecg, ecg_manifest) on small folders in the real layouts (fake_folders)."""

import csv
import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecg_contrastive.config_check import ConfigError, check_config
from ecg_contrastive.data import pipeline
from ecg_contrastive.data.builders.local_source import SourceError, hash_split
from ecg_contrastive.data.synthetic import fake_folders
from ecg_contrastive.ecg import signal
from ecg_contrastive.vocab import report_ja, term_maps

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("real")


@pytest.fixture(scope="module")
def folders(root):
  return {
    "ptbxl": fake_folders.write_ptbxl(str(root / "ptb-xl"), 40),
    "mimic_iv_ecg": fake_folders.write_mimic_iv_ecg(str(root / "mimic"), 60),
    "ecg_manifest": fake_folders.write_manifest(str(root / "manifest"), 30),
  }


@pytest.fixture(scope="module")
def sources(root, folders):
  """dataset -> split -> EcgSource, built once from the fake folders."""
  return {
    name: {
      s: pipeline.open_source(name, s, str(root / "tfds"), source_dir=fake.root) for s in SPLITS
    }
    for name, fake in folders.items()
  }


def _csv(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def _ids(source):
  return set(source.meta.record_id)


def _assert_disjoint_by_patient(splits):
  patients = {s: set(src.meta.patient_id) for s, src in splits.items()}
  for a in SPLITS:
    for b in SPLITS:
      assert a == b or not patients[a] & patients[b], (a, b)


@pytest.mark.slow
def test_ptbxl_splits_follow_strat_fold(folders, sources):
  fake, rows = folders["ptbxl"], _csv(os.path.join(folders["ptbxl"].root, "ptbxl_database.csv"))
  fold_split = {**dict.fromkeys(range(1, 9), "train"), 9: "validation", 10: "test"}
  expected = {
    s: {f"{int(r['ecg_id']):05d}" for r in rows if fold_split[int(r["strat_fold"])] == s}
    - set(fake.bad)
    for s in SPLITS
  }
  assert {s: _ids(sources["ptbxl"][s]) for s in SPLITS} == expected
  assert all(expected.values()) and sum(map(len, expected.values())) == 40 - len(fake.bad)
  _assert_disjoint_by_patient(sources["ptbxl"])


@pytest.mark.slow
def test_mimic_and_manifest_splits_follow_the_patient_hash_or_the_split_column(folders, sources):
  mimic = folders["mimic_iv_ecg"]
  for s in SPLITS:
    assert _ids(sources["mimic_iv_ecg"][s]) == {
      r for r, p in mimic.patient.items() if hash_split(p) == s and r not in mimic.bad
    }, s
  _assert_disjoint_by_patient(sources["mimic_iv_ecg"])
  rows = _csv(os.path.join(folders["ecg_manifest"].root, "manifest.csv"))
  split_of = {
    r["record_id"] or os.path.splitext(r["path"])[0]: r["split"] or hash_split(r["patient_id"])
    for r in rows
  }
  assert {r["split"] for r in rows} == {"", *SPLITS}  # both rules are exercised
  for s in SPLITS:
    expected = {r for r, v in split_of.items() if v == s} - set(folders["ecg_manifest"].bad)
    assert _ids(sources["ecg_manifest"][s]) == expected
  _assert_disjoint_by_patient(sources["ecg_manifest"])
  # pins the hash itself: a change would move patients of an existing dataset to other splits
  assert [len(sources["mimic_iv_ecg"][s]) for s in SPLITS] == [48, 4, 4]  # 60 listed, 4 bad


def _by_id(splits):
  return {rid: (src, i) for src in splits.values() for i, rid in enumerate(src.meta.record_id)}


@pytest.mark.slow
def test_waveforms_come_back_in_contract_lead_order(folders, sources):
  for name, atol in (
    ("ptbxl", 0),
    ("mimic_iv_ecg", 3),
  ):  # PTB-XL: 1 uV steps; MIMIC: 5 uV steps, own lead order
    fake, index = folders[name], _by_id(sources[name])
    for record_id, (src, i) in index.items():
      diff = np.abs(src.read(np.array([i]))[0].astype(np.int32) - fake.ecg[record_id])
      assert diff.max() <= atol, (name, record_id, diff.max())
  fake, index = folders["ecg_manifest"], _by_id(sources["ecg_manifest"])
  rows = {
    r["record_id"] or os.path.splitext(r["path"])[0]: r
    for r in _csv(os.path.join(fake.root, "manifest.csv"))
  }
  npy_checked = 0
  for record_id, (src, i) in index.items():
    ecg = src.read(np.array([i]))[0]
    if rows[record_id]["path"].endswith(
      ".npy"
    ):  # (12, T) at 250 Hz in uV: resampled to 500 Hz by standardize
      raw = np.load(os.path.join(fake.root, rows[record_id]["path"])).T
      assert np.array_equal(ecg, signal.standardize(raw, 250, list(signal.LEADS), 1e-3))
      inner = slice(100, -100)  # away from the resampling filter's edges
      error = np.abs(ecg[inner].astype(float) - fake.ecg[record_id][inner]).max()
      assert error < 0.05 * np.abs(fake.ecg[record_id]).max()
      npy_checked += 1
    else:
      assert np.array_equal(ecg, fake.ecg[record_id])
  assert npy_checked >= 10


def test_mapping_tables_render_japanese_readings():
  normal = term_maps.map_scp_codes({"NORM": 100.0, "SR": 0.0})
  assert report_ja.render(normal.labels, normal.suspected) == "洞調律、正常心電図。"
  mapped = term_maps.map_scp_codes({"IMI": 50.0, "CRBBB": 100.0, "SR": 0.0, "ABQRS": 0.0})
  assert (
    report_ja.render(mapped.labels, mapped.suspected)
    == "洞調律、完全右脚ブロック、陳旧性下壁梗塞の疑い。"
  )
  assert report_ja.primary_label(mapped.labels) == "陳旧性下壁梗塞" and mapped.unmapped == ["ABQRS"]
  machine = term_maps.map_statements(
    [
      "Sinus rhythm with 1st degree A-V block",
      "Incomplete right bundle branch block",
      "Poor R wave progression - probable old anterior infarct",
      "Abnormal ECG",
      "Unconfirmed",
      "Something new",
    ]
  )
  assert (
    report_ja.render(machine.labels, machine.suspected)
    == "洞調律、1度房室ブロック、不完全右脚ブロック、R波増高不良、陳旧性心筋梗塞の疑い、異常心電図。"
  )
  assert (
    machine.unmapped == ["Something new"]
    and report_ja.primary_label(machine.labels) == "陳旧性心筋梗塞"
  )
  assert report_ja.terms_in_text("洞調律。心室期外収縮二段脈を認める。") == [
    "洞調律",
    "心室期外収縮二段脈",
  ]


@pytest.mark.slow
def test_reports_and_labels_of_known_records(folders, sources, root):
  rows = {
    f"{int(r['ecg_id']):05d}": r
    for r in _csv(os.path.join(folders["ptbxl"].root, "ptbxl_database.csv"))
  }
  for record_id, (src, i) in _by_id(sources["ptbxl"]).items():
    mapped = term_maps.map_scp_codes(eval(rows[record_id]["scp_codes"]))  # noqa: S307 (our own fixture)
    assert src.meta.reports[i] == report_ja.render(mapped.labels, mapped.suspected)
    assert src.meta.labels[i] == report_ja.ordered(mapped.labels)
    assert src.meta.primary_label[i] == report_ja.primary_label(mapped.labels)
  example = tfds.data_source("ptbxl", split="test", data_dir=str(root / "tfds"))[0]
  assert example["report_original"].decode() == rows[example["record_id"].decode()]["report"]
  mimic = folders["mimic_iv_ecg"]  # every fake machine statement maps back to its synthetic finding
  for record_id, (src, i) in _by_id(sources["mimic_iv_ecg"]).items():
    assert src.meta.labels[i] == report_ja.ordered(mimic.findings[record_id])
    assert src.meta.reports[i] == report_ja.render(
      mimic.findings[record_id], mimic.suspected[record_id]
    )
  assert any(mimic.suspected.values()) and any(
    "の疑い" in r for s in sources["mimic_iv_ecg"].values() for r in s.meta.reports
  )
  manifest = folders[
    "ecg_manifest"
  ]  # reports used as is; labels from the column or from the report's terms
  for record_id, (src, i) in _by_id(sources["ecg_manifest"]).items():
    assert src.meta.labels[i] == report_ja.ordered(manifest.findings[record_id])
    assert src.meta.reports[i].endswith("。") and all(
      t in src.meta.reports[i] for t in manifest.findings[record_id]
    )
  measured = _csv(os.path.join(mimic.root, "machine_measurements.csv"))
  with open(
    os.path.join(str(root / "tfds"), "mimic_iv_ecg", "1.0.0", "skipped_records.json"),
    encoding="utf-8",
  ) as f:
    assert json.load(f)["unmapped"] == {
      fake_folders.UNKNOWN_STATEMENT: sum(
        fake_folders.UNKNOWN_STATEMENT in r.values() for r in measured
      )
    }


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, reasons",
  [
    (
      "ptbxl",
      {
        "missing .dat": "missing file",
        "truncated .dat": "truncated file",
        "no mapped code": "no SCP statement",
        "unreadable patient_id": "patient_id 'n/a'",
      },
    ),
    (
      "mimic_iv_ecg",
      {
        "missing record folder": "missing file",
        "8 leads": "missing lead(s) ['V3', 'V4', 'V5', 'V6']",
        "NaN samples": "NaN/inf",
        "no machine_measurements row": "no row for study",
      },
    ),
    ("ecg_manifest", {"missing .dat": "missing file", "NaN samples": "NaN/inf"}),
  ],
)
def test_bad_records_are_skipped_and_listed_with_their_reason(
  folders, sources, root, name, reasons, caplog
):
  fake = folders[name]
  skipped = {s["record_id"]: s for src in sources[name].values() for s in src.skipped}
  assert {r: reasons[how] in skipped[r]["reason"] for r, how in fake.bad.items()} == dict.fromkeys(
    fake.bad, True
  )
  assert set(skipped) == set(fake.bad)
  kept = set().union(*(_ids(src) for src in sources[name].values()))
  assert kept == set(fake.ecg) - set(fake.bad)
  folder = tfds.builder(name, data_dir=str(root / "tfds")).data_dir
  with open(os.path.join(str(folder), "skipped_records.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert {s["record_id"] for s in report["skipped"]} == set(fake.bad)
  assert report["records_listed"] == len(fake.ecg) and sum(report["records_kept"].values()) == len(
    kept
  )
  split = next(s for s, src in sources[name].items() if src.skipped)
  with caplog.at_level(logging.WARNING):
    pipeline.open_source(name, split, str(root / "tfds"))
  assert (
    "skipped" in caplog.text
    and next(iter(sources[name][split].skipped))["record_id"] in caplog.text
  )


@pytest.mark.slow
def test_missing_source_folder_file_or_column_says_what_to_do(folders, tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(SourceError, match="set config.source_dir"):
    pipeline.open_source("ptbxl", "train", data_dir)
  with pytest.raises(SourceError, match=f"source folder '{tmp_path}/nowhere' does not exist"):
    pipeline.open_source("ptbxl", "train", data_dir, source_dir=str(tmp_path / "nowhere"))
  broken = tmp_path / "ptb-xl"
  broken.mkdir()
  shutil.copy(os.path.join(folders["ptbxl"].root, "scp_statements.csv"), broken)
  with pytest.raises(SourceError, match=f"{broken}/ptbxl_database.csv: file not found"):
    pipeline.open_source("ptbxl", "train", data_dir, source_dir=str(broken))
  (broken / "ptbxl_database.csv").write_text(
    "ecg_id,patient_id,report,strat_fold,filename_hr\n", encoding="utf-8"
  )
  with pytest.raises(SourceError, match=r"ptbxl_database.csv: missing column\(s\) \['scp_codes'\]"):
    pipeline.open_source("ptbxl", "train", data_dir, source_dir=str(broken))
  with pytest.raises(SourceError, match="no manifest"):
    pipeline.open_source("ecg_manifest", "train", data_dir, source_dir=str(broken))
  from configs import default

  config = default.get_config("tiny")
  config.update(dataset="mimic_iv_ecg", data_dir=data_dir)
  with pytest.raises(ConfigError, match="set config.source_dir"):
    check_config(config)
  config.source_dir = str(broken)
  with pytest.raises(ConfigError, match="record_list.csv: file not found"):
    check_config(config)
  assert not os.path.exists(
    os.path.join(data_dir, "mimic_iv_ecg", "1.0.0")
  )  # failed before any work


@pytest.mark.slow
def test_short_training_run_on_ptbxl(folders, root, tmp_path):
  from configs import default
  from ecg_contrastive.train import train_and_evaluate

  config = default.get_config("tiny")
  config.update(
    dataset="ptbxl",
    source_dir=folders["ptbxl"].root,
    data_dir=str(root / "tfds"),
    num_steps=2,
    batch_size=16,
    eval_batch_size=16,
    log_every=1,
    checkpoint_every=2,
  )
  config.text.cache_dir = str(root / "text")
  results = train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert set(results) == {"validation", "test"} and all(
    0 <= m["top1"] <= 1 for m in results.values()
  )


@pytest.mark.slow
def test_worker_processes_read_what_one_process_reads(folders, monkeypatch, tmp_path):
  """Large folders are read in spawn worker processes, chunk by chunk, in order: same arrays, same skip reasons."""
  from ecg_contrastive.data.builders import local_source
  from ecg_contrastive.data.builders.ecg_manifest import EcgManifest

  listing = EcgManifest(data_dir=str(tmp_path))._list_records(folders["ecg_manifest"].root)
  monkeypatch.setattr(local_source, "READ_CHUNK", 8)  # 30 records -> 4 chunks
  monkeypatch.setenv("ECG_CONTRASTIVE_WORKERS", "1")
  inline = list(local_source._read_in_order(listing.rows))
  monkeypatch.setenv("ECG_CONTRASTIVE_WORKERS", "2")
  pooled = list(local_source._read_in_order(listing.rows))
  assert [row.record_id for row, _ in pooled] == [row.record_id for row in listing.rows]
  assert len(inline) == len(pooled) == len(listing.rows) > 16
  for (_, a), (_, b) in zip(inline, pooled):
    if isinstance(a, str):
      assert a == b  # the same skip reason
    else:
      np.testing.assert_array_equal(a, b)
  assert any(isinstance(a, str) for _, a in inline) and any(
    not isinstance(a, str) for _, a in inline
  )
