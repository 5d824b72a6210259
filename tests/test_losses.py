"""The mesh loss equals the single-device full-batch loss, and keeps only (b, B) blocks per device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecg_contrastive.losses import sigmoid_loss, softmax_loss
from ecg_contrastive.sharding import batch_sizes, data_sharding, make_mesh


def full_batch_loss(ecg, txt, scale, ids=None):
  """Reference: symmetric InfoNCE on one device with the whole (B, B) logit matrix."""
  logits = scale * ecg @ txt.T
  if ids is None:
    targets = jnp.eye(ecg.shape[0])
  else:
    targets = (ids[:, None] == ids[None, :]).astype(jnp.float32)
    targets = targets / targets.sum(1, keepdims=True)
  e2t = -(targets * jax.nn.log_softmax(logits, axis=1)).sum(1).mean()
  t2e = -(targets * jax.nn.log_softmax(logits.T, axis=1)).sum(1).mean()
  return (e2t + t2e) / 2


def unit_rows(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("global_batch", [8, pytest.param(64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("with_ids", [False, True])
def test_mesh_loss_and_grads_equal_full_batch(global_batch, with_ids):
  mesh = make_mesh()
  assert mesh.devices.size == 8
  k = jax.random.split(jax.random.PRNGKey(global_batch), 3)
  ecg, txt = unit_rows(k[0], (global_batch, 32)), unit_rows(k[1], (global_batch, 32))
  ids = jax.random.randint(k[2], (global_batch,), 0, global_batch // 2) if with_ids else None
  scale = jnp.float32(1 / 0.07)
  sharded = lambda x: jax.device_put(x, data_sharding(mesh))
  sids = sharded(ids) if with_ids else None

  mesh_fn = jax.jit(
    jax.value_and_grad(lambda e, t, s: softmax_loss(e, t, s, mesh, sids)[0], argnums=(0, 1, 2))
  )
  value, grads = mesh_fn(sharded(ecg), sharded(txt), scale)
  ref_value, ref_grads = jax.value_and_grad(
    lambda e, t, s: full_batch_loss(e, t, s, ids), argnums=(0, 1, 2)
  )(ecg, txt, scale)

  assert abs(float(value) - float(ref_value)) <= 1e-5 * abs(float(ref_value))
  for g, r in zip(grads, ref_grads):
    assert float(jnp.max(jnp.abs(g - r))) <= 1e-5 * float(jnp.max(jnp.abs(r)))
  assert grads[0].sharding.is_equivalent_to(data_sharding(mesh), 2)


@pytest.mark.slow
def test_loss_is_low_for_matching_pairs_and_accuracy_counts_hits():
  mesh = make_mesh()
  x = unit_rows(jax.random.PRNGKey(0), (16, 64))
  sharded = jax.device_put(x, data_sharding(mesh))
  loss, acc = softmax_loss(sharded, sharded, jnp.float32(1 / 0.07), mesh)
  assert float(acc) == 1.0
  assert float(loss) < 0.05
  shuffled = jax.device_put(x[::-1], data_sharding(mesh))
  loss_bad, acc_bad = softmax_loss(sharded, shuffled, jnp.float32(1 / 0.07), mesh)
  assert float(acc_bad) == 0.0 and float(loss_bad) > 5.0


def test_each_device_computes_b_by_B_logit_blocks_only():
  mesh = make_mesh()
  B, E = 64, 16
  e = jax.device_put(unit_rows(jax.random.PRNGKey(1), (B, E)), data_sharding(mesh))
  jaxpr = jax.make_jaxpr(lambda e, t: softmax_loss(e, t, jnp.float32(10.0), mesh))(e, e)
  shapes = []

  def visit(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "dot_general":
        shapes.extend(tuple(v.aval.shape) for v in eqn.outvars)
      for sub in _subjaxprs(eqn):
        visit(sub)

  visit(jaxpr.jaxpr)
  assert shapes, "no matmul found in the loss"
  assert set(shapes) == {(B // 8, B)}


def _subjaxprs(eqn):
  """Nested jaxprs of an equation (shard_map, pjit, custom_jvp bodies)."""
  for p in eqn.params.values():
    if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
      yield p.jaxpr
    elif hasattr(p, "eqns"):
      yield p


def test_batch_sizes_name_the_numbers():
  mesh = make_mesh()
  sizes = batch_sizes(64, mesh)
  assert (sizes.global_, sizes.per_device, sizes.devices) == (64, 8, 8)
  with pytest.raises(
    ValueError, match=r"batch_size 60 does not divide over the 8 devices.*56 or 64"
  ):
    batch_sizes(60, mesh)
  assert (
    "gradient caching over 4 micro-batches of 16 (2 per device)"
    in batch_sizes(64, mesh, 4).describe()
  )
  with pytest.raises(
    ValueError, match=r"microbatches 3 does not divide the 8 ECGs per device.*divisor of 8"
  ):
    batch_sizes(64, mesh, 3)
  with pytest.raises(
    ValueError, match=r"microbatches must be a positive integer \(1: no gradient caching\), got 0"
  ):
    batch_sizes(64, mesh, 0)
  with pytest.raises(ValueError, match=r"batch_size must be positive, got 0"):
    batch_sizes(0, mesh)
  half = make_mesh(jax.devices()[:4])  # the rules count the devices of the mesh's data axis
  assert (batch_sizes(12, half).per_device, batch_sizes(12, half).devices) == (3, 4)


def test_batch_size_rules_have_one_home():
  """Only sharding.batch_sizes says what divides what; the config check, trainer and iterator call it."""
  import os

  import ecg_contrastive

  package = os.path.dirname(ecg_contrastive.__file__)
  saying = []
  for directory, _, files in os.walk(package):
    for f in files:
      if f.endswith(".py"):
        with open(os.path.join(directory, f), encoding="utf-8") as source:
          if "does not divide" in source.read():
            saying.append(os.path.relpath(os.path.join(directory, f), package))
  assert saying == ["sharding.py"]


def full_batch_sigmoid_loss(ecg, txt, scale, bias, ids=None):
  """SigLIP on one device, written from the paper's pseudocode: every pair, +-1 labels, / B."""
  B = ecg.shape[0]
  labels = 2.0 * (jnp.eye(B) if ids is None else (ids[:, None] == ids[None, :])) - 1.0
  logits = scale * ecg @ txt.T + bias
  return -jnp.sum(jnp.log(1.0 / (1.0 + jnp.exp(-labels * logits)))) / B


