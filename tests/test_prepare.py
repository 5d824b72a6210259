"""python -m ecg_contrastive.data.prepare: builds a dataset and its cache (or record index) without training, says
what it built, changes nothing on a second run, and stops on a user's mistake with one line."""

import contextlib
import io
import os
import shutil
import subprocess
import sys

import pytest

from ecg_contrastive.data import prepare
from tests.data_helpers import DATASET, SYNTH_VERSION, copy_with_corrupt_record, dataset_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stamps(folder: str) -> dict[str, int]:
  return {
    os.path.relpath(os.path.join(root, f), folder): os.stat(os.path.join(root, f)).st_mtime_ns
    for root, _, files in os.walk(folder)
    for f in files
  }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The tiny dataset prepared once with the int16 cache (the default); (data_dir, first run's output)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  out = io.StringIO()  # a module fixture cannot use capsys
  with contextlib.redirect_stdout(out):
    assert prepare.main([DATASET, "--data-dir", data_dir]) == 0
  return data_dir, out.getvalue()


def test_builds_the_dataset_and_its_cache_and_says_what(prepared):
  data_dir, out = prepared
  folder = dataset_folder(data_dir)
  lines = out.strip().splitlines()
  # the report follows TFDS's own lines
  start = [i for i, line in enumerate(lines) if line.startswith(DATASET)][0]
  lines = lines[start:]
  assert lines[0].startswith(
    f"{DATASET} {SYNTH_VERSION} in {folder}: shards built; int16 cache per split"
  )
  rows = {line.split()[0]: line.split() for line in lines[2:5]}
  assert {s: int(r[1]) for s, r in rows.items()} == {"test": 32, "train": 256, "validation": 32}
  assert all(r[2] == "0" and r[3] == "1" and r[6] == "built," for r in rows.values())
  assert f"30.7 MB: {os.path.join(folder, 'ecg_cache', 'train.ecg.npy')}" in out
  assert lines[-1] == "skipped records: none"
  assert sorted(os.listdir(os.path.join(folder, "ecg_cache"))) == [
    f"{s}.{kind}" for s in ("test", "train", "validation") for kind in ("ecg.npy", "meta.json")
  ]


def test_a_second_run_changes_nothing(prepared, capsys):
  data_dir, _ = prepared
  before = _stamps(data_dir)
  assert prepare.main([DATASET, "--data-dir", data_dir]) == 0
  out = capsys.readouterr().out
  assert "shards already there" in out and out.count("already there,") == 3 and "built" not in out
  assert _stamps(data_dir) == before


def test_stream_builds_only_the_record_index(prepared, tmp_path, capsys):
  data_dir, _ = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("ecg_cache"))
  args = [DATASET, "--data-dir", copy, "--host-read", "stream", "--splits", "train,test"]
  assert prepare.main(args) == 0
  out = capsys.readouterr().out
  assert "record index per split (host_read=stream)" in out and out.count("  built, ") == 2
  folder = os.path.join(dataset_folder(copy), "ecg_cache")
  assert sorted(os.listdir(folder)) == ["test.meta.json", "train.meta.json"]  # no waveforms copied
  before = _stamps(copy)
  assert prepare.main(args) == 0
  assert capsys.readouterr().out.count("already there,") == 2 and _stamps(copy) == before


def test_skipped_records_are_listed_with_their_reason(prepared, tmp_path, capsys):
  data_dir, _ = prepared
  copy = copy_with_corrupt_record(data_dir, str(tmp_path / "copy"), "test", 5)
  assert prepare.main([DATASET, "--data-dir", copy, "--splits", "test"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[2].split()[:3] == ["test", "31", "1"]
  assert lines[3] == "skipped records: 1"
  assert lines[4].startswith("  test record 5 ?: decode error: ")


@pytest.mark.parametrize(
  "args, says",
  [
    (["nope"], "unknown dataset 'nope'; known datasets: ['ecg_manifest', 'mimic_iv_ecg', "),
    (
      ["synthetic_ecg_ja/huge"],
      "synthetic_ecg_ja has no variant 'huge'; use one of synthetic_ecg_ja/tiny",
    ),
    (["ptbxl"], "ptbxl is built from a local folder of records and is not prepared in "),
    (["ptbxl", "--source-dir", "/no/such/folder"], "--source-dir /no/such/folder: no such folder"),
    ([DATASET, "--splits", "train,dev"], "synthetic_ecg_ja/tiny: no split(s) ['dev']; it has"),
  ],
)
def test_mistakes_are_one_line_with_exit_code_2(prepared, tmp_path, capsys, args, says):
  data_dir = prepared[0] if args[0] == DATASET else str(tmp_path / "tfds")
  assert prepare.main([*args, "--data-dir", data_dir]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {says}") and "\n" not in err
  if args[0] != DATASET:
    assert not os.path.exists(os.path.join(tmp_path, "tfds", "ptbxl"))  # nothing built


def test_the_module_runs_as_a_command(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "ecg_contrastive.data.prepare", "ptbxl", "--data-dir", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and result.stdout == ""
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith("error: ptbxl is built from a local folder of records")
  )
