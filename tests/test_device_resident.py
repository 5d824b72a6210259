"""Device-resident data (data/resident.py) and the placement plan (data/placement.py), on 8 CPU devices.

The device iterator must give BatchIterator's batches exactly (indices, bytes, columns, mask, sharding) for the same
seed, over epochs and after a resume from either placement; the plan must pick the placement the memory figures
call for and say why; bad config values fail in one line naming the key.
"""

import os
import re

import jax
import numpy as np
import pytest

from configs import default
from ecg_contrastive.config_check import ConfigError, check_config
from ecg_contrastive.data import placement
from ecg_contrastive.data.batches import BatchIterator
from ecg_contrastive.data.resident import (
  DeviceBatchIterator,
  _gather_fn,
  batch_routes,
  global_index,
  place_split,
)
from ecg_contrastive.errors import DataError
from ecg_contrastive.sharding import data_sharding
from tests.data_helpers import data_value_error

RECORDS, BATCH = 203, 32  # 6 full batches and a padded seventh of 11 records
ECG_BYTES = 5000 * 12 * 2


class ArraySource:
  """The Source protocol over an in-memory int16 array (what EcgSource does over its memmap)."""

  name = "random:train"

  def __init__(self, n: int, seed: int = 0):
    self.ecg = np.random.default_rng(seed).integers(-32768, 32768, (n, 5000, 12), dtype=np.int16)
    self.reads = 0

  def __len__(self) -> int:
    return len(self.ecg)

  def read(self, indices, out=None):
    self.reads += 1
    rows = self.ecg[np.asarray(indices, np.int64)]
    if out is None:
      return rows
    out[...] = rows
    return out


@pytest.fixture(scope="module")
def source():
  return ArraySource(RECORDS)


@pytest.fixture(scope="module")
def resident(source, mesh):
  """One placed split for the tests (placing is the slow part)."""
  return place_split(source, mesh)


def iterators(source, mesh, resident, **kwargs):
  kwargs = dict(global_batch_size=BATCH, mesh=mesh, seed=7, prefetch=2, **kwargs)
  kwargs.setdefault("columns", {"report_row": (np.arange(RECORDS) * 3 % 41).astype(np.int32)})
  return BatchIterator(source, **kwargs), DeviceBatchIterator(source, placed=resident, **kwargs)


def assert_same(host_batch, device_batch):
  assert list(host_batch) == list(device_batch)
  for key in host_batch:
    a, b = host_batch[key], device_batch[key]
    assert a.sharding == b.sharding and a.dtype == b.dtype and a.shape == b.shape, key
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=key)


@pytest.mark.parametrize("drop_remainder, shuffle", [(True, True), (False, True), (False, False)])
def test_device_batches_equal_host_batches_over_two_epochs(
  source, mesh, resident, drop_remainder, shuffle
):
  host, device = iterators(
    source, mesh, resident, drop_remainder=drop_remainder, shuffle=shuffle, num_epochs=2
  )
  a, b = list(host), list(device)
  assert len(a) == len(b) == 2 * len(host) == 2 * (6 if drop_remainder else 7)
  for x, y in zip(a, b):
    assert_same(x, y)
  index = np.concatenate([np.asarray(x["index"]) for x in b])
  for epoch in index.reshape(2, -1) if drop_remainder else np.split(index, 2):
    epoch = epoch[epoch >= 0]
    assert len(set(epoch)) == len(epoch) == (6 * BATCH if drop_remainder else RECORDS)
  first = b[0]
  assert first["ecg"].shape == (BATCH, 5000, 12) and first["ecg"].dtype == np.int16
  np.testing.assert_array_equal(np.asarray(first["ecg"]), source.ecg[np.asarray(first["index"])])
  if not drop_remainder:
    last = b[-1]
    assert int(np.asarray(last["mask"]).sum()) == RECORDS - 6 * BATCH
    assert not np.asarray(last["ecg"])[~np.asarray(last["mask"])].any()  # padded rows are zeros
    assert (np.asarray(last["index"])[~np.asarray(last["mask"])] == -1).all()


