"""Checkpoint damage, write failures and keep_checkpoints, on a tiny saved workdir (no training)."""

import errno
import json
import logging
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ecg_contrastive import checkpoints
from ecg_contrastive.checkpoints import CheckpointError
from tests.export_helpers import logit_scale_at, make_workdir


def biggest_file(step_dir):
  files = [
    os.path.join(root, f)
    for root, _, names in os.walk(step_dir)
    for f in names
    if f != checkpoints.MANIFEST
  ]
  return max(files, key=os.path.getsize)


def truncate(step_dir):
  path = biggest_file(step_dir)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  return os.path.relpath(path, step_dir), size


def delete(step_dir):
  path = os.path.join(step_dir, "state", "_METADATA")
  os.remove(path)
  return "state/_METADATA", None


@pytest.mark.parametrize("damage", [truncate, delete])
def test_export_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, damage):
  workdir = make_workdir(str(tmp_path / "run"), steps=(3, 6))
  name, size = damage(str(tmp_path / "run" / "checkpoints" / "6"))
  with caplog.at_level(logging.WARNING, logger="ecg_contrastive"):
    inference = checkpoints.restore_inference(workdir)
  assert inference.step == 3
  np.testing.assert_array_equal(inference.variables["params"]["logit_scale"], logit_scale_at(3))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert f"checkpoints/6 is damaged ({name} " in warnings[0], warnings
  if size is not None:
    assert f"has {size // 2} bytes, {size} expected" in warnings[0]
  else:
    assert "missing" in warnings[0]


def test_a_checkpoint_without_manifest_is_judged_by_restoring_it(tmp_path, caplog):
  """Checkpoints of older code have no files.json: a deleted file there is found by the failed restore."""
  workdir = make_workdir(str(tmp_path / "run"), steps=(3, 6))
  step_dir = tmp_path / "run" / "checkpoints" / "6"
  os.remove(step_dir / checkpoints.MANIFEST)
  os.remove(biggest_file(step_dir))
  with caplog.at_level(logging.WARNING, logger="ecg_contrastive"):
    assert checkpoints.restore_inference(workdir).step == 3
  assert any("checkpoints/6 is damaged" in r.getMessage() for r in caplog.records)


def test_every_checkpoint_damaged_is_one_line_error(tmp_path):
  workdir = make_workdir(str(tmp_path / "run"), steps=(3, 6))
  for step in (3, 6):
    truncate(str(tmp_path / "run" / "checkpoints" / str(step)))
  with pytest.raises(
    CheckpointError,
    match=r"no intact checkpoint in .*/run/checkpoints: steps 6, 3 are all damaged "
    r"\(see the warnings above\); rerun training with this --workdir",
  ) as e:
    checkpoints.restore_inference(workdir)
  assert "\n" not in str(e.value)


def test_an_explicit_damaged_step_is_one_line_error(tmp_path):
  workdir = make_workdir(str(tmp_path / "run"), steps=(3, 6))
  truncate(str(tmp_path / "run" / "checkpoints" / "3"))
  with pytest.raises(
    CheckpointError,
    match=r"checkpoints/3 is damaged \(.* expected\); pass another --step of "
    r"\[3, 6\]",
  ):
    checkpoints.restore_inference(workdir, step=3)
  assert checkpoints.restore_inference(workdir, step=6).step == 6


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused_and_deletes_nothing(tmp_path, keep):
  workdir = make_workdir(str(tmp_path / "run"), steps=(3, 6))
  with pytest.raises(
    CheckpointError, match=rf"keep_checkpoints must be an integer >= 1, not {keep}"
  ):
    checkpoints.make_manager(workdir, keep=keep)
  assert sorted(checkpoints.make_manager(workdir).all_steps()) == [3, 6]


