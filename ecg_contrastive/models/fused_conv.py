"""Bias-free Conv1d (k = 1 or 3, stride 1 or 2, symmetric padding k // 2) as matrix multiplies over shifted
inputs, with BatchNorm's passes folded in: issue 18's fewer passes over the activations on a GPU.

    y, y_sum, y_sq = fused_conv(x, kernel, norm, stride=..., relu=..., prologue=..., impl=...)

computes, in one expression (B batch, T time, C in, D out channels; kernel (k, C, D) as flax.linen.Conv's):
  prologue  h = relu((x - shift) * mult + bias)   (the previous BatchNorm's apply + ReLU, norm = (shift, mult,
            bias) per channel of x, in flax.linen.BatchNorm's order of operations; h = x without a prologue),
            zero at the padding, rounded to x.dtype;
  GEMM      y[t] = sum_j h[stride * t + j - k // 2] @ kernel[j]   (B, T_out, D), float32 accumulation;
  epilogue  y_sum, y_sq = sum of y and of y^2 over batch and time, float32 (D,): the next BatchNorm's statistics.

`impl` "shifted_matmul": the prologue, the shifted copies of h (concatenated along channels: (B, T_out, k C))
and the GEMM with the kernel as a (k C, D) matrix are one jnp expression; on a GPU, XLA's Triton GEMM fusion
may load the operand through the elementwise prologue instead of materialising h (what XLA:GPU fuses is
decided there; on CPU the HLO cannot show it). The statistics are a reduction over y after the GEMM.
`impl` "pallas": one Pallas kernel computes the prologue, the GEMM and the statistics (fused_conv_pallas.py).

The backward pass is ours (custom VJP) and the same for both: it keeps x, y and the per-channel vectors (never
h), and computes
  g  = dy + d_sum + 2 y d_sq                      (the statistics' cotangents folded into the GEMM operand)
  dK = columns(h)^T g                             (wgrad: h recomputed from x inside the operand)
  dh = per output phase, shifted g @ kernel^T      (dgrad: stride 2 as two phases, no zero-interleaving)
  dx = dh * [pre > 0] * mult, d_bias = sum(dh * [pre > 0]), d_mult = sum(dh * [pre > 0] * (x - shift)),
  d_shift = -mult * d_bias
so that the BatchNorm backward (through the statistics) and dReLU ride on the GEMMs' operands and outputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = (
  "xla",
  "shifted_matmul",
  "pallas",
)  # config.train.conv_impl; "xla": flax.linen.Conv + BatchNorm as before


def output_length(length: int, kernel_size: int, stride: int) -> int:
  """Output steps of a Conv1d with symmetric padding kernel_size // 2 (as PyTorch's and ours)."""
  return (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1


def prologue(x: jax.Array, norm, relu: bool) -> jax.Array:
  """float32 (x - shift) * mult + bias (then ReLU): flax.linen.BatchNorm's apply, in its order of operations."""
  shift, mult, bias = norm
  pre = (x.astype(jnp.float32) - shift) * mult + bias
  return jnp.maximum(pre, 0.0) if relu else pre


@jax.custom_vjp
def batch_norm_apply(y: jax.Array, norm) -> jax.Array:
  """(y - shift) * mult + bias in y's dtype (a BatchNorm's apply without ReLU, where no conv consumes it: the
  residual add). Its backward keeps y (compute dtype), not the float32 y - shift that autodiff would keep."""
  return prologue(y, norm, False).astype(y.dtype)


def _apply_fwd(y, norm):
  return batch_norm_apply(y, norm), (y, norm)


def _apply_bwd(residuals, dz):
  y, (shift, mult, _) = residuals
  dz = dz.astype(jnp.float32)
  d_bias = jnp.sum(dz, (0, 1))
  d_mult = jnp.sum(dz * (y.astype(jnp.float32) - shift), (0, 1))
  return (dz * mult).astype(y.dtype), (-mult * d_bias, d_mult, d_bias)


batch_norm_apply.defvjp(_apply_fwd, _apply_bwd)


def columns(h: jax.Array, kernel_size: int, stride: int) -> jax.Array:
  """(B, T, C) -> (B, T_out, k C): the k shifted, strided views of h zero-padded by k // 2, side by side, so that
  a Conv1d is columns(h) @ kernel.reshape(k C, D)."""
  pad = kernel_size // 2
  t_out = output_length(h.shape[1], kernel_size, stride)
  hp = jnp.pad(h, ((0, 0), (pad, pad), (0, 0)))
  views = [hp[:, j : j + stride * (t_out - 1) + 1 : stride] for j in range(kernel_size)]
  return views[0] if kernel_size == 1 else jnp.concatenate(views, axis=-1)


def _shift(g: jax.Array, offset: int, length: int) -> jax.Array:
  """out[:, m] = g[:, m + offset] (zero where m + offset is outside g), for m < length."""
  lo, hi = max(0, -offset), max(0, length + offset - g.shape[1])
  gp = jnp.pad(g, ((0, 0), (lo, hi), (0, 0)))
  start = offset + lo
  return gp[:, start : start + length]


def input_gradient(g: jax.Array, kernel: jax.Array, stride: int, length: int) -> jax.Array:
  """dgrad: the float32 cotangent (B, length, C) of the conv's input, from g (B, T_out, D) in the compute dtype.

  Input step u = stride * m + r (phase r) receives g[m + (r + pad - j) / stride] @ kernel[j]^T from each tap j
  with j = r + pad (mod stride): per phase one GEMM over those taps' shifted g, then the phases interleave.
  """
  k = kernel.shape[0]
  pad = k // 2
  phases = []
  for r in range(stride):
    m = -(-(length - r) // stride)  # ceil: steps of this phase
    taps = [j for j in range(k) if (j - r - pad) % stride == 0]
    if not taps:
      phases.append(jnp.zeros((g.shape[0], m, kernel.shape[1]), jnp.float32))
      continue
    operand = jnp.concatenate([_shift(g, (r + pad - j) // stride, m) for j in taps], axis=-1)
    matrix = jnp.concatenate([kernel[j].T for j in taps], axis=0)  # (len(taps) D, C)
    phases.append(jnp.dot(operand, matrix, preferred_element_type=jnp.float32))
  if stride == 1:
    return phases[0]
  m0 = phases[0].shape[1]
  phases = [jnp.pad(p, ((0, 0), (0, m0 - p.shape[1]), (0, 0))) for p in phases]
  return jnp.stack(phases, axis=2).reshape(g.shape[0], m0 * stride, -1)[:, :length]


def _operand(x, norm, relu, use_prologue, kernel_size):
  """h in x's dtype: the prologue's output, zero at the padding (columns pads after the prologue)."""
  return prologue(x, norm, relu).astype(x.dtype) if use_prologue else x


def _matmul_forward(x, kernel, norm, stride, relu, use_prologue):
  k = kernel.shape[0]
  h = _operand(x, norm, relu, use_prologue, k)
  acc = jnp.dot(
    columns(h, k, stride),
    kernel.astype(x.dtype).reshape(-1, kernel.shape[-1]),
    preferred_element_type=jnp.float32,
  )
  y = acc.astype(x.dtype)
  y32 = y.astype(
    jnp.float32
  )  # the statistics of the rounded output, as the plain BatchNorm computes them
  return y, jnp.sum(y32, (0, 1)), jnp.sum(jnp.square(y32), (0, 1))


def _forward(x, kernel, norm, stride, relu, use_prologue, impl):
  if impl == "shifted_matmul":
    return _matmul_forward(x, kernel, norm, stride, relu, use_prologue)
  if impl == "pallas":
    from ecg_contrastive.models import fused_conv_pallas

    return fused_conv_pallas.conv_stats(x, kernel, norm, stride, relu, use_prologue)
  raise ValueError(f"fused_conv impl={impl!r}: use one of {IMPLS[1:]}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fused(x, kernel, norm, stride, relu, use_prologue, impl):
  return _forward(x, kernel, norm, stride, relu, use_prologue, impl)


def _fused_fwd(x, kernel, norm, stride, relu, use_prologue, impl):
  y, y_sum, y_sq = _forward(x, kernel, norm, stride, relu, use_prologue, impl)
  return (y, y_sum, y_sq), (x, kernel, norm, y)


def _fused_bwd(stride, relu, use_prologue, impl, residuals, cotangents):
  del impl
  x, kernel, norm, y = residuals
  dy, d_sum, d_sq = cotangents
  k = kernel.shape[0]
  g = (dy.astype(jnp.float32) + d_sum + 2.0 * y.astype(jnp.float32) * d_sq).astype(x.dtype)
  h = _operand(x, norm, relu, use_prologue, k)
  cols = columns(h, k, stride)
  d_kernel = jnp.einsum("btk,btd->kd", cols, g, preferred_element_type=jnp.float32)
  d_kernel = d_kernel.reshape(kernel.shape).astype(kernel.dtype)
  dh = input_gradient(g, kernel.astype(x.dtype), stride, x.shape[1])
  if not use_prologue:
    return dh.astype(x.dtype), d_kernel, jax.tree.map(jnp.zeros_like, norm)
  shift, mult, bias = norm
  centred = x.astype(jnp.float32) - shift
  d_pre = jnp.where(centred * mult + bias > 0, dh, 0.0) if relu else dh
  d_bias = jnp.sum(d_pre, (0, 1))
  d_mult = jnp.sum(d_pre * centred, (0, 1))
  dx = (d_pre * mult).astype(x.dtype)
  return dx, d_kernel, (-mult * d_bias, d_mult, d_bias)


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_conv(
  x: jax.Array,
  kernel: jax.Array,
  norm: tuple[jax.Array, jax.Array, jax.Array] | None = None,
  *,
  stride: int = 1,
  relu: bool = False,
  impl: str = "shifted_matmul",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y (B, T_out, D) in x.dtype, sum of y (D,), sum of y^2 (D,)) of the conv of prologue(x) (module docstring).

  x (B, T, C) in the compute dtype; kernel (k, C, D) float32 (cast to x.dtype, as flax.linen.Conv does); norm
  (shift, mult, bias), each (C,) float32, or None for no prologue (then relu must be False).
  """
  if kernel.shape[0] not in (1, 3) or stride not in (1, 2):
    raise ValueError(
      f"fused_conv: kernel size {kernel.shape[0]}, stride {stride}: only k = 1 or 3 and stride 1 or 2 "
      "(use conv_impl='xla' for others)"
    )
  if norm is None and relu:
    raise ValueError("fused_conv: relu=True needs a prologue (norm)")
  use_prologue = norm is not None
  if not use_prologue:
    zeros = jnp.zeros((x.shape[-1],), jnp.float32)
    norm = (zeros, zeros, zeros)
  return _fused(x, kernel, tuple(norm), stride, relu, use_prologue, impl)