def test_resume_mid_epoch_continues_identically_across_placements(source, mesh, resident):
  host, device = iterators(source, mesh, resident, num_epochs=2)
  for _ in range(4):
    next(host)
  state = host.get_state()
  assert state["epoch"] == 0 and state["batch"] == 4
  device.set_state(state)  # a host run resumed on the devices
  rest = list(host)
  for x, y in zip(rest, device, strict=True):
    assert_same(x, y)
  host2, device2 = iterators(source, mesh, resident, num_epochs=2)
  for _ in range(7):  # into the second epoch
    next(device2)
  host2.set_state(device2.get_state())  # and back
  assert device2.get_state() == host2.get_state() and device2.get_state()["epoch"] == 1
  for x, y in zip(device2, host2, strict=True):
    assert_same(x, y)
  with pytest.raises(DataError, match="cannot resume the data order"):
    device2.set_state({**state, "seed": 8})


def test_split_is_placed_once_padded_and_sharded(source, mesh, resident):
  assert resident.shape == (208, 5000, 12) and resident.dtype == np.int16  # 203 -> 8 x 26
  assert resident.sharding == data_sharding(mesh)  # as the batches: rows over 'data'
  shards = sorted(resident.addressable_shards, key=lambda s: s.index[0].start or 0)
  assert [s.data.shape[0] for s in shards] == [26] * 8
  placed = np.asarray(resident)
  np.testing.assert_array_equal(placed[:RECORDS], source.ecg)
  assert not placed[RECORDS:].any()
  small = place_split(source, mesh, chunk_bytes=7 * ECG_BYTES)  # 4 chunks per shard, the last short
  np.testing.assert_array_equal(np.asarray(small), placed)
  reads = source.reads
  _, device = iterators(source, mesh, resident)
  next(device)
  device.close()
  assert source.reads == reads  # batches never read the host source


def test_device_placement_of_a_streamed_split_gives_the_host_batches(mesh, tmp_path):
  """The split placed from the ArrayRecord shards (host_read='stream': no int16 cache on the host)."""
  from ecg_contrastive.data import pipeline

  streamed = pipeline.open_source(
    "synthetic_ecg_ja/tiny", "train", str(tmp_path / "tfds"), host_read="stream"
  )
  kwargs = dict(global_batch_size=64, mesh=mesh, seed=5, num_epochs=2, drop_remainder=False)
  host, device = BatchIterator(streamed, **kwargs), DeviceBatchIterator(streamed, **kwargs)
  for x, y in zip(host, device, strict=True):
    assert_same(x, y)


def test_batch_gather_moves_only_the_rows_of_other_shards(mesh, resident, source):
  """The gather's collectives: the (B,) index all-gathered, and per route one ppermute of its rows and their
  positions; never the split, never the whole batch. Any routes give the same rows."""
  index = jax.device_put(np.zeros(BATCH, np.int32), resident.sharding)
  hlo = _gather_fn(mesh, 26, ((1, 2), (7, 1))).lower(resident, index).compile().as_text()
  ops = re.findall(
    r"= (\w+)\[([\d,]*)\]\S* (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\(",
    hlo,
  )
  assert sorted(ops) == [
    ("s16", "1,5000,12", "collective-permute"),
    ("s16", "2,5000,12", "collective-permute"),
    ("s32", "1", "collective-permute"),
    ("s32", "2", "collective-permute"),
    ("s32", "32", "all-gather"),
  ], ops
  rows = np.random.default_rng(1).permutation(RECORDS)[:BATCH]
  rows[-3:] = -1
  routes = batch_routes(rows, 26, 8)
  assert [s for s, _ in routes] == list(range(1, 8))  # unsorted: rows from everywhere
  index = jax.device_put(rows.astype(np.int32), resident.sharding)
  expected = np.where((rows >= 0)[:, None, None], source.ecg[rows], 0)
  np.testing.assert_array_equal(np.asarray(_gather_fn(mesh, 26, routes)(resident, index)), expected)


