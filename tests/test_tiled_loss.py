"""The tiled losses (tiled_losses.py) give the dense losses' (losses.py) value, accuracy and gradients, for any tile.

Tolerance: float32 relative error <= 1e-5. The loss and each gradient entry are sums over up to B = 512 terms
(and over E = 32 in each logit) that the tiled and the dense code add in different orders (per tile, online
rescaling by exp(m_old - m_new)); each order's rounding error is below ~log2(B) eps to sqrt(B) eps in practice,
eps = 2^-24 ~ 6e-8, so ~1.4e-6 at B = 512. 1e-5 is ~7x that and ~170 eps: wide enough for any summation order,
tight enough that a wrong term (one logit, one target, a missing 1 / B) fails. The error is relative to the size
of the terms summed, which for a gradient can exceed the result: d(loss)/d(logit) is softmax - target (or
sigmoid - label), whose terms cancel as predictions improve. So a gradient's tolerance is 1e-5 x the larger of its
largest entry and the size of one of its terms: scale / B for an embedding entry (|d loss / d logit| <= 1 per
pair, |column| = 1, times scale, over B rows), 1 for the scale and the bias.
The top-1 accuracy must be equal exactly: ties (duplicate reports have identical text embeddings) go to the first
column, as jnp.argmax, whatever order the tiles visit the columns in (the ring visits them rotated).
"""

import jax
import jax.numpy as jnp
import pytest

from ecg_contrastive.config_check import ConfigError, check_values
from ecg_contrastive.losses import sigmoid_loss, softmax_loss
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated
from ecg_contrastive.tiled_losses import tiled_sigmoid_loss, tiled_softmax_loss

RTOL = 1e-5  # see the module docstring


