"""The lean-backward BatchNorm equals flax.linen.BatchNorm (+ ReLU) and keeps no float32 activations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecg_contrastive.models.batch_norm import BatchNorm, BatchNormFold
from ecg_contrastive.models.resnet1d import ResNet1d
from ecg_contrastive.sharding import data_sharding, make_mesh

SCALE, BIAS = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-0.3, 0.3, 6)


class FlaxBatchNorm(nn.Module):
  relu: bool
  dtype: object

  @nn.compact
  def __call__(self, x, train):
    y = nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn"
    )(x)
    return nn.relu(y) if self.relu else y


def _run(module, params, stats, x, cotangent, train=True):
  """(y, updated batch_stats, (d params, d x)) of one call in training mode."""

  def forward(p, x):
    return module.apply({"params": p, "batch_stats": stats}, x, train, mutable=["batch_stats"])

  y, updates = forward(params, x)
  _, vjp = jax.vjp(lambda p, x: forward(p, x)[0], params, x)
  return y, updates["batch_stats"], vjp(cotangent)


def _f32(a):
  return np.asarray(jnp.asarray(a, jnp.float32))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype,grad_tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 1e-2)])
def test_values_statistics_and_gradients_equal_flax(relu, dtype, grad_tol):
  x = (jax.random.normal(jax.random.PRNGKey(0), (4, 50, 6)) * 3 + 1).astype(dtype)
  cotangent = jax.random.normal(jax.random.PRNGKey(1), x.shape).astype(dtype)
  stats = {"mean": jnp.full(6, 0.2), "var": jnp.full(6, 2.0)}
  y, new, (d_params, dx) = _run(
    BatchNorm(dtype=dtype, relu=relu), {"scale": SCALE, "bias": BIAS}, stats, x, cotangent
  )
  y_ref, new_ref, (d_ref, dx_ref) = _run(
    FlaxBatchNorm(relu, dtype), {"bn": {"scale": SCALE, "bias": BIAS}}, {"bn": stats}, x, cotangent
  )
  assert y.dtype == dtype
  np.testing.assert_array_equal(_f32(y), _f32(y_ref))  # same operations in the same order
  np.testing.assert_allclose(new["mean"], new_ref["bn"]["mean"], rtol=1e-6)
  np.testing.assert_allclose(new["var"], new_ref["bn"]["var"], rtol=1e-6)
  assert float(jnp.max(jnp.abs(new["var"] - stats["var"]))) > 0.1  # the running averages moved
  np.testing.assert_allclose(_f32(dx), _f32(dx_ref), atol=grad_tol, rtol=grad_tol)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(d_params[name], d_ref["bn"][name], atol=grad_tol * 10, rtol=grad_tol)
  assert (
    float(jnp.mean(_f32(y) == 0)) > 0.2
  ) == relu  # the ReLU (when fused) gates about half the outputs


@pytest.mark.slow
def test_eval_mode_uses_running_statistics_like_flax():
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 40, 6))
  stats = {"mean": jnp.linspace(-1, 1, 6), "var": jnp.linspace(0.5, 3, 6)}
  ours = BatchNorm(relu=True).apply(
    {"params": {"scale": SCALE, "bias": BIAS}, "batch_stats": stats}, x, False
  )
  ref = FlaxBatchNorm(True, jnp.float32).apply(
    {"params": {"bn": {"scale": SCALE, "bias": BIAS}}, "batch_stats": {"bn": stats}}, x, False
  )
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_statistics_are_over_the_global_batch_when_sharded():
  mesh = make_mesh()
  x = (
    jax.random.normal(jax.random.PRNGKey(3), (16, 30, 6)) + jnp.arange(16.0)[:, None, None]
  )  # rows differ
  module, variables = (
    BatchNorm(),
    {
      "params": {"scale": SCALE, "bias": BIAS},
      "batch_stats": {"mean": jnp.zeros(6), "var": jnp.ones(6)},
    },
  )
  apply = jax.jit(lambda x: module.apply(variables, x, True, mutable=["batch_stats"]))
  (y, stats), (y_sharded, stats_sharded) = apply(x), apply(jax.device_put(x, data_sharding(mesh)))
  # One device and 8 devices sum the 480 values per channel in different orders: both results are within the
  # float32 error bound of the exact one, so they differ by at most twice that bound (2e-5 to 4e-4 for y here, while
  # per-device statistics would differ by ~1: the row means differ by 2 between devices).
  y_bound, var_bound = _float32_batch_norm_bounds(
    np.asarray(x, np.float64), np.asarray(SCALE, np.float64), 1e-5
  )
  np.testing.assert_array_less(
    np.abs(np.asarray(y_sharded, np.float64) - np.asarray(y, np.float64)), 2 * y_bound
  )
  np.testing.assert_array_less(
    np.abs(
      np.asarray(stats_sharded["batch_stats"]["var"], np.float64)
      - np.asarray(stats["batch_stats"]["var"], np.float64)
    ),
    2 * var_bound,
  )
  assert float(stats["batch_stats"]["var"][0]) > 2.0  # the spread between rows is in the variance


def _float32_batch_norm_bounds(
  x: np.ndarray, scale: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
  """Forward error bounds of float32 training-mode BatchNorm over x (..., C), whatever the summation order.

  A float32 sum of n terms errs by at most gamma_n * sum|x_i|, gamma_n = n u / (1 - n u), u = 2^-24 (Higham,
  Accuracy and Stability of Numerical Algorithms, 4.2). The statistics are mean = E[x] and the fast variance
  E[x^2] - E[x]^2; rsqrt and the output's multiply-add add a few u each. Returns (bound on |y| per element,
  bound on |var| per channel).
  """
  u = 2.0**-24
  shape, x = x.shape, x.reshape(-1, x.shape[-1])
  n = x.shape[0]
  gamma = n * u / (1 - n * u)
  mean, mean_abs, mean_sq = x.mean(0), np.abs(x).mean(0), (x * x).mean(0)
  var = mean_sq - mean * mean
  d_mean = gamma * mean_abs + u * np.abs(mean)
  d_var = (gamma + 2 * u) * mean_sq + 2 * np.abs(mean) * d_mean + u * np.abs(var)
  rstd = 1 / np.sqrt(var + epsilon)
  d_rstd_rel = d_var / (2 * (var + epsilon)) + 2 * u
  y_abs = np.abs(x - mean) * rstd * np.abs(scale)
  d_y = np.abs(scale) * rstd * (d_mean + np.abs(x - mean) * (d_rstd_rel + 2 * u)) + 2 * u * (
    y_abs + 1
  )
  return d_y.reshape(shape), d_var


@pytest.mark.slow
def test_bf16_resnet_backward_keeps_no_float32_activations():
  """Residuals of jax.vjp: before the custom VJP, 40 float32 (T, C) tensors per ECG (25.6 MB at width 64)."""
  model, batch = ResNet1d(depth=18, width=8, dtype=jnp.bfloat16), 2
  ecg = jax.random.normal(jax.random.PRNGKey(4), (batch, 1000, 12))
  variables = model.init(jax.random.PRNGKey(5), ecg, False)
  forward = lambda p: model.apply(
    {"params": p, "batch_stats": variables["batch_stats"]}, ecg, True, mutable=["batch_stats"]
  )[0]
  _, vjp = jax.vjp(forward, variables["params"])
  activations = [
    leaf
    for leaf in jax.tree_util.tree_leaves(vjp)
    if hasattr(leaf, "dtype") and leaf.size >= batch * 63 * 8
  ]  # the smallest (T, C) map
  by_dtype = {
    str(d): sum(1 for a in activations if a.dtype == d) for d in {a.dtype for a in activations}
  }
  assert by_dtype.get("float32", 0) == 0, by_dtype
  assert by_dtype["bfloat16"] >= 20  # every BatchNorm input is kept, in bf16


@pytest.mark.slow
def test_autodiff_backward_gives_the_same_model_and_keeps_float32_maps():
  """config.train.bn_backward="autodiff" (the A/B baseline): the same parameters and forward, and gradients
  equal up to rounding, as the lean backward, and what JAX keeps for the backward includes the float32 maps
  the lean one avoids."""
  ecg = jax.random.normal(jax.random.PRNGKey(4), (2, 1000, 12))
  results = {}
  for backward in ("lean", "autodiff"):
    for dtype in (jnp.float32, jnp.bfloat16):
      model = ResNet1d(depth=18, width=8, dtype=dtype, bn_backward=backward)
      variables = model.init(jax.random.PRNGKey(5), ecg, False)
      forward = lambda p: model.apply(
        {"params": p, "batch_stats": variables["batch_stats"]}, ecg, True, mutable=["batch_stats"]
      )
      features, vjp = jax.vjp(lambda p: forward(p)[0], variables["params"])
      grads = vjp(jnp.ones_like(features))[0]
      kept = [
        leaf.dtype
        for leaf in jax.tree_util.tree_leaves(vjp)
        if hasattr(leaf, "dtype") and leaf.size >= 2 * 63 * 8
      ]  # the (T, C) maps, as in the test above
      results[backward, str(jnp.dtype(dtype))] = (
        variables,
        features,
        forward(variables["params"])[1],
        grads,
        kept,
      )
  for dtype in ("float32", "bfloat16"):
    lean, auto = results["lean", dtype], results["autodiff", dtype]
    assert jax.tree_util.tree_structure(lean[0]) == jax.tree_util.tree_structure(auto[0])
    np.testing.assert_array_equal(_f32(lean[1]), _f32(auto[1]))  # the same forward, bit for bit
    for a, b in zip(jax.tree_util.tree_leaves(lean[2]), jax.tree_util.tree_leaves(auto[2])):
      np.testing.assert_array_equal(a, b)  # the same running statistics
  for a, b in zip(
    jax.tree_util.tree_leaves(results["lean", "float32"][3]),
    jax.tree_util.tree_leaves(results["autodiff", "float32"][3]),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert jnp.dtype("float32") not in results["lean", "bfloat16"][4]
  assert jnp.dtype("float32") in results["autodiff", "bfloat16"][4]


@pytest.mark.parametrize("train", [True, False])
def test_fold_from_sums_equals_batch_norm(train):
  """BatchNormFold (the fused convs' BatchNorm: statistics from the conv's sums, apply in the next conv) gives
  BatchNorm's output as (x - shift) * mult + bias, the same running averages and the same variable names;
  float32, the same operations but for the mean (sum / n instead of jnp.mean): within a few ulps."""
  x = jax.random.normal(jax.random.PRNGKey(6), (4, 50, 6)) * 3 + 1
  variables = {
    "params": {"scale": SCALE, "bias": BIAS},
    "batch_stats": {"mean": jnp.full(6, 0.2), "var": jnp.full(6, 2.0)},
  }
  y, new = BatchNorm().apply(variables, x, train, mutable=["batch_stats"])
  sums = jnp.sum(x, (0, 1)), jnp.sum(x * x, (0, 1))
  (shift, mult, bias), new_fold = BatchNormFold().apply(
    variables, *sums, 200, train, mutable=["batch_stats"]
  )
  np.testing.assert_allclose((x - shift) * mult + bias, y, rtol=1e-5, atol=1e-5)
  for name in ("mean", "var"):
    np.testing.assert_allclose(new_fold["batch_stats"][name], new["batch_stats"][name], rtol=1e-6)
  moved = float(jnp.max(jnp.abs(new_fold["batch_stats"]["var"] - 2.0)))
  assert (moved > 0.1) == train  # running averages move in training only
