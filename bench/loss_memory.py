"""`memory`: per-device memory of the contrastive loss (forward + backward) against global batch size.

The project's loss (losses.softmax_loss) keeps on each of n devices only its b = B / n rows
against all B columns: (b, B) logit blocks, O(b x B) per device. The naive loss materialises the
full (B, B) logits on one device. Both are compiled (not run) for every B, and XLA's buffer
assignment gives each program's temporaries and its whole plan (arguments + outputs + temporaries)
per device: the peak that program needs on the device, exact for the compiled program.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from bench.results import Column
from bench.xla_stats import compiled_bytes_per_device
from ecg_contrastive.losses import softmax_loss
from ecg_contrastive.models.two_tower import l2_normalize
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated

SCALE = 1.0 / 0.07
MIB = 2**20

COLUMNS: list[Column] = [
  ("batch", "global batch B", "d"),
  ("devices", "devices n", "d"),
  ("per_device", "b = B/n", "d"),
  ("logit_block_mib", "b x B f32 MiB", ".2f"),
  ("temp_mib", "ours temp MiB/device", ".2f"),
  ("plan_mib", "ours plan MiB/device", ".2f"),
  ("temp_per_logit_bytes", "ours temp B/(b x B)", ".1f"),
  ("naive_temp_mib", "naive B x B temp MiB", ".2f"),
  ("naive_plan_mib", "naive plan MiB", ".2f"),
  ("naive_over_ours", "naive / ours temp", ".2f"),
]


def naive_softmax_loss(ecg: jax.Array, txt: jax.Array, scale: float) -> jax.Array:
  """Symmetric InfoNCE with the full (B, B) logits on one device (the baseline)."""
  logits = scale * jnp.dot(ecg, txt.T, preferred_element_type=jnp.float32)
  targets = jnp.arange(ecg.shape[0])
  rows = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), targets[:, None], axis=1)
  cols = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), targets[None, :], axis=0)
  return (jnp.mean(rows) + jnp.mean(cols)) / 2


def _compile_loss_and_grad(loss, sharding, batch: int, embed_dim: int) -> jax.stages.Compiled:
  """Compiles value_and_grad of loss(l2(ecg), l2(txt)) for (batch, embed_dim) float32 inputs."""
  fn = jax.value_and_grad(lambda e, t: loss(l2_normalize(e), l2_normalize(t)), argnums=(0, 1))
  spec = jax.ShapeDtypeStruct((batch, embed_dim), jnp.float32, sharding=sharding)
  return jax.jit(fn).lower(spec, spec).compile()


def memory_row(batch: int, embed_dim: int, mesh) -> dict[str, Any]:
  """Per-device memory of the mesh loss and of the naive loss at global batch `batch`."""
  n = mesh.devices.size
  if batch % n:
    raise ValueError(f"batch size {batch} does not divide over the {n} devices of the mesh")
  scale = jax.device_put(jnp.float32(SCALE), replicated(mesh))
  ours = _compile_loss_and_grad(
    lambda e, t: softmax_loss(e, t, scale, mesh)[0], data_sharding(mesh), batch, embed_dim
  )
  naive = _compile_loss_and_grad(
    lambda e, t: naive_softmax_loss(e, t, SCALE),
    SingleDeviceSharding(mesh.devices.flat[0]),
    batch,
    embed_dim,
  )
  b = batch // n
  temp, naive_temp = (
    ours.memory_analysis().temp_size_in_bytes,
    naive.memory_analysis().temp_size_in_bytes,
  )
  return {
    "batch": batch,
    "devices": n,
    "per_device": b,
    "embed_dim": embed_dim,
    "logit_block_mib": b * batch * 4 / MIB,
    "temp_mib": temp / MIB,
    "plan_mib": compiled_bytes_per_device(ours) / MIB,
    "temp_per_logit_bytes": temp / (b * batch),
    "naive_temp_mib": naive_temp / MIB,
    "naive_plan_mib": compiled_bytes_per_device(naive) / MIB,
    "naive_over_ours": naive_temp / temp,
  }


def run(batch_sizes: Sequence[int], embed_dim: int) -> list[dict[str, Any]]:
  """One row per global batch size, over all devices of the default mesh."""
  mesh = make_mesh()
  return [memory_row(batch, embed_dim, mesh) for batch in sorted(batch_sizes)]
