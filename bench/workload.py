"""What is benchmarked: the model's shape, its FLOP count, the project config for it, random inputs.

Two presets: `paper` (ResNet1d-18, width 64, no input pooling, 256-d joint space, bf16 compute,
768-d frozen text embeddings: the paper's model, PERF.md's workload) and `tiny` (the same network
at width 8 over the input average-pooled 10x, float32 as configs/default.py's tiny: CPUs without
bf16 arithmetic emulate it slowly). Both take (5000, 12) int16 ECGs.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from configs import paper
from ecg_contrastive.ecg.signal import NUM_LEADS, NUM_SAMPLES
from ecg_contrastive.models.resnet1d import stage_sizes

ECG_LENGTH, ECG_LEADS = NUM_SAMPLES, NUM_LEADS  # the input contract (ecg/signal.py)
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (grad wrt inputs and wrt weights)


@dataclasses.dataclass(frozen=True)
class Workload:
  depth: int
  width: int
  downsample: int
  embed_dim: int
  dtype: str  # compute dtype of the ECG tower ("bfloat16" | "float32"); parameters stay float32
  text_dim: int  # width of the frozen text embeddings
  table_rows: int  # rows of the frozen text-embedding table the batch indexes

  @property
  def name(self) -> str:
    return f"ResNet1d-{self.depth} w{self.width} ds{self.downsample} {self.dtype}"

  def architecture(self) -> dict:
    """The keyword arguments of the Flax TwoTower / the exported PyTorch ECGEncoder."""
    return dict(
      depth=self.depth,
      width=self.width,
      downsample=self.downsample,
      embed_dim=self.embed_dim,
      lead_mask=False,  # the benchmarked towers read the 12 leads only (FLOPs below count 12 channels)
    )

  def config(self, batch_size: int) -> ml_collections.ConfigDict:
    """configs/paper.py with this model and global batch size."""
    c = paper.get_config()
    c.model.update(self.architecture())
    c.train.dtype = self.dtype
    c.batch_size = batch_size
    return c

  def forward_flops_per_ecg(self) -> float:
    """Analytic forward FLOPs of one ECG (2 x multiply-adds of every conv and projection).

    3.43e9 for the paper model (PERF.md). BatchNorm, ReLU, pooling and the loss are left out (< 1%).
    """
    t = ECG_LENGTH // self.downsample
    t = (t + 2 * 3 - 7) // 2 + 1  # stem: k=7, stride 2, pad 3
    macs = t * ECG_LEADS * self.width * 7
    channels = self.width
    for stage, num_blocks in enumerate(stage_sizes(self.depth)):
      out = self.width * 2**stage
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        t = (t + 2 - 3) // stride + 1  # k=3, pad 1
        macs += t * channels * out * 3 + t * out * out * 3
        if stride != 1 or channels != out:
          macs += t * channels * out  # 1x1 shortcut
        channels = out
    macs += channels * self.embed_dim + self.text_dim * self.embed_dim
    return 2.0 * macs

  def train_flops_per_ecg(self) -> float:
    """Analytic training-step FLOPs per ECG: 3x forward (10.3e9 for the paper model)."""
    return TRAIN_FLOPS_PER_FORWARD * self.forward_flops_per_ecg()


PRESETS = {
  "paper": Workload(
    depth=18, width=64, downsample=1, embed_dim=256, dtype="bfloat16", text_dim=768, table_rows=4096
  ),
  "tiny": Workload(
    depth=18, width=8, downsample=10, embed_dim=32, dtype="float32", text_dim=32, table_rows=256
  ),
}


def random_batches(
  workload: Workload, batch_size: int, count: int, seed: int
) -> list[dict[str, np.ndarray]]:
  """`count` distinct host batches: 'ecg' int16 (B, 5000, 12) in +-2 mV (never zeros), 'report_row' int32 (B,)."""
  rng = np.random.default_rng(seed)
  return [
    {
      "ecg": rng.integers(-2000, 2001, (batch_size, ECG_LENGTH, ECG_LEADS), dtype=np.int16),
      "report_row": rng.integers(0, workload.table_rows, batch_size, dtype=np.int32),
    }
    for _ in range(count)
  ]


def random_table(workload: Workload, seed: int) -> np.ndarray:
  """(table_rows, text_dim) float32 stand-in for the frozen text embeddings."""
  return np.random.default_rng(seed).standard_normal(
    (workload.table_rows, workload.text_dim), dtype=np.float32
  )
