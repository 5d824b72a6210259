"""Device mesh and batch-size bookkeeping. One mesh axis, 'data': the batch is split over it.

The one home of the mesh axis name (DATA_AXIS), of the meshes the project builds (make_mesh: training over
all devices, the text encoder over one process's devices) and of the rules a batch size must meet
(batch_sizes); the batch iterator, the training step, the losses and the config check use these.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def init_distributed() -> None:
  """jax.distributed.initialize() (the training command's and the prepare command's --distributed); cluster
  environments (TPU pods, SLURM) are detected by JAX. Elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID (launch/local_multiprocess.sh does). CPU processes talk through gloo."""
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kw = {}
  if "JAX_NUM_PROCESSES" in os.environ:
    kw = dict(
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  jax.distributed.initialize(**kw)


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh (DATA_AXIS,) over `devices`, default all devices of all processes (jax.local_devices(): this
  process's only). Auto axis types: plain jit works on it."""
  return Mesh(np.array(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@dataclasses.dataclass(frozen=True)
class BatchSizes:
  global_: int
  per_process: int
  per_device: int
  processes: int
  devices: int
  microbatches: int = 1

  def describe(self) -> str:
    text = (
      f"global batch {self.global_} = {self.processes} process(es) x {self.per_process} "
      f"= {self.devices} device(s) x {self.per_device}"
    )
    if self.microbatches > 1:
      text += (
        f"; gradient caching over {self.microbatches} micro-batches of {self.global_ // self.microbatches} "
        f"({self.per_device // self.microbatches} per device)"
      )
    return text


def batch_sizes(global_batch: int, mesh: Mesh, microbatches: int = 1) -> BatchSizes:
  """Splits a global batch over processes, devices (the mesh's DATA_AXIS) and micro-batches; a ValueError names
  the numbers and what to use if it cannot. The one home of these rules: the config check, the trainer and the
  batch iterator call it (each adding only what it alone knows, e.g. the config key)."""
  devices = mesh.shape[DATA_AXIS]  # the batch is split over this axis (all of make_mesh's devices)
  processes = jax.process_count()
  if isinstance(global_batch, bool) or global_batch <= 0:
    raise ValueError(f"batch_size must be positive, got {global_batch}")
  if global_batch % devices:
    lo, hi = global_batch // devices * devices, (global_batch // devices + 1) * devices
    raise ValueError(
      f"batch_size {global_batch} does not divide over the {devices} devices of the mesh; "
      f"use a multiple of {devices} (e.g. {lo or hi} or {hi})"
    )
  if global_batch % processes:
    raise ValueError(
      f"batch_size {global_batch} does not divide over {processes} processes; use a multiple of "
      f"{math.lcm(processes, devices)}"
    )
  per_device = global_batch // devices
  if isinstance(microbatches, bool) or microbatches < 1:
    raise ValueError(
      f"microbatches must be a positive integer (1: no gradient caching), got {microbatches}"
    )
  if per_device % microbatches:
    raise ValueError(
      f"microbatches {microbatches} does not divide the {per_device} ECGs per device (batch_size "
      f"{global_batch} over {devices} devices); use a divisor of {per_device}"
    )
  return BatchSizes(
    global_batch, global_batch // processes, per_device, processes, devices, microbatches
  )
