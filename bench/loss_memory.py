"""`memory`: per-device memory of the contrastive loss (forward + backward) against global batch size.

With --tiles, instead: the dense loss against the tiled one (tiled_losses.py, all-gather and ring) for each tile
T, XLA's plan per device at each batch size (compiled, not run), and the time of value-and-gradient of each at
one batch size (run). See `tiled_rows`.

The project's loss (losses.softmax_loss) keeps on each of n devices only its b = B / n rows
against all B columns: (b, B) logit blocks, O(b x B) per device. The naive loss materialises the
full (B, B) logits on one device. Both are compiled (not run) for every B, and XLA's buffer
assignment gives each program's temporaries and its whole plan (arguments + outputs + temporaries)
per device: the peak that program needs on the device, exact for the compiled program.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from bench.results import Column
from bench.xla_stats import compiled_bytes_per_device
from ecg_contrastive.losses import softmax_loss
from ecg_contrastive.models.two_tower import l2_normalize
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated
from ecg_contrastive.tiled_losses import tiled_softmax_loss

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


TILED_COLUMNS: list[Column] = [
  ("impl", "loss", "s"),
  ("batch", "global batch B", "d"),
  ("per_device", "b = B/n", "d"),
  ("embeddings_mib", "B x E f32 MiB", ".1f"),
  ("plan_mib", "plan MiB/device", ".1f"),
  ("temp_mib", "temp MiB/device", ".1f"),
  ("loss_plan_mib", "loss-only plan MiB", ".1f"),
  ("ms", "value+grad ms", ".1f"),
  ("note", "note", "s"),
]


def _impls(tiles: Sequence[int], mesh):
  """(name, loss(e, t, scale)) for the dense loss and, per tile, the tiled loss by all-gather and by ring."""
  impls = [("dense (b x B blocks)", lambda e, t, s: softmax_loss(e, t, s, mesh)[0])]
  for tile in tiles:
    for ring in (False, True):
      name = f"tiled T={tile}" + (", ring" if ring else ", all-gather")
      impls.append(
        (
          name,
          lambda e, t, s, tile=tile, ring=ring: tiled_softmax_loss(
            e, t, s, mesh, tile=tile, ring=ring
          )[0],
        )
      )
  return impls


def _value_and_grad(loss, normalize: bool = True):
  """value_and_grad of the loss of L2-normalised embeddings (as the step computes it), or, with
  normalize=False, of the loss alone (inputs taken as already unit-norm)."""
  norm = l2_normalize if normalize else (lambda x: x)
  return jax.jit(jax.value_and_grad(lambda e, t, s: loss(norm(e), norm(t), s), argnums=(0, 1)))


def tiled_rows(
  batch_sizes: Sequence[int],
  embed_dim: int,
  tiles: Sequence[int],
  time_batch: int = 0,
  dense_max_batch: int = 2**20,
  repeats: int = 5,
) -> list[dict[str, Any]]:
  """Dense against tiled softmax loss: XLA's per-device plan of value-and-gradient (compiled, not run) at each
  batch size (the dense one only up to dense_max_batch: beyond, its row says why not), then, at time_batch
  (0: none), the median wall time of `repeats` runs of each after a warm-up run."""
  mesh = make_mesh()
  n = mesh.devices.size
  scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated(mesh))
  rows = []
  for batch in sorted(batch_sizes):
    spec = jax.ShapeDtypeStruct((batch, embed_dim), jnp.float32, sharding=data_sharding(mesh))
    for name, loss in _impls(tiles, mesh):
      row = {
        "impl": name,
        "batch": batch,
        "devices": n,
        "per_device": batch // n,
        "embed_dim": embed_dim,
        "embeddings_mib": batch * embed_dim * 4 / MIB,
      }
      if name.startswith("dense") and batch > dense_max_batch:
        gib = (batch // n) * batch * 4 / 2**30
        row["note"] = (
          f"not compiled: (b, B) f32 logit blocks of {gib:,.0f} GiB each (--dense-max-batch)"
        )
      else:
        start = time.perf_counter()
        compiled = _value_and_grad(loss).lower(spec, spec, scale).compile()
        row["plan_mib"] = compiled_bytes_per_device(compiled) / MIB
        row["temp_mib"] = compiled.memory_analysis().temp_size_in_bytes / MIB
        bare = _value_and_grad(loss, normalize=False).lower(spec, spec, scale).compile()
        row["loss_plan_mib"] = compiled_bytes_per_device(bare) / MIB
        row["note"] = f"compiled in {time.perf_counter() - start:.0f} s"
      rows.append(row)
  if time_batch:
    rows += _timing_rows(time_batch, embed_dim, tiles, mesh, repeats)
  return rows


def _timing_rows(batch: int, embed_dim: int, tiles, mesh, repeats: int) -> list[dict[str, Any]]:
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  e, t = (
    jax.device_put(jax.random.normal(k, (batch, embed_dim), jnp.float32), data_sharding(mesh))
    for k in keys
  )
  scale = jax.device_put(jnp.float32(SCALE), replicated(mesh))
  fns = {name: _value_and_grad(loss) for name, loss in _impls(tiles, mesh)}
  for fn in fns.values():
    jax.block_until_ready(fn(e, t, scale))  # compile and warm up
  times = {name: [] for name in fns}
  for _ in range(repeats):  # interleaved: on a shared machine, load changes hit every loss alike
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(e, t, scale))
      times[name].append(time.perf_counter() - start)
  return [
    {
      "impl": name,
      "batch": batch,
      "devices": mesh.devices.size,
      "per_device": batch // mesh.devices.size,
      "embed_dim": embed_dim,
      "embeddings_mib": batch * embed_dim * 4 / MIB,
      "ms": 1e3 * float(np.median(runs)),
      "note": f"run: median of {repeats} (min {1e3 * min(runs):.0f} ms), interleaved",
    }
    for name, runs in times.items()
  ]
