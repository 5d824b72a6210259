"""BatchNorm (+ optional ReLU) whose backward pass keeps only its compute-dtype input.

Autodiff of the plain formula keeps, per layer, float32 copies of the centred and normalised
activations for the backward pass (the statistics run in float32 on bfloat16 conv outputs): in
ResNet1d-18 at bf16 that is 40 float32 (T, C) tensors per ECG, most of the activation memory
and traffic of a training step. Here a custom VJP keeps only the layer's input x (bfloat16 under
bf16 compute) and per-channel statistics, and recomputes x_hat = (x - mean) * rstd inside the
backward pass, as cuDNN's and Apex's fused BatchNorm kernels do:

  y = gamma * x_hat + beta                     (then ReLU, when fused)
  d_beta = sum(dy), d_gamma = sum(dy * x_hat)
  dx = gamma * rstd * (dy - mean(dy) - x_hat * mean(dy * x_hat))

Reductions are over every axis but the last (batch and time), over the global batch when x is
sharded (XLA inserts the all-reduce). The parameter and statistics names and the math match
flax.linen.BatchNorm (fast variance E[x^2] - E[x]^2, float32 statistics, running averages with
`momentum`), so checkpoints and the PyTorch export are unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel float32 (mean, biased variance) of x (..., C) over every axis but the last."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x32), axes) - jnp.square(mean))
  return mean, var


def _normalize(x, mean, rstd, scale, bias):
  """float32 y = (x - mean) * (rstd * scale) + bias, in flax.linen.BatchNorm's order of operations."""
  return (x.astype(jnp.float32) - mean) * (rstd * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, relu: bool):
  """Training-mode BatchNorm of x (..., C) with batch statistics; ReLU after it when `relu`.

  Returns (y in x.dtype, batch mean (C,), batch variance (C,)); the statistics carry no gradient.
  """
  y, mean, var, _ = _forward(x, scale, bias, epsilon, relu)
  return y, mean, var


def _forward(x, scale, bias, epsilon, relu):
  mean, var = _stats(x)
  rstd = jax.lax.rsqrt(var + epsilon)
  return _output(x, mean, rstd, scale, bias, relu), mean, var, rstd


def _output(x, mean, rstd, scale, bias, relu: bool):
  """The normalised x (then ReLU, when fused) in x's dtype."""
  y = _normalize(x, mean, rstd, scale, bias)
  return (jnp.maximum(y, 0.0) if relu else y).astype(x.dtype)


def _fwd(x, scale, bias, epsilon, relu):
  y, mean, var, rstd = _forward(x, scale, bias, epsilon, relu)
  return (y, mean, var), (x, mean, rstd, scale, bias)


def _bwd(epsilon, relu, residuals, cotangents):
  del epsilon
  x, mean, rstd, scale, bias = residuals
  dy = cotangents[0].astype(jnp.float32)  # the statistics are outputs for the running averages only
  x_hat = (x.astype(jnp.float32) - mean) * rstd
  if relu:  # where the forward ReLU passed: y > 0, recomputed from x
    dy = jnp.where(_normalize(x, mean, rstd, scale, bias) > 0, dy, 0.0)
  axes = tuple(range(x.ndim - 1))
  d_bias = jnp.sum(dy, axes)
  d_scale = jnp.sum(dy * x_hat, axes)
  n = x.size // x.shape[-1]
  dx = (scale * rstd) * (dy - d_bias / n - x_hat * (d_scale / n))
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


batch_norm_train.defvjp(_fwd, _bwd)


BACKWARDS = ("lean", "autodiff")


class BatchNorm(nn.Module):
  """flax.linen.BatchNorm over the last axis (same names: params scale/bias, batch_stats mean/var),
  with an optional fused ReLU. Output in `dtype`.

  backward: "lean" (the custom VJP above) or "autodiff" (JAX differentiates the same forward, as for
  flax.linen.BatchNorm: what it keeps is left to XLA), for A/B measurements on each accelerator.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  relu: bool = False
  backward: str = "lean"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    x = x.astype(self.dtype)
    if not train:
      return _output(
        x, ra_mean.value, jax.lax.rsqrt(ra_var.value + self.epsilon), scale, bias, self.relu
      )
    if self.backward == "lean":
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.relu)
    elif self.backward == "autodiff":
      y, mean, var, _ = _forward(x, scale, bias, self.epsilon, self.relu)
    else:
      raise ValueError(f"BatchNorm backward={self.backward!r}: use one of {BACKWARDS}")
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
    return y


class BatchNormFold(nn.Module):
  """BatchNorm's parameters and running statistics (the same names as BatchNorm's), for a layer whose statistics
  come from the producing convolution and whose apply runs in the consuming one (models/fused_conv.py).

  __call__(y_sum (C,), y_sq (C,), count, train) -> (shift, mult, bias), each (C,) float32, such that the layer's
  output is (y - shift) * mult + bias: BatchNorm's, in the same order of operations. In training the statistics
  are the batch's (mean = y_sum / count, biased variance y_sq / count - mean^2, as BatchNorm's fast variance),
  the running averages move as BatchNorm's, and gradients flow through the sums; otherwise the running averages.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, y_sum: jax.Array, y_sq: jax.Array, count: int, train: bool):
    features = y_sum.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    if not train:
      return ra_mean.value, jax.lax.rsqrt(ra_var.value + self.epsilon) * scale, bias
    mean = y_sum / count
    var = jnp.maximum(0.0, y_sq / count - jnp.square(mean))
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
    return mean, jax.lax.rsqrt(var + self.epsilon) * scale, bias