def test_disk_full_at_a_save_is_one_line_error_and_keeps_the_earlier_checkpoints(
  tmp_path, monkeypatch
):
  workdir = make_workdir(str(tmp_path / "run"), steps=(3,))
  before = checkpoints.restore_inference(workdir).variables
  manager = checkpoints.make_manager(workdir)

  def disk_full(self, step, *args, **kwargs):
    os.makedirs(
      self.directory / f"{step}.orbax-checkpoint-tmp-1", exist_ok=True
    )  # a half-written save
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
  state = {
    "step": 6,
    "params": before["params"],
    "batch_stats": before["batch_stats"],
    "opt_state": {},
  }
  with pytest.raises(
    CheckpointError,
    match=r"could not write checkpoint .*/run/checkpoints/6 \(No space left on "
    r"device\): free space or point --workdir elsewhere; the earlier checkpoints \(steps 3\) are "
    r"intact",
  ) as e:
    checkpoints.save(manager, 6, state, {})
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3"]
  after = checkpoints.restore_inference(workdir)
  assert after.step == 3
  np.testing.assert_array_equal(
    after.variables["params"]["logit_scale"], before["params"]["logit_scale"]
  )


def test_manifest_lists_every_file_with_its_size(tmp_path):
  make_workdir(str(tmp_path / "run"), steps=(3,))
  step_dir = checkpoints.checkpoint_dir(str(tmp_path / "run")) / "3"
  manifest = checkpoints._list_files(step_dir)
  assert "state/_METADATA" in manifest and len(manifest) >= 5
  assert checkpoints.find_damage(step_dir) is None


def test_checkpoint_dir_keeps_remote_paths_and_makes_local_ones_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(checkpoints.checkpoint_dir("runs/a")) == str(
    tmp_path / "runs" / "a" / "checkpoints"
  )
  assert (
    os.fspath(checkpoints.checkpoint_dir("gs://bucket/runs/a")) == "gs://bucket/runs/a/checkpoints"
  )


@pytest.mark.parametrize(
  "name,damage,message",
  [
    ("config.json", b"{not json", r"run/config.json is damaged \(not JSON"),
    ("labels.json", b"", r"run/labels.json is damaged \(not JSON"),
    (
      "label_text_embeddings.npy",
      b"\x93NUMPY garbage",
      r"run/label_text_embeddings.npy is damaged",
    ),
    ("label_text_embeddings.npy", None, r"run/label_text_embeddings.npy is missing"),
    ("labels.json", b"[]", r"holds \(98, \d+\) embeddings for 0 labels in labels.json"),
  ],
)
def test_damaged_or_missing_run_files_are_one_line_errors(tmp_path, name, damage, message):
  """What inference reads besides the checkpoint (export, predict): a damaged or missing file is named, with what
  to do (rerun training with the workdir: it rewrites them and resumes)."""
  workdir = make_workdir(str(tmp_path / "run"), steps=(3,))
  path = tmp_path / "run" / name
  if damage is None:
    os.remove(path)
  else:
    path.write_bytes(damage)
  with pytest.raises(CheckpointError, match=message) as e:
    checkpoints.restore_inference(workdir)
  assert "\n" not in str(e.value) and "rerun training with this --workdir" in str(e.value)


def test_a_run_saved_before_a_key_existed_reads_with_the_value_it_was_trained_with(tmp_path):
  from configs import default
  from ecg_contrastive.config_check import _check_required, check_values

  config = default.get_config("tiny").to_dict()
  for key in checkpoints.ADDED_LATER:
    section, name = key.split(".")
    del config[section][name]
  config["text"]["pooling"] = "cls"  # what the run did stays as it was
  (tmp_path / "config.json").write_text(json.dumps(config))
  read = checkpoints.read_config(str(tmp_path))
  assert (read.text.template, read.text.layer, read.model.lead_mask) == ("", -1, False)
  assert read.text.pooling == "cls"
  _check_required(read)  # a new config's checks pass: --mode eval / export of the old run work
  check_values(read)
