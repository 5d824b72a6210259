"""Gradient caching (config.microbatches > 1) gives the exact gradient of the whole batch's loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ecg_contrastive import step as step_lib
from ecg_contrastive.models.two_tower import TwoTower
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated

BATCH, TEXT_DIM, ROWS, LENGTH = 32, 16, 12, 1000  # the tower takes any length


def _setup(microbatches: int, loss: str = "softmax"):
  config = default.get_config("tiny")
  config.batch_size, config.microbatches = BATCH, microbatches
  config.loss.name = loss
  config.optimizer.warmup_steps = (
    0  # the first step updates at the full learning rate (the bias must move)
  )
  if loss == "sigmoid":
    config.train.logit_bias = -10.0
  mesh = make_mesh()
  model = step_lib.make_model(config)
  tx, schedule = step_lib.make_optimizer(config, 10)
  state = step_lib.init_state(config, model, tx, TEXT_DIM, mesh)
  rng = np.random.default_rng(0)
  batch = {
    "ecg": (rng.standard_normal((BATCH, LENGTH, 12)) * 300).astype(np.int16),
    "report_row": rng.integers(0, ROWS, BATCH).astype(np.int32),
  }  # duplicates: shared positives
  table = jax.device_put(rng.standard_normal((ROWS, TEXT_DIM)).astype(np.float32), replicated(mesh))
  return config, mesh, model, tx, schedule, state, jax.device_put(batch, data_sharding(mesh)), table


def _reference_grads(config, mesh, model, state, batch, table, microbatches):
  """Plain autodiff through all micro-batches at once (all activations kept): what caching must equal."""
  loss_of = step_lib.make_loss(config, mesh)
  groups = step_lib.microbatch_rows(BATCH, microbatches, mesh.devices.size)
  ecg, rows = jnp.asarray(np.asarray(batch["ecg"])), jnp.asarray(np.asarray(batch["report_row"]))

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state["batch_stats"]}
    z = jnp.zeros((BATCH, config.model.embed_dim))
    for group in groups:  # each micro-batch normalised with its own BatchNorm statistics
      z_group = model.apply(
        variables,
        step_lib.ecg_millivolts(ecg[group]),
        train=True,
        mutable=["batch_stats"],
        method=TwoTower.encode_ecg,
      )[0]
      z = z.at[group].set(z_group)
    z_txt = model.apply({"params": params}, table[rows], method=TwoTower.encode_text)
    scale, bias = (
      model.apply({"params": params}, method=TwoTower.scale),
      model.apply({"params": params}, method=TwoTower.bias),
    )
    return loss_of(
      jax.device_put(z, data_sharding(mesh)),
      jax.device_put(z_txt, data_sharding(mesh)),
      scale,
      bias,
      jax.device_put(rows, data_sharding(mesh)),
    )[0]

  return jax.jit(jax.value_and_grad(loss_fn))(state["params"])


def test_microbatch_rows_take_rows_from_every_device():
  groups = step_lib.microbatch_rows(32, 2, 8)
  assert groups.shape == (2, 16)
  np.testing.assert_array_equal(np.sort(groups.ravel()), np.arange(32))
  assert set(groups[0] // 4) == set(
    range(8)
  )  # every device (4 rows each) gives 2 rows to micro-batch 0
  np.testing.assert_array_equal(groups[1][:4], [2, 3, 6, 7])


@pytest.fixture(scope="module", params=["softmax", "sigmoid"])
def two_microbatches(request):
  """(setup, reference loss, reference gradients) for k = 2; the state is copied by each user (steps donate it)."""
  setup = _setup(2, request.param)
  config, mesh, model, tx, schedule, state, batch, table = setup
  return setup, _reference_grads(config, mesh, model, state, batch, table, 2)


@pytest.mark.slow
def test_cached_gradient_equals_full_autodiff(two_microbatches):
  (config, mesh, model, tx, schedule, state, batch, table), (ref_loss, ref_grads) = two_microbatches
  state, state_copy = (
    jax.tree_util.tree_map(jnp.copy, state),
    jax.tree_util.tree_map(jnp.copy, state),
  )
  params_before = jax.device_get(state["params"])
  new_state, metrics = step_lib.make_train_step(config, model, tx, schedule, mesh)(
    state, batch, table
  )
  assert abs(float(metrics["loss"]) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
  ref_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(ref_grads))))
  np.testing.assert_allclose(float(metrics["grad_norm"]), ref_norm, rtol=1e-4)
  # the gradients themselves, leaf by leaf
  grads = jax.jit(
    lambda state, batch, table: step_lib._cached_gradients(
      model,
      step_lib.make_loss(config, mesh),
      state,
      batch["ecg"],
      table[batch["report_row"]],
      batch["report_row"],
      2,
      mesh,
    )[2]
  )(state_copy, batch, table)
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))
  for path, got in jax.tree_util.tree_leaves_with_path(grads):
    want = np.asarray(flat_ref[path])
    np.testing.assert_allclose(
      np.asarray(got),
      want,
      atol=1e-4 * np.max(np.abs(want)) + 1e-9,
      rtol=1e-3,
      err_msg=jax.tree_util.keystr(path),
    )
  moved = jax.tree_util.tree_map(
    lambda new, old: np.asarray(new) - np.asarray(old),
    jax.device_get(new_state["params"]),
    params_before,
  )
  if config.loss.name == "sigmoid":
    assert float(jnp.abs(moved["logit_bias"])) > 1e-5  # SigLIP's bias trains, and is logged
    assert float(metrics["logit_bias"]) == pytest.approx(
      -10.0 + float(moved["logit_bias"]), abs=1e-6
    )
  else:
    assert "logit_bias" not in metrics


@pytest.mark.parametrize(
  "two_microbatches", ["softmax"], indirect=True
)  # BatchNorm's behaviour, not the loss's
@pytest.mark.slow
def test_more_microbatches_change_only_batchnorm_statistics(two_microbatches):
  (config, mesh, model, tx, schedule, state, batch, table), (ref_loss, _) = two_microbatches
  config = config.copy_and_resolve_references()
  config.microbatches = 4
  new_state, metrics = step_lib.make_train_step(config, model, tx, schedule, mesh)(
    jax.tree_util.tree_map(jnp.copy, state), batch, table
  )
  # 4 micro-batches of 8 ECGs: BatchNorm statistics of 8 ECGs instead of 16, a different but close loss
  assert 0 < abs(float(metrics["loss"]) - float(ref_loss)) < 0.1 * abs(float(ref_loss))
  # running statistics: one update per step, 0.9 * old (0) + 0.1 * the mean of the micro-batch statistics
  old = np.asarray(state["batch_stats"]["ecg"]["stem_bn"]["var"])
  new = np.asarray(new_state["batch_stats"]["ecg"]["stem_bn"]["var"])
  assert np.all(np.isfinite(new)) and np.all(np.abs(new - 0.9 * old) < 0.1 * np.max(new))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_cached_gradient_with_tiled_loss_equals_dense(loss):
  """config.loss.tile > 0 (all-gather and ring) inside gradient caching: the dense loss's loss and gradients."""
  config, mesh, model, tx, schedule, state, batch, table = _setup(2, loss)

  def cached(config):
    fn = lambda state, batch, table: step_lib._cached_gradients(
      model,
      step_lib.make_loss(config, mesh),
      state,
      batch["ecg"],
      table[batch["report_row"]],
      batch["report_row"],
      2,
      mesh,
    )
    loss, (acc, _, _), grads = jax.jit(fn)(state, batch, table)
    return loss, acc, grads

  ref_loss, ref_acc, ref_grads = cached(config)
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))
  for tile, ring in (
    (5, False),
    (3, True),
  ):  # 5 and 3 divide neither the 4 rows per device nor the 32 columns
    tiled = config.copy_and_resolve_references()
    tiled.loss.tile, tiled.loss.ring = tile, ring
    got_loss, got_acc, grads = cached(tiled)
    assert abs(float(got_loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert float(got_acc) == float(ref_acc)
    for path, got in jax.tree_util.tree_leaves_with_path(grads):
      want = np.asarray(flat_ref[path])
      np.testing.assert_allclose(
        np.asarray(got),
        want,
        atol=1e-5 * np.max(np.abs(want)) + 1e-12,
        rtol=1e-4,
        err_msg=f"tile {tile}, ring {ring}: {jax.tree_util.keystr(path)}",
      )
