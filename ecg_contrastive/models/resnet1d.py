"""ResNet1d ECG tower (MERL-compatible ResNet1d-18/34) in Flax linen.

Input: float ECG in millivolts, (B, T, 12) channels-last, sampled at 500 Hz (T = 5000 for
10 s). Output: globally average-pooled features (B, features[-1] * ... ) = (B, 512 * width / 64).

Architecture (arXiv 2504.09302 / MERL): stem Conv(k=7, stride 2, no bias) + BN + ReLU,
no max-pool; BasicBlocks [2, 2, 2, 2] (ResNet-18) or [3, 4, 6, 3] (ResNet-34), widths
w, 2w, 4w, 8w (w = 64 by default), strides 1/2/2/2, kernel 3; a 1x1 conv + BN shortcut
where the shape changes. 5000 samples -> 2500 after the stem -> 313 steps at the end.

`conv_impl` (config.train.conv_impl) chooses how the BasicBlocks' convolutions and BatchNorms run: "xla"
(flax.linen.Conv, then BatchNorm) or "shifted_matmul" / "pallas" (models/fused_conv.py: each conv emits its
BatchNorm's statistics and applies the previous BatchNorm + ReLU to its input, so bn1's output is never
materialised). Same parameters, names and shapes, same mathematics (rounding aside); the stem stays "xla"
(and `bn_backward` then applies to the stem's BatchNorm only: the fused blocks have their own backward).

`downsample` > 1 average-pools the input in time first (window = stride = downsample), so
small CPU configs keep the 500 Hz x 5000 input contract while computing at e.g. 100 Hz.
Parameters and BatchNorm statistics are float32; `dtype` sets the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecg_contrastive.models import fused_conv as fused_conv_lib
from ecg_contrastive.models.batch_norm import BatchNorm, BatchNormFold

# The one table of ResNet1d layouts: depth -> BasicBlocks per stage. config_check, the exporter (layout_map, the
# exported config.json's architecture.stage_sizes, which the exported modeling_ecg.py builds from) and bench use it.
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def stage_sizes(depth: int) -> tuple[int, ...]:
  """BasicBlocks per stage of ResNet1d-`depth`; ValueError naming the supported depths for any other depth."""
  if depth not in STAGE_SIZES:
    raise ValueError(f"ResNet1d depth {depth} is not supported; use one of {sorted(STAGE_SIZES)}")
  return STAGE_SIZES[depth]


def conv1d(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free Conv1d with PyTorch-style symmetric padding (kernel // 2)."""
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel,),
    strides=(stride,),
    padding=[(pad, pad)],
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def batch_norm(dtype: Any, name: str, relu: bool = False, backward: str = "lean") -> BatchNorm:
  """BatchNorm (+ ReLU) matching PyTorch defaults (momentum 0.1 there = 0.9 here, eps 1e-5); with the "lean"
  backward it keeps only its compute-dtype input (models/batch_norm.py)."""
  return BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, relu=relu, backward=backward, name=name)


class FusedConv(nn.Module):
  """A bias-free Conv1d (k = 1 or 3) with flax.linen.Conv's parameter (kernel (k, in, out) float32, LeCun normal
  initialisation), computed by fused_conv: __call__(x, norm, relu) -> (y, sum of y, sum of y^2)."""

  features: int
  kernel_size: int
  stride: int
  impl: str

  @nn.compact
  def __call__(self, x: jnp.ndarray, norm=None, relu: bool = False):
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(),
      (self.kernel_size, x.shape[-1], self.features),
      jnp.float32,
    )
    return fused_conv_lib.fused_conv(x, kernel, norm, stride=self.stride, relu=relu, impl=self.impl)


class BasicBlock(nn.Module):
  """Two k=3 convs with BN; 1x1 conv + BN shortcut when stride or width changes."""

  features: int
  stride: int
  dtype: Any = jnp.float32
  bn_backward: str = "lean"
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.conv_impl != "xla":
      return self.fused(x, train)
    y = conv1d(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = batch_norm(self.dtype, "bn1", relu=True, backward=self.bn_backward)(y, train)
    y = conv1d(self.features, 3, 1, self.dtype, "conv2")(y)
    y = batch_norm(self.dtype, "bn2", backward=self.bn_backward)(y, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv1d(self.features, 1, self.stride, self.dtype, "shortcut_conv")(x)
      x = batch_norm(self.dtype, "shortcut_bn", backward=self.bn_backward)(x, train)
    return nn.relu(x + y)

  def fused(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """The same block with fused_conv: bn1's apply + ReLU runs in conv2's operand; each BatchNorm's statistics come
    from its conv's output (the sums); bn2's and shortcut_bn's applies meet in the residual add + ReLU."""
    x = x.astype(self.dtype)

    def conv(name, k, stride, h, norm=None, relu=False):
      return FusedConv(self.features, k, stride, self.conv_impl, name=name)(h, norm, relu)

    def fold(name, y, y_sum, y_sq):
      return BatchNormFold(0.9, 1e-5, name=name)(y_sum, y_sq, y.shape[0] * y.shape[1], train)

    y1, y1_sum, y1_sq = conv("conv1", 3, self.stride, x)
    y2, y2_sum, y2_sq = conv("conv2", 3, 1, y1, fold("bn1", y1, y1_sum, y1_sq), relu=True)
    z = fused_conv_lib.batch_norm_apply(y2, fold("bn2", y2, y2_sum, y2_sq))
    if self.stride != 1 or x.shape[-1] != self.features:
      s, s_sum, s_sq = conv("shortcut_conv", 1, self.stride, x)
      x = fused_conv_lib.batch_norm_apply(s, fold("shortcut_bn", s, s_sum, s_sq))
    return nn.relu(x + z)


class ResNet1d(nn.Module):
  """ECG ResNet1d. __call__(ecg (B, T, leads) mV, train) -> features (B, 8 * width)."""

  depth: int = 18
  width: int = 64
  downsample: int = 1
  dtype: Any = jnp.float32
  # "lean" | "autodiff": BatchNorm's backward (models/batch_norm.py); same math, rounding aside
  bn_backward: str = "lean"
  # "xla" | "shifted_matmul" | "pallas": how the blocks' convs + BatchNorms run (fused_conv.py; same math)
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, ecg: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    sizes = stage_sizes(self.depth)
    dtype = jnp.dtype(self.dtype)
    x = ecg.astype(jnp.float32)
    if self.downsample > 1:
      x = nn.avg_pool(x, (self.downsample,), strides=(self.downsample,))
    x = x.astype(dtype)
    x = conv1d(self.width, 7, 2, dtype, "stem_conv")(x)
    x = batch_norm(dtype, "stem_bn", relu=True, backward=self.bn_backward)(x, train)
    for stage, num_blocks in enumerate(sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(
          self.width * 2**stage,
          stride,
          dtype,
          self.bn_backward,
          self.conv_impl,
          name=f"stage{stage + 1}_block{block + 1}",
        )(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=1)