def _unit(x):
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def _batch(B: int, E: int = 32, seed: int = 0):
  """ECG and text embeddings where reports repeat (B / 2 distinct), as in training: duplicate reports have
  identical text embeddings (exact ties), and each ECG lies near its report (a non-trivial accuracy)."""
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  ids = jax.random.randint(k[0], (B,), 0, max(B // 2, 1))
  txt = _unit(jax.random.normal(k[1], (max(B // 2, 1), E)))[ids]
  ecg = _unit(txt + 0.2 * jax.random.normal(k[2], (B, E)))
  return ecg, txt, ids


def _value_and_grads(loss, ecg, txt, scale, bias):
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
    ecg, txt, scale, bias
  )


def _close(got, want, what, term=0.0):
  """max |got - want| <= RTOL x max(max |want|, term): `term`, the size of one summed term (module docstring)."""
  got, want = jnp.asarray(got), jnp.asarray(want)
  err = float(jnp.max(jnp.abs(got - want)))
  assert err <= RTOL * max(float(jnp.max(jnp.abs(want))), term), f"{what}: max error {err:.2e}"


def _check(kind: str, B: int, devices: int, with_ids: bool, tiles, rings=(False, True)):
  mesh = make_mesh(jax.devices()[:devices])
  ecg, txt, ids = _batch(B)
  put = lambda x: jax.device_put(x, data_sharding(mesh))
  e, t, pids = put(ecg), put(txt), (put(ids) if with_ids else None)
  if kind == "softmax":
    scale, bias = jnp.float32(1 / 0.07), jnp.float32(0.0)
    dense = lambda e, t, s, c: softmax_loss(e, t, s, mesh, pids)
    tiled = lambda tile, ring: (
      lambda e, t, s, c: tiled_softmax_loss(e, t, s, mesh, pids, tile=tile, ring=ring)
    )
  else:
    scale, bias = jnp.float32(10.0), jnp.float32(-5.0)
    dense = lambda e, t, s, c: sigmoid_loss(e, t, s, c, mesh, pids)
    tiled = lambda tile, ring: (
      lambda e, t, s, c: tiled_sigmoid_loss(e, t, s, c, mesh, pids, tile=tile, ring=ring)
    )
  (ref, ref_acc), ref_grads = _value_and_grads(dense, e, t, scale, bias)
  assert 0.0 < float(ref_acc) < 1.0 or B == 8, float(ref_acc)  # hits and misses to compare
  for tile in tiles:
    for ring in rings:
      case = f"{kind} B={B} n={devices} ids={with_ids} tile={tile} ring={ring}"
      (value, acc), grads = _value_and_grads(tiled(tile, ring), e, t, scale, bias)
      _close(value, ref, f"{case}: loss")
      assert float(acc) == float(ref_acc), f"{case}: accuracy {float(acc)} != {float(ref_acc)}"
      terms = (float(scale) / B, float(scale) / B, 1.0, 1.0)
      for name, g, r, term in zip(("ecg", "txt", "scale", "bias"), grads, ref_grads, terms):
        _close(g, r, f"{case}: d/d{name}", term)
      assert grads[0].sharding.is_equivalent_to(data_sharding(mesh), 2)


# tiles that divide nothing (3, 5, 48), one tile per device block (8, 64), and tiles >= B (100, 1000: the dense
# loss runs, `test_a_tile_of_all_columns_is_the_dense_loss`); the fast set
# has one case (a tile that divides nothing, the all-gather and the ring; softmax's tiled path is also in the fast
# `test_a_tile_of_all_columns_is_the_dense_loss` and `test_tiled_loss_holds_one_tile_of_logits_at_a_time`)
FAST = [
  ("sigmoid", 64, 8, False, (3,)),
]
SLOW = [
  ("softmax", 8, 8, False, (3,)),
  ("softmax", 64, 8, True, (5,)),
  ("softmax", 8, 1, True, (3, 8)),
  ("softmax", 64, 8, True, (3, 8, 100)),
  ("softmax", 64, 1, False, (5, 64)),
  ("sigmoid", 8, 8, True, (1, 3)),
  ("sigmoid", 64, 8, True, (8, 100)),
  ("sigmoid", 64, 1, True, (5, 100)),
] + [
  (kind, B, n, with_ids, tiles)
  for kind in ("softmax", "sigmoid")
  for B, n, tiles in ((512, 1, (48, 1000)), (512, 8, (48, 64, 100)))
  for with_ids in (False, True)
]


@pytest.mark.parametrize("kind, B, devices, with_ids, tiles", FAST)
def test_tiled_loss_equals_dense(kind, B, devices, with_ids, tiles):
  _check(kind, B, devices, with_ids, tiles)


@pytest.mark.slow
@pytest.mark.parametrize("kind, B, devices, with_ids, tiles", SLOW)
def test_tiled_loss_equals_dense_large(kind, B, devices, with_ids, tiles):
  _check(kind, B, devices, with_ids, tiles)


def test_tiled_loss_holds_one_tile_of_logits_at_a_time():
  """No matmul in the tiled loss (forward and backward) has a side longer than the tile."""
  mesh = make_mesh()
  B, E, T = 64, 16, 4
  e = jax.device_put(_unit(jax.random.normal(jax.random.PRNGKey(1), (B, E))), data_sharding(mesh))
  for ring in (False, True):
    loss = lambda e, t: tiled_softmax_loss(e, t, jnp.float32(10.0), mesh, tile=T, ring=ring)[0]
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(e, e)
    shapes = []

    def visit(jp):
      for eqn in jp.eqns:
        if eqn.primitive.name == "dot_general":
          shapes.append(tuple(v.aval.shape) for v in eqn.outvars)
        for p in eqn.params.values():
          for sub in p if isinstance(p, (tuple, list)) else (p,):
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
              visit(inner)

    visit(jaxpr.jaxpr)
    shapes = {s for group in shapes for s in group}
    assert shapes and all(max(s) <= max(T, E) for s in shapes), shapes
    assert (T, T) in shapes


@pytest.mark.parametrize("kind", ["softmax", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_memory_grows_as_this_devices_rows_only(kind):
  """XLA's plan for value-and-gradient: from B to 4B its temporaries grow by about one (b, E) f32 buffer (the
  gradient being accumulated), never by the other side's (B, E) embeddings (8x that on 8 devices) or the (b, B)
  logit blocks; and at 4B they are that buffer plus O(n T E) of tiles in flight. Both column paths."""
  mesh = make_mesh()
  n, E, T = mesh.devices.size, 64, 64
  scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated(mesh))

  def temp_bytes(B, ring):
    spec = jax.ShapeDtypeStruct((B, E), jnp.float32, sharding=data_sharding(mesh))
    if kind == "softmax":
      loss = lambda e, t, s: tiled_softmax_loss(e, t, s, mesh, tile=T, ring=ring)[0]
    else:
      loss = lambda e, t, s: tiled_sigmoid_loss(e, t, s, -s, mesh, tile=T, ring=ring)[0]
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return fn.lower(spec, spec, scale).compile().memory_analysis().temp_size_in_bytes

  rows_bytes = lambda B: (B // n) * E * 4  # one (b, E) f32 buffer
  for ring in (False, True):
    small, large = temp_bytes(2048, ring), temp_bytes(8192, ring)
    growth = (large - small) / (rows_bytes(8192) - rows_bytes(2048))
    assert growth < 1.5, (ring, small, large, growth)
    assert large < 1.5 * rows_bytes(8192) + 8 * n * T * E * 4, (ring, large)


def test_a_tile_of_all_columns_is_the_dense_loss():
  """T >= B: one tile would be the whole (b, B) block; the dense loss runs (no loop), T < B: tiles in loops."""
  mesh = make_mesh()
  e = jax.device_put(_unit(jax.random.normal(jax.random.PRNGKey(2), (16, 4))), data_sharding(mesh))
  hlo = lambda T: (
    jax.jit(lambda e: tiled_softmax_loss(e, e, jnp.float32(10.0), mesh, tile=T)[0])
    .lower(e)
    .as_text()
  )
  assert "while" not in hlo(16) and "while" in hlo(15)


def test_tile_must_be_a_positive_integer():
  mesh = make_mesh()
  e = jnp.zeros((8, 4))
  with pytest.raises(ValueError, match="tile must be a positive integer"):
    tiled_softmax_loss(e, e, 1.0, mesh, tile=0)


def test_loss_tile_config_rule():
  from configs import default

  config = default.get_config()
  config.loss.tile = 7  # any T works (the last tile is masked)
  check_values(config)
  config.loss.tile = -1
  with pytest.raises(ConfigError, match=r"config\.loss\.tile=-1.*an integer >= 0"):
    check_values(config)
