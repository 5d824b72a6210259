"""The same training step in PyTorch, built on the exported module (export/modeling_ecg.ECGEncoder).

ECG tower + projection head (ECGEncoder, random init) and a text head on the frozen table rows,
symmetric InfoNCE at the config's fixed temperature, AdamW with the config's hyper-parameters
(weight decay on matrices and kernels only; fused on CUDA), autocast to bfloat16 when the
workload computes in bfloat16. Inputs are the same int16 (B, 5000, 12) batches as the JAX side,
already on the device, scaled and transposed to (B, 12, 5000) millivolts inside the step.
Modes: "eager", "compile" (torch.compile of forward + loss, default mode, static shapes: each
batch size compiles its own graph; backward through AOTAutograd) and "max-autotune" (the same with
mode="max-autotune": Triton/cuBLAS autotuning and CUDA graphs on a GPU; long compiles).
"""

from __future__ import annotations

import gc
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.rows import TORCH_MODES, step_row
from bench.timing import time_windows
from bench.workload import Workload
from ecg_contrastive.ecg.signal import MV_PER_UNIT
from ecg_contrastive.export import modeling_ecg
from ecg_contrastive.export.to_torch import architecture_section


def torch_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchTwoTower(nn.Module):
  """forward(ecg int16 (B, T, 12), rows (B,), table (N, text_dim)) -> symmetric InfoNCE loss ()."""

  def __init__(self, workload: Workload, temperature: float):
    super().__init__()
    self.encoder = modeling_ecg.ECGEncoder(
      {"architecture": architecture_section(workload.architecture())}, labels=[]
    )
    self.txt_head = nn.Linear(workload.text_dim, workload.embed_dim)
    with torch.no_grad():
      self.encoder.logit_scale.fill_(math.log(1.0 / temperature))
    self.encoder.logit_scale.requires_grad_(False)  # fixed temperature, as configs/paper.py

  def forward(
    self, ecg_units: torch.Tensor, rows: torch.Tensor, table: torch.Tensor
  ) -> torch.Tensor:
    z_ecg = self.encoder(ecg_units.transpose(1, 2).float() * MV_PER_UNIT)
    z_txt = F.normalize(self.txt_head(table[rows]), dim=-1, eps=modeling_ecg.L2_EPS)
    logits = self.encoder.scale() * z_ecg @ z_txt.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def make_adamw(model: nn.Module, optimizer: Any, device: torch.device) -> torch.optim.AdamW:
  """AdamW as make_optimizer: decay on parameters with ndim > 1 only; frozen parameters left out."""
  trained = [p for p in model.parameters() if p.requires_grad]
  groups = [
    {"params": [p for p in trained if p.ndim > 1], "weight_decay": optimizer.weight_decay},
    {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0},
  ]
  return torch.optim.AdamW(
    groups, lr=optimizer.lr, betas=(optimizer.b1, optimizer.b2), fused=device.type == "cuda"
  )


def bench_torch_step(
  workload: Workload,
  batch_size: int,
  mode: str,
  host_batches: list[dict[str, np.ndarray]],
  table: np.ndarray,
  *,
  warmup: int,
  windows: int,
  steps: int,
  seed: int = 0,
) -> dict[str, Any]:
  """One results row for the PyTorch step in `mode` (TORCH_MODES) on device-resident batches."""
  if mode not in TORCH_MODES:
    raise ValueError(f"unknown torch mode {mode!r}; use one of {TORCH_MODES}")
  device = torch_device()
  config = workload.config(batch_size)
  torch.manual_seed(seed)
  torch.backends.cudnn.benchmark = True
  model = TorchTwoTower(workload, config.train.temperature).to(device).train()
  opt = make_adamw(model, config.optimizer, device)
  loss_fn = (
    torch.compile(model, dynamic=False, mode="max-autotune" if mode == "max-autotune" else None)
    if mode in ("compile", "max-autotune")
    else model
  )
  table_t = torch.from_numpy(table).to(device)
  batches = [
    (
      torch.from_numpy(b["ecg"]).to(device),
      torch.from_numpy(b["report_row"].astype(np.int64)).to(device),
    )
    for b in host_batches
  ]
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=workload.dtype == "bfloat16")
  last = {}

  def run_step(i: int) -> None:
    ecg, rows = batches[i % len(batches)]
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(ecg, rows, table_t)
    loss.backward()
    opt.step()
    last["loss"] = loss.detach()

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  timing = time_windows(run_step, sync, warmup=warmup, windows=windows, steps=steps)
  peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
  return step_row(
    f"torch {mode}", workload, batch_size, timing, float(last["loss"]), peak, None, None
  )


def release_memory() -> None:
  """Hands the GPU memory of finished PyTorch runs back to the driver (JAX allocates next in this process)."""
  gc.collect()
  torch._dynamo.reset()  # compiled graphs hold their module's parameters
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
