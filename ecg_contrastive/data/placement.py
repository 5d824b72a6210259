"""Where a split's waveforms live while training: on the host (BatchIterator) or on the devices
(DeviceBatchIterator), chosen by config.data.placement and a plan the trainer logs at start.

    plan = plan_for(source, config, mesh)
    log.info("%s", plan.describe())   # as train.py logs it (a "%" in a split name stays text)
    batches = make_iterator(source, config, mesh, columns={"report_row": rows}, plan=plan)

plan_placement is pure: from the split's size, the batch, the devices and their memory it returns the Plan
(bytes of the split, aggregate device memory, per-host input bandwidth at a step rate, the placement and why).
"auto" picks the devices when the split, padded to a multiple of the device count and sharded, plus the
buffer that gathers a batch, fits in config.data.device_memory_share of each device's memory. Device memory
is the backend's bytes_limit (GPU, TPU) or config.data.device_memory_bytes; CPU devices report none, so there
"auto" means host unless that key says how much each device has. Both placements give the same batches.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ecg_contrastive.data.batches import BatchIterator, Source
from ecg_contrastive.data.resident import DeviceBatchIterator, resident_rows
from ecg_contrastive.errors import DataError
from ecg_contrastive.sharding import DATA_AXIS

PLACEMENTS = ("auto", "host", "device")
CONFIGURED = "config.data.device_memory_bytes"


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the trainer logs at start, and the placement it uses (`placement`: "host" or "device")."""

  placement: str
  reason: str
  name: str  # the split, e.g. synthetic_ecg_ja/demo:train
  records: int
  record_bytes: int  # int16 bytes of one ECG (120,000 for 5000 x 12)
  batch_size: int
  devices: int  # along the mesh axis 'data'
  processes: int
  device_memory_bytes: int | None  # per device; None: unknown
  memory_source: str  # where device_memory_bytes comes from, or why it is unknown
  share: float  # config.data.device_memory_share
  ecg_per_s: float | None  # global step rate the bandwidth is planned at; None: not known yet

  @property
  def split_bytes(self) -> int:
    return self.records * self.record_bytes

  @property
  def resident_bytes_per_device(self) -> int:
    """A device's shard of the padded split plus its transient (B, 5000, 12) buffer that gathers a batch."""
    return (resident_rows(self.records, self.devices) + self.batch_size) * self.record_bytes

  @property
  def aggregate_memory_bytes(self) -> int | None:
    return None if self.device_memory_bytes is None else self.devices * self.device_memory_bytes

  def host_bandwidth(self, ecg_per_s: float | None = None) -> float | None:
    """Bytes/s of waveform each host must read to feed ecg_per_s (default: the plan's) in host placement."""
    rate = self.ecg_per_s if ecg_per_s is None else ecg_per_s
    return None if rate is None else rate * self.record_bytes / self.processes

  def at_rate(self, ecg_per_s: float) -> str:
    """One line: the input bandwidth per host that a measured rate needs, and where the data are."""
    return (
      f"input at the measured {ecg_per_s:,.0f} ECG/s: {_gb(self.host_bandwidth(ecg_per_s))}/s of "
      f"waveform per host in host placement ({self.processes} process(es)); placement {self.placement}"
      + (" (the host reads only batch indices)" if self.placement == "device" else "")
    )

  def describe(self) -> str:
    """The log block: bytes of the split, device memory, bandwidth needed, the placement and why."""
    memory = (
      f"{self.devices} x {_gb(self.device_memory_bytes)} = {_gb(self.aggregate_memory_bytes)} "
      f"({self.memory_source}); share {self.share:g}: {_gb(self.share * self.device_memory_bytes)} "
      "per device for data"
      if self.device_memory_bytes is not None
      else self.memory_source
    )
    bandwidth = (
      f"{_gb(self.host_bandwidth())}/s per host at {self.ecg_per_s:,.0f} ECG/s over "
      f"{self.processes} process(es) (config.data.expected_ecg_per_s)"
      if self.ecg_per_s
      else "logged from the measured rate at the second metrics line "
      "(config.data.expected_ecg_per_s plans it now)"
    )
    return "\n".join(
      [
        f"data placement plan for {self.name}:",
        f"  split: {self.records:,} records x {self.record_bytes:,} B = {_gb(self.split_bytes)} int16; "
        f"on {self.devices} devices {_gb(self.resident_bytes_per_device)} each (shard of "
        f"{resident_rows(self.records, self.devices):,} rows + a batch of {self.batch_size:,} to gather)",
        f"  device memory: {memory}",
        f"  input bandwidth needed: {bandwidth}",
        f"  placement: {self.placement} ({self.reason})",
      ]
    )


