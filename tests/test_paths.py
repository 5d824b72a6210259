"""The path layer: gs:// workdirs end to end (mocked bucket), metrics.jsonl on resume, optional TensorBoard."""

import json
import logging
import os
import sys

import numpy as np
import pytest
from fake_gcs import use_fake_gcs

from configs import default
from ecg_contrastive import checkpoints, paths, train
from ecg_contrastive.metric_writer import MetricWriter
from tests.data_helpers import SYNTH_VERSION


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://bucket/... lives in tmp_path/gcs/bucket; local fallbacks in tmp_path/local; cwd is tmp_path/cwd."""
  use_fake_gcs(monkeypatch, str(tmp_path / "gcs"))
  monkeypatch.setenv("ECG_CONTRASTIVE_LOCAL", str(tmp_path / "local"))
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")  # a gs:// path made local would land here as cwd/gs:/...
  if os.fspath(checkpoints.checkpoint_dir("gs://bucket/run")) != "gs://bucket/run/checkpoints":
    # checkpoints.py (another owner) still makes the path absolute; until its gs:// fix lands, the same rule:
    monkeypatch.setattr(
      checkpoints, "checkpoint_dir", lambda workdir: paths.join(workdir, "checkpoints")
    )
  return tmp_path / "gcs" / "bucket"


def no_local_gs_paths(*roots) -> list[str]:
  """Every file or folder under roots whose name starts with 'gs:' (a gs:// path written locally)."""
  found = []
  for root in roots:
    for top, dirs, files in os.walk(root):
      found += [os.path.join(top, n) for n in dirs + files if n.startswith("gs:")]
  return found


def test_path_helpers_keep_remote_paths_remote(tmp_path):
  assert (
    paths.is_remote("gs://b/run")
    and not paths.is_remote("/tmp/run")
    and not paths.is_remote("runs/x")
  )
  assert paths.join("gs://b/run", "eval", "test.json") == "gs://b/run/eval/test.json"
  assert paths.join("runs/x", "a") == "runs/x/a"  # relative stays relative
  target = tmp_path / "a.npy"
  paths.np_save(target, np.arange(6, dtype=np.int16).reshape(2, 3))
  np.testing.assert_array_equal(paths.np_load(target), np.arange(6).reshape(2, 3))
  assert paths.np_load(target).dtype == np.int16
  assert os.listdir(tmp_path) == ["a.npy"]  # no temporary file left