@pytest.mark.parametrize("with_ids", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sigmoid_mesh_loss_and_grads_equal_full_batch(with_ids):
  mesh, B = make_mesh(), 32
  k = jax.random.split(jax.random.PRNGKey(7), 3)
  ecg, txt = unit_rows(k[0], (B, 16)), unit_rows(k[1], (B, 16))
  ids = jax.random.randint(k[2], (B,), 0, B // 2) if with_ids else None
  sharded = lambda x: jax.device_put(x, data_sharding(mesh))
  sids = sharded(ids) if with_ids else None
  args = (sharded(ecg), sharded(txt), jnp.float32(10.0), jnp.float32(-10.0))
  value, grads = jax.jit(
    jax.value_and_grad(
      lambda e, t, s, c: sigmoid_loss(e, t, s, c, mesh, sids)[0], argnums=(0, 1, 2, 3)
    )
  )(*args)
  ref_value, ref_grads = jax.value_and_grad(
    lambda e, t, s, c: full_batch_sigmoid_loss(e, t, s, c, ids), argnums=(0, 1, 2, 3)
  )(ecg, txt, jnp.float32(10.0), jnp.float32(-10.0))
  np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(
      np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(r)))
    )
  # at SigLIP's initialisation (scale 10, bias -10) the loss is about log(2) per positive and ~0 per negative
  positives = B if ids is None else int(jnp.sum(ids[:, None] == ids[None, :]))
  assert 0.2 * positives / B < float(value) < 20.0 * positives / B


@pytest.mark.slow
def test_sigmoid_loss_prefers_matched_pairs():
  mesh = make_mesh()
  e = jax.device_put(unit_rows(jax.random.PRNGKey(8), (16, 8)), data_sharding(mesh))
  shuffled = jax.device_put(jnp.roll(e, 3, axis=0), data_sharding(mesh))
  matched, acc = sigmoid_loss(e, e, jnp.float32(10.0), jnp.float32(-5.0), mesh)
  mismatched, acc_bad = sigmoid_loss(e, shuffled, jnp.float32(10.0), jnp.float32(-5.0), mesh)
  assert float(matched) < float(mismatched) and float(acc) == 1.0 and float(acc_bad) < 0.2