def plan_placement(
  requested: str,
  *,
  name: str,
  records: int,
  record_bytes: int,
  batch_size: int,
  devices: int,
  processes: int,
  device_memory_bytes: int | None,
  memory_source: str,
  share: float,
  ecg_per_s: float | None = None,
) -> Plan:
  """The Plan for config.data.placement = `requested` ("auto", "host" or "device"). DataError when "device" is
  requested and the split does not fit in the devices' whole memory (when it is known)."""
  if requested not in PLACEMENTS:
    raise ValueError(f"placement {requested!r}: use one of {PLACEMENTS}")
  need = (
    resident_rows(records, devices) + batch_size
  ) * record_bytes  # Plan.resident_bytes_per_device
  memory = device_memory_bytes
  if requested == "host":
    placement, reason = "host", "config.data.placement='host'"
  elif requested == "device":
    if memory is not None and need > memory:
      raise DataError(
        f"config.data.placement='device': {name} needs {_gb(need)} on each of {devices} devices, more than "
        f"their {_gb(memory)} ({memory_source}); set config.data.placement='host' (or 'auto')"
      )
    placement, reason = "device", "config.data.placement='device'"
    if memory is not None and need > share * memory:
      reason += f"; {_gb(need)} per device is over the share {share:g} of {_gb(memory)}: less is left for the step"
  elif memory is None:
    placement, reason = (
      "host",
      f"auto: no figure for device memory; set {CONFIGURED} to place data on devices",
    )
  else:
    fits = need <= share * memory
    placement = "device" if fits else "host"
    reason = (
      f"auto: {_gb(need)} per device {'fits in' if fits else 'exceeds'} {share:g} x {_gb(memory)} "
      "(config.data.device_memory_share)"
    )
  return Plan(
    placement=placement,
    reason=reason,
    name=name,
    records=records,
    record_bytes=record_bytes,
    batch_size=batch_size,
    devices=devices,
    processes=processes,
    device_memory_bytes=memory,
    memory_source=memory_source,
    share=share,
    ecg_per_s=ecg_per_s or None,
  )


def device_memory(devices, configured_bytes: float = 0) -> tuple[int | None, str]:
  """(bytes per device, where that comes from): configured_bytes when > 0, else the smallest bytes_limit the
  backend reports for `devices` (this process's), else (None, 'unknown on <platform>')."""
  if configured_bytes:
    return int(configured_bytes), CONFIGURED
  devices = list(devices)
  limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
  if devices and all(limits):
    return int(min(limits)), f"bytes_limit reported by the {devices[0].platform} backend"
  platform = devices[0].platform if devices else "no devices"
  return None, f"unknown on {platform} (its backend reports no bytes_limit)"


def plan_for(source: Source, config: ml_collections.ConfigDict, mesh: Mesh) -> Plan:
  """plan_placement for training `source` on `mesh` with config.data and config.batch_size."""
  data = config.data
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  memory, where = device_memory(local, data.device_memory_bytes)
  return plan_placement(
    data.placement,
    name=source.name,
    records=len(source),
    record_bytes=int(np.prod(source.ecg.shape[1:])) * 2,  # int16 (the storage contract)
    batch_size=config.batch_size,
    devices=mesh.shape[DATA_AXIS],
    processes=jax.process_count(),
    device_memory_bytes=memory,
    memory_source=where,
    share=data.device_memory_share,
    ecg_per_s=data.expected_ecg_per_s or None,
  )


def make_iterator(
  source: Source,
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  *,
  columns: dict[str, np.ndarray] | None = None,
  plan: Plan | None = None,
) -> BatchIterator:
  """The training batches of `source` in the placement of `plan` (default plan_for(source, config, mesh)):
  a BatchIterator or a DeviceBatchIterator, seeded by config.seed, prefetching config.prefetch batches."""
  plan = plan or plan_for(source, config, mesh)
  kind = DeviceBatchIterator if plan.placement == "device" else BatchIterator
  return kind(
    source,
    global_batch_size=config.batch_size,
    mesh=mesh,
    seed=config.seed,
    columns=columns,
    prefetch=config.prefetch,
  )


def _gb(nbytes: float | None) -> str:
  if nbytes is None:
    return "unknown"
  for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if nbytes >= size:
      return f"{nbytes / size:.3g} {unit}"
  return f"{nbytes:.0f} B"
