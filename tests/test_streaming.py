"""host_read='stream': the split read from its ArrayRecord shards gives the int16 cache's rows, bytes, metadata
and batches; each process reads only its share; undecodable records are skipped as the cache skips them."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader

from ecg_contrastive.data import pipeline, streaming
from ecg_contrastive.errors import DataError
from tests.data_helpers import (
  DATASET,
  SYNTH_VERSION,
  copy_with_corrupt_record,
  data_value_error,
  dataset_folder,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stream(data_dir, split, **kw):
  return pipeline.open_source(DATASET, split, data_dir, host_read="stream", **kw)


def test_streamed_rows_are_the_cached_bytes_and_metadata(data_dir):
  cached = pipeline.open_source(DATASET, "train", data_dir)
  indices = np.concatenate(
    [np.random.default_rng(0).permutation(256), [7, 7, 0, 255], np.arange(256)[::-1]]
  )
  expected = cached.read(indices)
  for threads in (1, 3):
    source = stream(data_dir, "train", reader_threads=threads)
    assert (
      len(source) == 256 and source.ecg.shape == (256, 5000, 12) and source.ecg.dtype == np.int16
    )
    assert np.array_equal(source.read(indices), expected)
    out = np.full((5, 5000, 12), 9, np.int16)
    assert source.read(np.array([3, 1, 4, 1, 5]), out=out) is out
    assert np.array_equal(out, cached.read(np.array([3, 1, 4, 1, 5])))
    assert np.array_equal(source.ecg[17], cached.ecg[17])
    assert dataclasses.asdict(source.meta) == dataclasses.asdict(cached.meta)
    assert source.skipped == cached.skipped == []
    with pytest.raises(IndexError, match=r"\[0, 256\)"):
      source.read(np.array([256]))
    source.close()


def test_batches_match_the_cache_over_two_epochs_and_after_resume(data_dir, mesh):
  kwargs = dict(global_batch_size=64, mesh=mesh, seed=3, num_epochs=2, prefetch=2)
  cached = pipeline.open_source(DATASET, "train", data_dir)
  streamed = stream(data_dir, "train", reader_threads=2)
  columns = {"row": np.arange(256, dtype=np.int32) * 5}

  def batches(source, state=None):
    it = pipeline.BatchIterator(source, columns=columns, **kwargs)
    if state is not None:
      it.set_state(state)
    out = [{k: np.asarray(v) for k, v in b.items()} for b in it]
    it.close()
    return out

  reference = batches(cached)
  assert len(reference) == 8  # 2 epochs of 4
  for got, want in zip(batches(streamed), reference, strict=True):
    for key in ("index", "ecg", "row"):
      assert np.array_equal(got[key], want[key]), key
  first = pipeline.BatchIterator(cached, columns=columns, **kwargs)
  for _ in range(5):  # into the second epoch
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  first.close()
  resumed = batches(
    streamed, state
  )  # a cached run's checkpoint resumes streamed, at the same batch
  assert len(resumed) == 3
  for got, want in zip(resumed, reference[5:], strict=True):
    assert np.array_equal(got["index"], want["index"]) and np.array_equal(got["ecg"], want["ecg"])
  streamed.close()


def test_record_index_is_written_once_beside_the_dataset_without_waveforms(data_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("ecg_cache"))
  source = stream(copy, "validation")
  folder = os.path.join(dataset_folder(copy), "ecg_cache")
  assert os.listdir(folder) == ["validation.meta.json"]  # no .npy: nothing decoded is copied
  assert source.read(np.arange(32)).shape == (32, 5000, 12)
  stamp = os.stat(os.path.join(folder, "validation.meta.json")).st_mtime_ns
  stream(copy, "validation").close()
  assert os.stat(os.path.join(folder, "validation.meta.json")).st_mtime_ns == stamp  # reused
  source.close()


def test_corrupt_record_is_skipped_counted_and_listed(data_dir, tmp_path):
  copy = copy_with_corrupt_record(data_dir, str(tmp_path / "copy"), "test", 5)
  source = stream(copy, "test")
  assert len(source) == 31 and len(source.meta.record_id) == 31
  assert [s["index"] for s in source.skipped] == [5] and "decode error" in source.skipped[0][
    "reason"
  ]
  intact = pipeline.open_source(DATASET, "test", data_dir)
  assert np.array_equal(source.read(np.arange(5, 31)), intact.read(np.arange(6, 32)))
  cached = pipeline.open_source(DATASET, "test", copy)  # the cache of the same copy agrees
  assert cached.skipped == source.skipped
  assert np.array_equal(cached.read(np.arange(31)), source.read(np.arange(31)))
  assert np.array_equal(np.asarray(source.ecg), np.asarray(cached.ecg))  # the whole split, read
  source.close()


def test_a_shard_changed_after_indexing_is_a_data_error(data_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("ecg_cache"))
  source = stream(copy, "test")  # indexed while intact; no shard opened yet
  copy_with_corrupt_record(copy, str(tmp_path / "scratch"), "test", 5)  # a corrupt shard to swap in
  folder, scratch = dataset_folder(copy), dataset_folder(str(tmp_path / "scratch"))
  for name in os.listdir(scratch):
    if name.startswith("synthetic_ecg_ja-test."):
      shutil.copy(os.path.join(scratch, name), os.path.join(folder, name))
  assert source.read(np.array([4])).shape == (1, 5000, 12)
  with pytest.raises(
    DataError, match=r"record 5 \(.*\) does not read as int16 \(5000, 12\) \(wire type"
  ):
    source.read(np.array([5]))
  source.close()
  assert len(stream(copy, "test")) == 31  # opened again: the changed shard is re-indexed


def test_ecg_bytes_cuts_the_waveform_out_of_a_serialized_example(data_dir):
  folder = dataset_folder(data_dir)
  (shard,) = [f for f in os.listdir(folder) if f.startswith("synthetic_ecg_ja-validation.")]
  reader = ArrayRecordReader(os.path.join(folder, shard))
  serialized = reader.read([0, 31])
  reader.close()
  plain = tfds.data_source(DATASET, split="validation", data_dir=data_dir)
  for record, i in zip(serialized, (0, 31)):
    ecg = np.frombuffer(streaming.ecg_bytes(record), np.int16).reshape(5000, 12)
    assert np.array_equal(ecg, plain[i]["ecg"])
  assert len(streaming.ecg_bytes(serialized[0], b"record_id")) > 0
  for broken, says in (
    (b"\x0a\x03not a tf.Example", "wire type 6"),
    (serialized[0][:1000], "runs past"),
    (b"", "no feature 'ecg'"),
  ):
    with pytest.raises(ValueError, match=says):
      streaming.ecg_bytes(broken)


def test_share_cache_keeps_what_this_host_read(data_dir, monkeypatch, caplog):
  source = stream(data_dir, "validation", host_cache="share")
  cached = pipeline.open_source(DATASET, "validation", data_dir)
  first = np.array([4, 9, 9, 30])
  assert np.array_equal(source.read(first), cached.read(first))
  assert sorted(np.flatnonzero(source.share_cache.held)) == [4, 9, 30]

  def no_shard_reads(*args):
    raise AssertionError("read from the shards again")

  fetch, source._fetch = source._fetch, no_shard_reads
  assert np.array_equal(source.read(np.array([30, 4])), cached.read(np.array([30, 4])))
  source._fetch = fetch
  folder = os.path.join(dataset_folder(data_dir), "ecg_cache")
  assert source.share_cache.folder == folder
  assert not [
    f for f in os.listdir(folder) if f.startswith("share-")
  ]  # unlinked: nothing to leave behind

  def disk_full(*args):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "pwrite", disk_full)
  assert np.array_equal(source.read(np.arange(32)), cached.read(np.arange(32)))  # still read right
  assert not source.share_cache.growing and source.share_cache.held.sum() == 3
  assert "stops growing at 3 records: [Errno 28] No space left on device" in caplog.text
  source.close()
  assert source.share_cache is None


@pytest.mark.parametrize(
  "key, value, says",
  [
    (
      "host_read",
      "nfs",
      "config.data.host_read='nfs': out of range; use one of ('cache', 'stream')",
    ),
    ("reader_threads", 0, "config.data.reader_threads=0: out of range; use an integer >= 1"),
    (
      "host_cache",
      "full",
      "config.data.host_cache='full': out of range; use one of ('none', 'share')",
    ),
    ("host_cache", "share", "config.data.host_cache='share' keeps streamed records; with"),
  ],
)
def test_data_keys_are_checked_in_one_line(key, value, says):
  message = data_value_error(key, value)
  assert message.startswith(says) and "\n" not in message, message


def test_open_source_rejects_an_unknown_host_read(tmp_path):
  with pytest.raises(DataError, match="host_read='nfs'"):
    pipeline.open_source(DATASET, "train", str(tmp_path), host_read="nfs")
  assert not os.listdir(tmp_path)  # before any build


_TWO_PROCESSES = r"""
import json, logging, os, sys
import jax, numpy as np
from jax.experimental import multihost_utils
from ecg_contrastive import sharding
from ecg_contrastive.data import pipeline

