"""Contrastive losses computed across the device mesh: softmax (CLIP / InfoNCE) and sigmoid (SigLIP).

Each device holds its b = B / n rows of ECG and text embeddings. It all-gathers the
other side's embeddings (B rows) and computes only its own (b, B) logit blocks, so memory
per device is O(b x B), not O(B^2). The target of local row i is global column
offset + i with offset = device index x b (or, with `positive_ids`, every column whose
text is the same report: duplicates in a batch are positives, not negatives). Gradients
flow through the all-gather (its transpose is a reduce-scatter), so the result equals
the single-device full-batch loss.

The sigmoid loss (SigLIP, arXiv 2303.15343) scores every (ECG, report) pair on its own:
-log sigmoid(+-(scale * cos + bias)), + for positives, summed over the B x B pairs and divided
by B. It needs only the text side gathered, and no softmax normaliser across the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ecg_contrastive.sharding import DATA_AXIS


def _local_softmax_loss(ecg, txt, scale, ids):
  """Per-device body: ecg, txt (b, E) unit-norm, scale (), ids (b,) or None -> (loss, accuracy)."""
  b = ecg.shape[0]
  ecg_all = jax.lax.all_gather(ecg, DATA_AXIS, tiled=True)  # (B, E)
  txt_all = jax.lax.all_gather(txt, DATA_AXIS, tiled=True)
  B = ecg_all.shape[0]
  ids_all = None if ids is None else jax.lax.all_gather(ids, DATA_AXIS, tiled=True)
  logits_e2t = scale * jnp.dot(ecg, txt_all.T, preferred_element_type=jnp.float32)  # (b, B)
  logits_t2e = scale * jnp.dot(txt, ecg_all.T, preferred_element_type=jnp.float32)  # (b, B)
  if ids is None:  # one positive per row: global column offset + i
    own = _own_columns(b)[:, None]
    pick = lambda logits: jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), own, axis=1)[
      :, 0
    ]
    loss_e2t, loss_t2e = -pick(logits_e2t), -pick(logits_t2e)
    hit = jnp.argmax(logits_e2t, axis=-1) == own[:, 0]
  else:  # every column with the same report is a positive; the target spreads evenly over them
    same = _positives(ids, ids_all, b, B)
    targets = same / jnp.sum(same, axis=1, keepdims=True)
    loss_e2t = -jnp.sum(targets * jax.nn.log_softmax(logits_e2t, axis=-1), axis=-1)
    loss_t2e = -jnp.sum(targets * jax.nn.log_softmax(logits_t2e, axis=-1), axis=-1)
    hit = jnp.take_along_axis(same, jnp.argmax(logits_e2t, axis=-1)[:, None], axis=1)[:, 0] > 0
  loss = jax.lax.psum(jnp.sum(loss_e2t) + jnp.sum(loss_t2e), DATA_AXIS) / (2 * B)
  accuracy = jax.lax.psum(jnp.sum(hit.astype(jnp.float32)), DATA_AXIS) / B
  return loss, accuracy


def softmax_loss(
  ecg: jax.Array,
  txt: jax.Array,
  scale: jax.Array,
  mesh: Mesh,
  positive_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE (CLIP) loss over the global batch.

  Args:
    ecg, txt: (B, E) L2-normalised embeddings, rows sharded over mesh axis 'data'.
    scale: () logit scale, 1 / temperature.
    mesh: the device mesh.
    positive_ids: optional (B,) int ids (e.g. report-table rows); equal ids are positives.
  Returns:
    (loss (), e->t top-1 accuracy ()) replicated; loss = (l(e->t) + l(t->e)) / 2, mean over rows.
  """
  return _on_mesh(_local_softmax_loss, mesh, (ecg, txt), (scale,), positive_ids)


def _own_columns(b: int) -> jax.Array:
  """(b,) the global columns of this device's b rows: their own pairs."""
  return jax.lax.axis_index(DATA_AXIS) * b + jnp.arange(b)


def _positives(ids, ids_all, b: int, B: int) -> jax.Array:
  """(b, B) float32 1 where column j is a positive of local row i: its own pair, or the same report id."""
  if ids is None:
    return (_own_columns(b)[:, None] == jnp.arange(B)[None, :]).astype(jnp.float32)
  return (ids[:, None] == ids_all[None, :]).astype(jnp.float32)


def _local_sigmoid_loss(ecg, txt, scale, bias, ids):
  """Per-device body of sigmoid_loss: ecg, txt (b, E), scale (), bias (), ids (b,) or None."""
  b = ecg.shape[0]
  txt_all = jax.lax.all_gather(txt, DATA_AXIS, tiled=True)  # (B, E)
  B = txt_all.shape[0]
  ids_all = None if ids is None else jax.lax.all_gather(ids, DATA_AXIS, tiled=True)
  positive = _positives(ids, ids_all, b, B)
  logits = scale * jnp.dot(ecg, txt_all.T, preferred_element_type=jnp.float32) + bias  # (b, B)
  pair_loss = -jax.nn.log_sigmoid((2.0 * positive - 1.0) * logits)
  hit = jnp.take_along_axis(positive, jnp.argmax(logits, axis=-1)[:, None], axis=1)[:, 0]
  loss = jax.lax.psum(jnp.sum(pair_loss), DATA_AXIS) / B
  accuracy = jax.lax.psum(jnp.sum(hit), DATA_AXIS) / B
  return loss, accuracy


def sigmoid_loss(
  ecg: jax.Array,
  txt: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  mesh: Mesh,
  positive_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Sigmoid (SigLIP) loss over the global batch.

  Args:
    ecg, txt: (B, E) L2-normalised embeddings, rows sharded over mesh axis 'data'.
    scale, bias: () logit scale and bias (SigLIP initialises them to 10 and -10).
    mesh: the device mesh.
    positive_ids: optional (B,) int ids; equal ids are positives (else only the diagonal).
  Returns:
    (loss (), e->t top-1 accuracy ()) replicated; loss = sum over all B x B pairs / B.
  """
  return _on_mesh(_local_sigmoid_loss, mesh, (ecg, txt), (scale, bias), positive_ids)


def _on_mesh(body, mesh: Mesh, rows: tuple, scalars: tuple, ids: jax.Array | None):
  """shard_map of body(*rows, *scalars, ids or None) -> (loss, accuracy): `rows` and `ids` split over 'data',
  `scalars` replicated, results replicated."""
  if ids is None:
    fn, args = (lambda *a: body(*a, None)), (*rows, *scalars)
  else:
    fn, args = body, (*rows, *scalars, ids)
  specs = (
    (P(DATA_AXIS),) * len(rows)
    + (P(),) * len(scalars)
    + ((P(DATA_AXIS),) if ids is not None else ())
  )
  return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=(P(), P()))(*args)