def test_batch_routes_move_only_the_rows_across_shard_boundaries():
  per, devices = 26, 8  # 203 records: device k holds rows 26 k .. 26 k + 25
  rows = np.sort(np.random.default_rng(2).permutation(203)[:32])
  # sorted: device 4's rows 118, 131, 132, 135 take 3 from device 5 (shift -1 = 7), the others at most 2 from
  # their next device; the window is +-1, 3 rows round up to 4
  assert batch_routes(rows, per, devices) == ((1, 4), (7, 4))
  assert batch_routes(np.arange(8) * 26, per, devices) == ()  # one row per device, each at home
  assert batch_routes(np.full(32, -1), per, devices) == ()  # only padding
  # rows 0..31 all sit on devices 0 and 1: device 7 takes its 4 rows from device 1, 6 devices away
  assert batch_routes(np.arange(32), per, devices) == tuple((s, 4) for s in range(1, 8))
  # at least b / 8 rows per route: few distinct routes (shapes to compile) over a run
  many = np.random.default_rng(3).permutation(16_000)
  seen = {batch_routes(np.sort(many[i : i + 256]), 2000, 8) for i in range(0, 16_000 - 255, 256)}
  assert seen <= {((1, c), (7, c)) for c in (4, 8, 16, 32)}, seen
  blocks = [slice(0, 16), slice(16, 32)]  # two processes: each sorts its own half
  index = global_index(np.arange(31, -1, -1)[:30], 32, blocks)
  assert index.tolist() == list(range(16, 32)) + list(range(2, 16)) + [-1, -1]


def plan(requested="auto", memory=None, **kwargs):
  figures = dict(
    name="mimic_iv_ecg:train",
    records=800_000,
    record_bytes=ECG_BYTES,
    batch_size=1024,
    devices=8,
    processes=1,
    device_memory_bytes=memory,
    memory_source="bytes_limit reported by the gpu backend" if memory else "unknown on cpu",
    share=0.3,
  )
  return placement.plan_placement(requested, **{**figures, **kwargs})


def test_plan_picks_device_when_the_padded_split_fits_its_share():
  h100 = plan(
    memory=80e9
  )  # 96 GB over 8: 12.0 GB + 0.12 GB of gather buffer per device, share 24 GB
  assert h100.placement == "device" and h100.split_bytes == 96_000_000_000
  assert h100.resident_bytes_per_device == (100_000 + 1024) * ECG_BYTES
  assert h100.aggregate_memory_bytes == 640e9
  assert (
    h100.reason == "auto: 12.1 GB per device fits in 0.3 x 80 GB (config.data.device_memory_share)"
  )
  v5e = plan(memory=16e9, devices=16, processes=4)  # 6.1 GB per chip, share 4.8 GB
  assert v5e.placement == "host" and "exceeds 0.3 x 16 GB" in v5e.reason
  assert plan(memory=16e9, devices=16, processes=4, share=0.5).placement == "device"
  cpu = plan()
  assert cpu.placement == "host"
  assert cpu.reason == (
    "auto: no figure for device memory; set config.data.device_memory_bytes to place data on devices"
  )
  assert plan("host", memory=80e9).placement == "host"
  forced = plan("device", memory=16e9, devices=16)
  assert forced.placement == "device" and "over the share 0.3" in forced.reason
  with pytest.raises(
    DataError, match=r"needs 12.1 GB on each of 8 devices, more than their 8 GB.*'host'"
  ):
    plan("device", memory=8e9)
  # one padded row per device beyond the split: 9 records on 8 devices hold 2 rows each
  assert plan(records=9, batch_size=8).resident_bytes_per_device == (2 + 8) * ECG_BYTES


