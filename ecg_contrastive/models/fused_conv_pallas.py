"""fused_conv's forward as one Pallas kernel: prologue (previous BatchNorm + ReLU), Conv1d (k = 1 or 3, stride 1
or 2) as k GEMMs over shifted time tiles, and the per-channel sum and sum of squares of its output (the next
BatchNorm's statistics) in the epilogue. The backward pass stays fused_conv's (jnp GEMMs).

Grid (batch, time tile, output-channel tile). A program reads, for each tap j and each chunk of block_c input
channels, block_t input steps starting at its tile's first step + j (through the halo of k - 1 steps that
tiles share), applies the prologue in float32
(zero where the step is padding), rounds to the compute dtype and accumulates h @ kernel[j] in float32; it writes
y (block_t, block_d) rounded to the compute dtype and the partial statistics of the rows inside the output
(the last tile of a length that is not a multiple of block_t is partly outside: its store and its statistics
are masked; Pallas' Triton lowering masks no block by itself). The input is
zero-padded in time outside the kernel (k // 2 in front, up to whole tiles behind) and, for stride 2, viewed as
(T / 2, 2 C) (a free reshape: a tap reads its phase's channel half) so that no load is strided.

Verified: on CPU in Pallas' interpret mode (tests/test_fused_conv.py), against lax.conv and the plain
BatchNorm, at the lengths of every ResNet1d-18 stage; and cross-lowered for CUDA on the CPU at the paper's
stage shapes in bf16 (the same test file): Pallas' Triton lowering accepts the kernel (block shapes, loads with
their masks, tl.dot) and emits a Triton custom call. NOT verified: Triton's compilation of that IR for a GPU,
its results there and its speed (bench/gpu_run.sh checks all three first on a card). Pallas' default GPU
backend is Mosaic GPU, for which this kernel's shared-memory plan is too large: compiler_params select Triton.
Under a sharded jit (several devices) a pallas_call is not partitioned by XLA: wrap it in shard_map and psum
the statistics before using it on more than one GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

BLOCK_T = 64  # output steps per program
BLOCK_D = 128  # output channels per program
BLOCK_C = 128  # input channels per GEMM operand load


def _kernel(
  x_ref,
  norm_ref,
  w_ref,
  y_ref,
  sum_ref,
  sq_ref,
  *,
  k,
  stride,
  channels,
  block_c,
  length,
  t_out,
  relu,
  prologue,
):
  block_t = y_ref.shape[0]
  i = pl.program_id(1)
  acc = jnp.zeros(y_ref.shape, jnp.float32)
  steps = jax.lax.broadcasted_iota(jnp.int32, (block_t, 1), 0)
  for j in range(k):
    row = i * block_t + j // stride  # in the (T / stride, stride C) view of the padded input
    t_in = (row + steps) * stride + j % stride - k // 2  # the step of the unpadded input
    for c in range(0, channels, block_c):  # input channels in chunks: operands that fit on chip
      cols = pl.ds((j % stride) * channels + c, block_c)
      rows = x_ref[pl.ds(row, block_t), cols]
      if prologue:
        part = pl.ds(c, block_c)
        h = (rows.astype(jnp.float32) - norm_ref[0, part]) * norm_ref[1, part] + norm_ref[2, part]
        if relu:
          h = jnp.maximum(h, 0.0)
        rows = jnp.where((t_in >= 0) & (t_in < length), h, 0.0).astype(rows.dtype)
      w = w_ref[j, pl.ds(c, block_c), :].astype(rows.dtype)
      acc += jnp.dot(rows, w, preferred_element_type=jnp.float32)
  y = acc.astype(y_ref.dtype)
  inside = (
    i * block_t + steps < t_out
  )  # the last tile of a length that is not a multiple of block_t
  # A masked store: Triton writes a block as is, so the rows past t_out would land in the next ECG's rows.
  pl_triton.store(y_ref, y, mask=jnp.broadcast_to(inside, y.shape))
  y32 = jnp.where(inside, y.astype(jnp.float32), 0.0)
  sum_ref[...] = jnp.sum(y32, axis=0)
  sq_ref[...] = jnp.sum(y32 * y32, axis=0)


@functools.partial(
  jax.jit, static_argnums=(3, 4, 5), static_argnames=("block_t", "block_d", "block_c", "interpret")
)
def conv_stats(
  x: jax.Array,
  kernel: jax.Array,
  norm,
  stride: int,
  relu: bool,
  use_prologue: bool,
  *,
  block_t: int = BLOCK_T,
  block_d: int = BLOCK_D,
  block_c: int = BLOCK_C,
  interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """fused_conv's forward (y, sum of y, sum of y^2) by the Pallas kernel; interpret=None: interpret mode unless
  the default backend is a GPU."""
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  b, length, channels = x.shape
  k, _, features = kernel.shape
  # fused_conv.output_length, not imported: fused_conv imports this module
  t_out = (length + 2 * (k // 2) - k) // stride + 1
  n_t = pl.cdiv(t_out, block_t)
  block_d, block_c = min(block_d, features), min(block_c, channels)
  if features % block_d or channels % block_c:
    raise ValueError(
      f"fused_conv_pallas: {channels} -> {features} channels: use multiples of {block_c} -> {block_d}"
    )
  rows = (
    n_t * block_t + (k - 1) // stride
  )  # steps of the (T / stride, stride C) view that the tiles read
  xp = jnp.pad(x, ((0, 0), (k // 2, rows * stride - length - k // 2), (0, 0)))
  xp = xp.reshape(b, rows, stride * channels)
  norm = jnp.stack([*norm, jnp.zeros_like(norm[0])]).astype(
    jnp.float32
  )  # (4, C): shift, mult, bias, 0
  kern = functools.partial(
    _kernel,
    k=k,
    stride=stride,
    channels=channels,
    block_c=block_c,
    length=length,
    t_out=t_out,
    relu=relu,
    prologue=use_prologue,
  )
  stats = jax.ShapeDtypeStruct((b, n_t, features), jnp.float32)
  y, part_sum, part_sq = pl.pallas_call(
    kern,
    grid=(b, n_t, features // block_d),
    in_specs=[
      pl.BlockSpec((None, rows, stride * channels), lambda n, i, d: (n, 0, 0)),
      pl.BlockSpec((4, channels), lambda n, i, d: (0, 0)),
      pl.BlockSpec((k, channels, block_d), lambda n, i, d: (0, 0, d)),
    ],
    out_specs=[
      pl.BlockSpec((None, block_t, block_d), lambda n, i, d: (n, i, d)),
      pl.BlockSpec((None, None, block_d), lambda n, i, d: (n, i, d)),
      pl.BlockSpec((None, None, block_d), lambda n, i, d: (n, i, d)),
    ],
    out_shape=[jax.ShapeDtypeStruct((b, t_out, features), x.dtype), stats, stats],
    interpret=interpret,
    # Triton, not Pallas' default GPU backend (Mosaic GPU)
    compiler_params=pl_triton.CompilerParams(num_warps=4),
    name="fused_conv1d",
  )(xp, norm, kernel)
  return y, jnp.sum(part_sum, (0, 1)), jnp.sum(part_sq, (0, 1))
