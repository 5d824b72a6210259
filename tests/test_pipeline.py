"""The synthetic_ecg_ja builder and the input pipeline: splits, determinism, cache, global batches, resume."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecg_contrastive import sharding
from ecg_contrastive.data import pipeline
from ecg_contrastive.data.builders.synthetic_ecg_ja import split_sizes
from tests.data_helpers import DATASET, copy_with_corrupt_record, dataset_folder


def _shards(data_dir):
  folder = dataset_folder(data_dir)
  return {f: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if ".array_record" in f}


def test_builder_splits_and_features(data_dir):
  builder = tfds.builder(DATASET, data_dir=data_dir)
  assert {
    s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")
  } == split_sizes(320)
  assert split_sizes(20_000) == {"train": 16_000, "validation": 2_000, "test": 2_000}
  example = builder.as_data_source(split="test")[0]
  assert example["ecg"].dtype == np.int16 and example["ecg"].shape == (5000, 12)
  assert example["report"].decode("utf-8").endswith("。")
  assert example["primary_label"] in list(example["labels"])


def test_shards_are_byte_identical_across_builds(data_dir, tmp_path):
  tfds.builder(DATASET, data_dir=str(tmp_path)).download_and_prepare()
  first, second = _shards(data_dir), _shards(str(tmp_path))
  assert first.keys() == second.keys() and len(first) == 3
  for name in first:
    with open(first[name], "rb") as a, open(second[name], "rb") as b:
      assert a.read() == b.read(), name


def test_splits_over_the_memory_buffer_spill_to_disk_without_tensorflow(
  data_dir, tmp_path, monkeypatch
):
  from tensorflow_datasets.core import shuffle

  monkeypatch.setattr(
    shuffle, "MAX_MEM_BUFFER_SIZE", 1 << 20
  )  # 1 MB: every split goes through disk buckets
  tfds.builder(DATASET, data_dir=str(tmp_path)).download_and_prepare()
  spilled, in_memory = _shards(str(tmp_path)), _shards(data_dir)
  for name in in_memory:
    with open(spilled[name], "rb") as a, open(in_memory[name], "rb") as b:
      assert a.read() == b.read(), name


def test_splits_are_disjoint_by_patient(data_dir):
  metas = {
    s: pipeline.open_source(DATASET, s, data_dir).meta for s in ("train", "validation", "test")
  }
  patients = {s: set(m.patient_id) for s, m in metas.items()}
  assert not (
    patients["train"] & patients["validation"]
    or patients["train"] & patients["test"]
    or patients["validation"] & patients["test"]
  )
  records = [r for m in metas.values() for r in m.record_id]
  assert len(records) == len(set(records)) == 320
  assert len(patients["train"]) < len(metas["train"].record_id)  # patients have several records


def test_source_matches_tfds_and_reads_in_any_order(data_dir):
  source = pipeline.open_source(DATASET, "validation", data_dir)
  plain = tfds.data_source(DATASET, split="validation", data_dir=data_dir)
  indices = np.array([7, 3, 3, 31, 0])
  batch = source.read(indices)
  for row, i in zip(batch, indices):
    assert np.array_equal(row, plain[int(i)]["ecg"])
    assert source.meta.record_id[i] == plain[int(i)]["record_id"].decode()
  with pytest.raises(IndexError, match=r"\[0, 32\)"):
    source.read(np.array([32]))


def test_unknown_dataset_lists_the_known_ones(data_dir):
  with pytest.raises(ValueError, match="synthetic_ecg_ja"):
    pipeline.open_source("ptb_xl_ja/default", "train", data_dir)
  with pytest.raises(ValueError, match="no split 'dev'"):
    pipeline.open_source(DATASET, "dev", data_dir)


def test_cache_is_reused_and_rebuilt_when_stale(data_dir):
  pipeline.open_source(DATASET, "test", data_dir)
  cache = os.path.join(dataset_folder(data_dir), "ecg_cache")
  npy, meta = os.path.join(cache, "test.ecg.npy"), os.path.join(cache, "test.meta.json")
  stamp = os.stat(npy).st_mtime_ns
  reference = np.array(pipeline.open_source(DATASET, "test", data_dir).read(np.arange(32)))
  assert os.stat(npy).st_mtime_ns == stamp  # reused
  with open(npy, "r+b") as f:  # truncated cache file
    f.truncate(os.path.getsize(npy) // 2)
  assert np.array_equal(
    pipeline.open_source(DATASET, "test", data_dir).read(np.arange(32)), reference
  )
  with open(meta, encoding="utf-8") as f:
    stale = json.load(f)
  stale["fingerprint"]["shards"][0][1] += 1  # as if the shard had changed
  with open(meta, "w", encoding="utf-8") as f:
    json.dump(stale, f)
  assert np.array_equal(
    pipeline.open_source(DATASET, "test", data_dir).read(np.arange(32)), reference
  )
  with open(meta, encoding="utf-8") as f:
    assert json.load(f)["fingerprint"]["shards"][0][1] == os.path.getsize(
      _shards(data_dir)[stale["fingerprint"]["shards"][0][0]]
    )


def test_corrupt_record_is_skipped_counted_and_listed(data_dir, tmp_path):
  copy = copy_with_corrupt_record(data_dir, str(tmp_path / "copy"), "test", 5)
  source = pipeline.open_source(DATASET, "test", copy)
  assert len(source) == 31 and len(source.meta.record_id) == 31
  assert [s["index"] for s in source.skipped] == [5] and "decode error" in source.skipped[0][
    "reason"
  ]
  intact = pipeline.open_source(DATASET, "test", data_dir)
  assert np.array_equal(source.read(np.arange(5, 31)), intact.read(np.arange(6, 32)))


def test_global_batch_shape_and_sharding(data_dir, mesh):
  source = pipeline.open_source(DATASET, "train", data_dir)
  column = np.arange(len(source), dtype=np.int32) * 3
  batches = pipeline.BatchIterator(
    source, global_batch_size=64, mesh=mesh, seed=1, columns={"row3": column}
  )
  batch = next(batches)
  assert batch["ecg"].shape == (64, 5000, 12) and batch["ecg"].dtype == np.int16
  assert batch["index"].shape == (64,) and "mask" not in batch
  for array in batch.values():
    assert array.sharding == sharding.data_sharding(mesh) == batches.sharding
    assert (
      array.sharding.spec
      == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
      == jax.sharding.PartitionSpec("data")
    )
    assert {shard.data.shape[0] for shard in array.addressable_shards} == {8}
  index = np.asarray(batch["index"])
  assert np.array_equal(np.asarray(batch["ecg"]), source.read(index))
  assert np.array_equal(np.asarray(batch["row3"]), column[index])
  batches.close()


def test_epochs_cover_every_record_once_in_a_seeded_order(data_dir, mesh):
  source = pipeline.open_source(DATASET, "train", data_dir)

  def epoch_indices(seed, epoch):
    it = pipeline.BatchIterator(
      source, global_batch_size=32, mesh=mesh, seed=seed, num_epochs=epoch + 1
    )
    it.set_state({**it.get_state(), "epoch": epoch, "batch": 0})
    out = np.concatenate([np.asarray(b["index"]) for b in it])
    it.close()
    return out

  first = epoch_indices(0, 0)
  assert len(first) == len(source) == 256 and sorted(first) == list(range(256))
  assert np.array_equal(first, epoch_indices(0, 0))
  assert not np.array_equal(first, epoch_indices(0, 1)) and not np.array_equal(
    first, epoch_indices(1, 0)
  )


def test_last_batch_padded_and_masked(data_dir, mesh):
  source = pipeline.open_source(DATASET, "validation", data_dir)
  batches = list(
    pipeline.BatchIterator(
      source,
      global_batch_size=24,
      mesh=mesh,
      seed=0,
      shuffle=False,
      drop_remainder=False,
      num_epochs=1,
      columns={"one": np.ones(32, np.int32)},
    )
  )
  assert len(batches) == 2
  last = {k: np.asarray(v) for k, v in batches[1].items()}
  assert last["mask"].sum() == 8 and not last["mask"][8:].any()
  assert (
    (last["index"][8:] == -1).all()
    and (last["ecg"][8:] == 0).all()
    and (last["one"][8:] == 0).all()
  )
  seen = np.concatenate([np.asarray(b["index"])[np.asarray(b["mask"])] for b in batches])
  assert sorted(seen) == list(range(32))


def test_resume_continues_at_the_exact_next_batch(data_dir, mesh):
  source = pipeline.open_source(DATASET, "train", data_dir)
  kwargs = dict(global_batch_size=48, mesh=mesh, seed=5, prefetch=3)
  reference = pipeline.BatchIterator(source, **kwargs)
  indices = [
    np.asarray(next(reference)["index"]) for _ in range(9)
  ]  # crosses an epoch (5 batches each)
  reference.close()
  first = pipeline.BatchIterator(source, **kwargs)
  for _ in range(4):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  first.close()
  resumed = pipeline.BatchIterator(source, **kwargs)
  resumed.set_state(state)
  for expected in indices[4:]:
    assert np.array_equal(np.asarray(next(resumed)["index"]), expected)
  with pytest.raises(ValueError, match="global_batch_size"):
    pipeline.BatchIterator(source, **{**kwargs, "global_batch_size": 64}).set_state(state)
  resumed.close()


def test_batch_sizes_that_do_not_divide_name_the_numbers(data_dir, mesh, monkeypatch):
  source = pipeline.open_source(DATASET, "train", data_dir)
  # The rules are sharding.batch_sizes' (their one home); the iterator names its argument.
  with pytest.raises(
    ValueError,
    match=r"^global_batch_size 36: batch_size 36 does not divide over the 8 devices "
    r"of the mesh; use a multiple of 8 \(e.g. 32 or 40\)$",
  ):
    pipeline.BatchIterator(source, global_batch_size=36, mesh=mesh, seed=0)
  with pytest.raises(ValueError, match=r"^global_batch_size 0: batch_size must be positive"):
    pipeline.BatchIterator(source, global_batch_size=0, mesh=mesh, seed=0)
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(
    ValueError,
    match=r"^global_batch_size 64: batch_size 64 does not divide over 3 processes; "
    r"use a multiple of 24$",
  ):
    pipeline.BatchIterator(source, global_batch_size=64, mesh=mesh, seed=0)
  with pytest.raises(ValueError) as from_sharding:
    sharding.batch_sizes(64, mesh)
  monkeypatch.undo()
  assert (
    str(from_sharding.value)
    == "batch_size 64 does not divide over 3 processes; use a multiple of 24"
  )
  with pytest.raises(ValueError, match="column 'row'"):
    pipeline.BatchIterator(
      source, global_batch_size=64, mesh=mesh, seed=0, columns={"row": np.zeros(3)}
    )
  with pytest.raises(ValueError, match="fewer than one batch"):
    pipeline.BatchIterator(source, global_batch_size=512, mesh=mesh, seed=0)
  other_axis = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  with pytest.raises(ValueError, match=f"needs an axis named {sharding.DATA_AXIS!r}"):
    pipeline.BatchIterator(source, global_batch_size=64, mesh=other_axis, seed=0)


def test_signal_contract_helpers():
  from ecg_contrastive.ecg import signal

  t = np.arange(2500) / 250.0
  wave = np.sin(2 * np.pi * 1.5 * t)  # 10 s at 250 Hz, 1 mV peak
  names = [
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
    "DI",
    "lead II",
  ]  # any order and spelling, limb leads derived
  columns = {"I": 0.5 * wave, "II": wave, **{f"V{k}": wave * k / 6 for k in range(1, 7)}}
  record = np.stack([columns[n] for n in ("V1", "V2", "V3", "V4", "V5", "V6", "I", "II")], axis=1)
  ecg = signal.standardize(record * 1000, 250, names, mv_per_unit=0.001)  # given in microvolts
  assert ecg.dtype == np.int16 and ecg.shape == (5000, 12)
  expected_ii = np.round(1000 * np.sin(2 * np.pi * 1.5 * np.arange(5000) / 500))
  assert np.abs(ecg[100:4900, 1] - expected_ii[100:4900]).max() <= 2  # resampled 250 -> 500 Hz
  assert np.abs(ecg[100:4900, 2] - (ecg[100:4900, 1] - ecg[100:4900, 0])).max() <= 1  # III = II - I
  assert (
    np.allclose(signal.to_millivolts(ecg), ecg / 1000.0, rtol=1e-6)
    and signal.to_millivolts(ecg).dtype == np.float32
  )
  bad = record.copy()
  bad[10, 3] = np.nan
  with pytest.raises(
    ValueError, match=r"rec7: 1 NaN/inf sample\(s\), first in lead 'V4' \(column 3\) at sample 10"
  ):
    signal.standardize(bad, 250, names, what="rec7")
  with pytest.raises(
    ValueError, match=r"rec7: \|amplitude\| reaches 100\d\.\d mV, beyond the int16 range"
  ):
    signal.standardize(record * 1000, 250, names, what="rec7")  # microvolts given as millivolts
  with pytest.raises(ValueError, match=r"missing lead\(s\) \['V6'\]"):
    signal.standardize(record[:, [0, 1, 2, 3, 4, 6, 7]], 250, names[:5] + names[6:])
  with pytest.raises(ValueError, match="expected \\(samples, leads\\)"):
    signal.standardize(record[:, 0], 250, names)


def _package_imports(package: str) -> dict[str, set[str]]:
  """Module -> the modules of `package` it imports anywhere (top level, in functions, under TYPE_CHECKING)."""
  import ast
  import importlib

  folder = os.path.dirname(importlib.import_module(package).__file__)
  root = folder
  for _ in package.split("."):
    root = os.path.dirname(root)
  modules = {}
  for directory, _, files in os.walk(folder):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, f), root)[:-3]
        modules[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(directory, f)
  graph = {}
  for name, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        deps |= {
          f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
          for a in node.names
        }
      elif isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def test_imports_in_the_data_package_flow_one_way():
  graph = _package_imports("ecg_contrastive.data")
  assert (
    "ecg_contrastive.data.batches" in graph["ecg_contrastive.data.pipeline"]
  )  # pipeline -> batches ...
  assert not graph["ecg_contrastive.data.batches"]  # ... never back (a duck-typed batches.Source)

  def reaches(start, goal, seen=()):
    return any(d == goal or (d not in seen and reaches(d, goal, (*seen, d))) for d in graph[start])

  cycles = sorted(m for m in graph if reaches(m, m))
  assert not cycles, f"import cycles through {cycles}"


def test_worker_count_has_one_home_for_every_builder(monkeypatch):
  from ecg_contrastive.data.builders import local_source, synthetic_ecg_ja, workers

  graph = _package_imports("ecg_contrastive.data")
  assert (
    "ecg_contrastive.data.builders.synthetic_ecg_ja"
    not in graph["ecg_contrastive.data.builders.local_source"]
  )
  assert local_source.worker_count is synthetic_ecg_ja.worker_count is workers.worker_count
  assert workers.worker_count.__module__ == workers.__name__
  monkeypatch.setenv("ECG_CONTRASTIVE_WORKERS", "3")
  assert workers.worker_count() == 3
  monkeypatch.delenv("ECG_CONTRASTIVE_WORKERS")
  assert workers.worker_count() == 2
  monkeypatch.setenv("ECG_CONTRASTIVE_WORKERS", "0")
  with pytest.raises(ValueError, match=r"ECG_CONTRASTIVE_WORKERS='0': use a positive integer"):
    workers.worker_count()