def test_failed_local_write_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "config.json"
  paths.write_text(target, "old")

  def no_rename(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", no_rename)
  with pytest.raises(OSError, match="disk full"):
    paths.write_text(target, "new")
  assert target.read_text() == "old"
  assert os.listdir(tmp_path) == ["config.json"]


def rows(path):
  return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_resume_drops_replayed_metric_rows(where, tmp_path, bucket):
  workdir = str(tmp_path / "run") if where == "local" else "gs://bucket/run"
  local_file = (tmp_path / "run" if where == "local" else bucket / "run") / "metrics.jsonl"
  paths.makedirs(workdir)
  writer = MetricWriter(workdir, resume_step=0)
  for step in (5, 10, 15, 20):  # a crash after step 20; the last checkpoint was step 10
    writer.write(step, {"loss": float(step)})
  assert [r["step"] for r in rows(local_file)] == [5, 10, 15, 20]
  writer = MetricWriter(workdir, resume_step=10)
  assert [r["step"] for r in rows(local_file)] == [
    5,
    10,
  ]  # dropped at once: a crash now leaves no stale rows
  for step in (15, 20, 25):
    writer.write(step, {"loss": step + 0.5})
  writer.close()
  assert [(r["step"], r["loss"]) for r in rows(local_file)] == [
    (5, 5.0),
    (10, 10.0),
    (15, 15.5),
    (20, 20.5),
    (25, 25.5),
  ]
  MetricWriter(workdir)  # resume_step None keeps every row
  assert len(rows(local_file)) == 5
  MetricWriter(
    workdir, resume_step=0
  )  # a fresh start in an old workdir (no checkpoint): no old rows
  assert rows(local_file) == []


def test_metrics_without_tensorboardx(tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
  with caplog.at_level(logging.WARNING, logger="ecg_contrastive"):
    writer = MetricWriter(str(tmp_path), resume_step=0)
  assert "pip install tensorboardX" in caplog.text
  writer.write(1, {"loss": 2.0})
  writer.close()
  assert rows(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
  assert not (tmp_path / "tb").exists()


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("shared")
  return {"data_dir": str(root / "tfds")}


def tiny_config(data_dirs, **top_level):
  c = default.get_config("tiny")
  c.data_dir = data_dirs["data_dir"]  # local: array_record writes local files only
  c.text.cache_dir = "gs://bucket/text"
  c.eval_splits = ("validation",)
  c.update(top_level)
  return c


@pytest.mark.slow
def test_gs_workdir_end_to_end(data_dirs, bucket, tmp_path, caplog):
  """Every output of a run lands in the bucket; nothing is written to a local 'gs:' folder."""
  caplog.set_level(logging.INFO, logger="ecg_contrastive")
  config = tiny_config(data_dirs, num_steps=4, log_every=2, checkpoint_every=2)
  results = train.train_and_evaluate(config, "gs://bucket/run")
  run = bucket / "run"
  assert json.loads((run / "config.json").read_text())["num_steps"] == 4
  assert len(json.loads((run / "labels.json").read_text())) == 98
  assert np.load(run / "label_text_embeddings.npy").shape == (98, 32)
  metrics = rows(run / "metrics.jsonl")
  assert [r["step"] for r in metrics if "loss" in r] == [
    2,
    4,
  ] and "eval/validation/top1" in metrics[-1]
  on_bucket = json.loads((run / "eval" / "validation.json").read_text())
  assert (
    on_bucket["top1"] == pytest.approx(results["validation"]["top1"]) and on_bucket["step"] == 4
  )
  assert (run / "eval" / "validation_per_label.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  assert [n for n in os.listdir(run / "tb") if n.startswith("events.out.tfevents")]
  text_cache = sorted(os.listdir(bucket / "text"))
  assert len(text_cache) == 4 and {n.rsplit(".", 1)[1] for n in text_cache} == {"npy", "json"}
  assert "copied to gs://bucket/run/tb" in caplog.text
  assert (
    "text cache gs://bucket/text is remote: the stand-in text model goes to the local folder "
    + str(tmp_path / "local" / "text_models")
    in caplog.text
  )
  assert no_local_gs_paths(tmp_path, os.path.dirname(os.path.dirname(__file__))) == []


class Interrupt(Exception):
  pass


@pytest.mark.slow
def test_gs_workdir_resumes(data_dirs, bucket, tmp_path, monkeypatch, caplog):
  """A run on gs:// that dies after its step-2 checkpoint resumes from it; replayed metric rows are not doubled.
  The same 4 steps as test_gs_workdir_end_to_end: one train step program for both."""
  caplog.set_level(logging.INFO, logger="ecg_contrastive")
  config = tiny_config(data_dirs, num_steps=4, log_every=1, checkpoint_every=2)
  real_write = MetricWriter.write

  def write_then_die(self, step, metrics):
    if step == 4 and "loss" in metrics:
      raise Interrupt()  # preempted at step 4: rows 1-3 are on the bucket, the checkpoint is step 2
    real_write(self, step, metrics)

  monkeypatch.setattr(MetricWriter, "write", write_then_die)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(config, "gs://bucket/run")
  run = bucket / "run"
  assert sorted(os.listdir(run / "checkpoints")) == ["2"]
  assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
  monkeypatch.setattr(MetricWriter, "write", real_write)
  train.train_and_evaluate(config, "gs://bucket/run")
  assert "resumed from step 2" in caplog.text
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  assert [r["step"] for r in rows(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
  assert json.loads((run / "eval" / "validation.json").read_text())["step"] == 4
  assert no_local_gs_paths(tmp_path) == []


def test_remote_data_dir_that_is_not_prepared_says_how_to_prepare_it(bucket):
  from ecg_contrastive.data import pipeline

  with pytest.raises(
    ValueError, match=r"not prepared in gs://bucket/tfds: array_record writes local files only"
  ):
    pipeline.open_source("synthetic_ecg_ja/tiny", "train", data_dir="gs://bucket/tfds")
  assert not os.path.exists(bucket / "tfds" / "synthetic_ecg_ja" / "tiny" / SYNTH_VERSION)


def test_int16_cache_of_a_remote_dataset_goes_to_a_local_folder(bucket, tmp_path, caplog):
  from ecg_contrastive.data import cache

  with caplog.at_level(logging.INFO, logger="ecg_contrastive"):
    folder = cache.cache_folder(f"gs://bucket/tfds/synthetic_ecg_ja/tiny/{SYNTH_VERSION}")
  assert folder.startswith(str(tmp_path / "local" / "ecg_cache")) and folder.endswith(
    f"_{SYNTH_VERSION}"
  )
  assert os.path.isdir(folder)
  assert "is remote: its int16 cache goes to the local folder " + folder in caplog.text
  assert cache.cache_folder(str(tmp_path / "tfds")) == str(tmp_path / "tfds" / "ecg_cache")


@pytest.fixture
def process_1_of_2(monkeypatch):
  """This process plays process 1 of 2: barriers return at once; process 0's outcome is set by the test."""
  import jax

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(paths, "barrier", lambda name, timeout_s=0: None)
  outcome = {"failed": False}
  monkeypatch.setattr(paths, "_process_0_failed", lambda mine: outcome["failed"] or mine)
  return outcome


def test_other_processes_read_what_process_0_wrote(process_1_of_2, caplog):
  written = []
  with caplog.at_level(logging.INFO, logger="ecg_contrastive"):
    assert paths.one_process_writes("cache x", lambda: True, lambda: written.append(1)) is False
  assert written == [] and "cache x: process 1 waits for process 0" in caplog.text
  assert "cache x: process 1 uses what process 0 wrote" in caplog.text


def test_a_process_that_cannot_see_process_0s_files_writes_its_own(process_1_of_2, caplog):
  written = []
  with caplog.at_level(logging.INFO, logger="ecg_contrastive"):
    assert (
      paths.one_process_writes("cache x", lambda: bool(written), lambda: written.append(1)) is True
    )
  assert written == [1] and "writing a copy on this host" in caplog.text


def test_a_failed_write_on_process_0_stops_the_others(process_1_of_2):
  process_1_of_2["failed"] = True
  written = []
  with pytest.raises(RuntimeError, match="cache x: process 0 failed to write it"):
    paths.one_process_writes("cache x", lambda: False, lambda: written.append(1))
  assert written == []