logging.basicConfig(level=logging.INFO)
sharding.init_distributed()
data_dir, out = sys.argv[1], sys.argv[2]
source = pipeline.open_source("synthetic_ecg_ja/tiny", "train", data_dir, host_read="stream")
cached = pipeline.open_source("synthetic_ecg_ja/tiny", "train", data_dir)
asked = []
read = source.read
source.read = lambda indices, out=None: (asked.append(np.asarray(indices).tolist()), read(indices, out))[1]
batches = pipeline.BatchIterator(
  source, global_batch_size=32, mesh=sharding.make_mesh(), seed=7, num_epochs=1, prefetch=1
)
seen, same = [], True
for batch in batches:
  seen.append(np.asarray(multihost_utils.process_allgather(batch["index"], tiled=True)).tolist())
  local = np.concatenate([np.asarray(s.data) for s in batch["index"].addressable_shards])
  ecg = np.concatenate([np.asarray(s.data) for s in batch["ecg"].addressable_shards])
  same = same and bool(np.array_equal(ecg, cached.read(local)))
with open(out, "w") as f:
  json.dump({"asked": asked, "seen": seen, "same": same, "process": jax.process_index(),
             "devices": jax.local_device_count()}, f)
"""


@pytest.mark.slow  # two JAX processes
def test_two_processes_read_disjoint_shares_that_make_the_global_batch(data_dir, mesh, tmp_path):
  copy = str(tmp_path / "copy")  # no record index yet: process 0 writes it, process 1 waits
  shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("ecg_cache"))
  pipeline.open_source(DATASET, "train", copy)  # the int16 cache, to compare bytes against
  os.remove(os.path.join(dataset_folder(copy), "ecg_cache", "train.meta.json"))
  script = tmp_path / "read.py"
  script.write_text(_TWO_PROCESSES)
  port = str(24000 + os.getpid() % 1000)
  procs = []
  for i in range(2):
    env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i),
      "PYTHONPATH": REPO,
    }
    procs.append(
      subprocess.Popen(
        [sys.executable, str(script), copy, str(tmp_path / f"p{i}.json")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  assert f"record index of synthetic_ecg_ja/tiny/{SYNTH_VERSION}:train: process 1 waits" in logs[1]
  assert "indexing" not in logs[1]
  p0, p1 = (json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2))
  assert p0["devices"] == p1["devices"] == 4 and p0["same"] and p1["same"]
  # the global order (batches.py): a seeded permutation per epoch, each process's rows read in ascending order
  order = np.random.default_rng([7, 0]).permutation(256)
  halves = [
    [sorted(order[b * 32 + h * 16 : b * 32 + h * 16 + 16].tolist()) for h in (0, 1)]
    for b in range(8)
  ]
  assert p0["seen"] == p1["seen"] == [first + second for first, second in halves]
  single = pipeline.BatchIterator(
    pipeline.open_source(DATASET, "train", copy),
    global_batch_size=32,
    mesh=mesh,
    seed=7,
    num_epochs=1,
  )
  for seen, batch in zip(
    p0["seen"], single, strict=True
  ):  # one process with 8 devices: the same records
    assert sorted(seen) == np.asarray(batch["index"]).tolist()
  for a, b, (first, second) in zip(p0["asked"], p1["asked"], halves, strict=True):
    assert a == first and b == second  # each process read only its devices' rows: disjoint halves
    assert len(a) == len(b) == 16 and not set(a) & set(b)
