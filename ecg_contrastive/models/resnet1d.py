"""ResNet1d ECG tower (MERL-compatible ResNet1d-18/34) in Flax linen.

Input: float ECG in millivolts, (B, T, 12) channels-last, sampled at 500 Hz (T = 5000 for
10 s). Output: globally average-pooled features (B, features[-1] * ... ) = (B, 512 * width / 64).

Architecture (arXiv 2504.09302 / MERL): stem Conv(k=7, stride 2, no bias) + BN + ReLU,
no max-pool; BasicBlocks [2, 2, 2, 2] (ResNet-18) or [3, 4, 6, 3] (ResNet-34), widths
w, 2w, 4w, 8w (w = 64 by default), strides 1/2/2/2, kernel 3; a 1x1 conv + BN shortcut
where the shape changes. 5000 samples -> 2500 after the stem -> 313 steps at the end.

`downsample` > 1 average-pools the input in time first (window = stride = downsample), so
small CPU configs keep the 500 Hz x 5000 input contract while computing at e.g. 100 Hz.
Parameters and BatchNorm statistics are float32; `dtype` sets the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecg_contrastive.models.batch_norm import BatchNorm

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


class BasicBlock(nn.Module):
  """Two k=3 convs with BN; 1x1 conv + BN shortcut when stride or width changes."""

  features: int
  stride: int
  dtype: Any = jnp.float32
  bn_backward: str = "lean"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    y = conv1d(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = batch_norm(self.dtype, "bn1", relu=True, backward=self.bn_backward)(y, train)
    y = conv1d(self.features, 3, 1, self.dtype, "conv2")(y)
    y = batch_norm(self.dtype, "bn2", backward=self.bn_backward)(y, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv1d(self.features, 1, self.stride, self.dtype, "shortcut_conv")(x)
      x = batch_norm(self.dtype, "shortcut_bn", backward=self.bn_backward)(x, train)
    return nn.relu(x + y)


class ResNet1d(nn.Module):
  """ECG ResNet1d. __call__(ecg (B, T, leads) mV, train) -> features (B, 8 * width)."""

  depth: int = 18
  width: int = 64
  downsample: int = 1
  dtype: Any = jnp.float32
  # "lean" | "autodiff": BatchNorm's backward (models/batch_norm.py); same math, rounding aside
  bn_backward: str = "lean"

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
          name=f"stage{stage + 1}_block{block + 1}",
        )(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=1)