def test_plan_says_bytes_memory_bandwidth_and_why():
  text = plan(memory=80e9, ecg_per_s=8 * 24_000, processes=1).describe()
  assert text.splitlines() == [
    "data placement plan for mimic_iv_ecg:train:",
    "  split: 800,000 records x 120,000 B = 96 GB int16; on 8 devices 12.1 GB each (shard of 100,000 rows + "
    "a batch of 1,024 to gather)",
    "  device memory: 8 x 80 GB = 640 GB (bytes_limit reported by the gpu backend); share 0.3: 24 GB per "
    "device for data",
    "  input bandwidth needed: 23 GB/s per host at 192,000 ECG/s over 1 process(es) "
    "(config.data.expected_ecg_per_s)",
    "  placement: device (auto: 12.1 GB per device fits in 0.3 x 80 GB (config.data.device_memory_share))",
  ]
  cpu = plan().describe()
  assert (
    "device memory: unknown on cpu" in cpu
    and "logged from the measured rate at the second metrics line" in cpu
  )
  assert plan(processes=4).host_bandwidth(48_000) == 48_000 * ECG_BYTES / 4
  assert (
    plan()
    .at_rate(20_000)
    .startswith("input at the measured 20,000 ECG/s: 2.4 GB/s of waveform per host")
  )


def test_plan_for_on_cpu_devices_and_make_iterator(source, mesh):
  config = default.get_config("tiny")
  first = placement.plan_for(source, config, mesh)
  assert (first.placement, first.device_memory_bytes) == ("host", None)
  assert first.memory_source == "unknown on cpu (its backend reports no bytes_limit)"
  assert first.records == RECORDS and first.record_bytes == ECG_BYTES and first.devices == 8
  assert type(placement.make_iterator(source, config, mesh, plan=first)) is BatchIterator
  config.data.device_memory_bytes = 1e9  # 26 + 32 rows x 120 KB = 7 MB per device: fits in 0.3 GB
  second = placement.plan_for(source, config, mesh)
  assert second.placement == "device" and second.memory_source == "config.data.device_memory_bytes"
  batches = placement.make_iterator(source, config, mesh, columns={"c": np.arange(RECORDS)})
  assert type(batches) is DeviceBatchIterator and batches.ecg.shape == (208, 5000, 12)
  assert 1 <= batches.precompile() <= 4
  batch = next(batches)
  batches.close()
  np.testing.assert_array_equal(np.asarray(batch["ecg"]), source.ecg[np.asarray(batch["index"])])
  np.testing.assert_array_equal(np.asarray(batch["c"]), np.asarray(batch["index"]))
  config.data.placement = "host"
  assert placement.plan_for(source, config, mesh).placement == "host"


@pytest.mark.parametrize(
  "key, value, says",
  [
    (
      "placement",
      "gpu",
      "config.data.placement='gpu': out of range; use one of ('auto', 'host', 'device')",
    ),
    (
      "device_memory_share",
      0.0,
      "config.data.device_memory_share=0.0: out of range; use a number in (0, 1]",
    ),
    ("device_memory_share", 1.5, "config.data.device_memory_share=1.5: out of range"),
    (
      "device_memory_bytes",
      -1.0,
      "config.data.device_memory_bytes=-1.0: out of range; use a whole number",
    ),
    ("device_memory_bytes", 1.5, "config.data.device_memory_bytes=1.5: out of range"),
    (
      "device_memory_bytes",
      float("inf"),
      "config.data.device_memory_bytes=inf: not a finite number",
    ),
    (
      "expected_ecg_per_s",
      -5.0,
      "config.data.expected_ecg_per_s=-5.0: out of range; use a number >= 0",
    ),
  ],
)
def test_bad_data_values_fail_in_one_line_naming_the_key(key, value, says):
  message = data_value_error(key, value)
  assert message.startswith(says) and "\n" not in message, message


@pytest.mark.parametrize("key", ["placement", "device_memory_share", "device_memory_bytes"])
def test_a_config_without_placement_keys_is_told_what_to_set(tmp_path, key):
  config = default.get_config("tiny")
  config.data_dir = str(tmp_path / "tfds")
  del config.data[key]
  with pytest.raises(
    ConfigError, match=rf"^config.data.{key} is missing: set it in the config file"
  ):
    check_config(config)
  assert not os.path.exists(tmp_path / "tfds")
