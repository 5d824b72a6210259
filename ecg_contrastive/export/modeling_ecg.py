"""Standalone PyTorch ECG encoder exported from an `ecg_contrastive` (JAX/Flax) checkpoint.

Needs only torch and safetensors (plus the standard library); this file is copied verbatim into every export folder:
  model.safetensors             ECG tower (`ecg.*`), projection head (`ecg_head.*`), `logit_scale`
  label_embeddings.safetensors  `label_embeddings` float32 (num_labels, embed_dim), unit-norm
  labels.json                   [{"ja", "en", "group_ja", "group_en"}, ...] in embedding row order
  config.json                   architecture and input contract
  label_sets/<name>.json, .safetensors   optional further label sets (same formats), written by
                                `python -m ecg_contrastive.main --mode label_set`; load(folder, label_set=name)
  ood.safetensors, ood.json     optional OOD reference: "mean" (F,) and "precision" (F, F) float64 of training
                                records' pooled features, "validation_scores" float32 (M,) sorted; the threshold
                                percentile in ood.json (ecg_contrastive/export/ood.py writes them)

Usage:
  import importlib.util, sys
  spec = importlib.util.spec_from_file_location("modeling_ecg", "EXPORT/modeling_ecg.py")
  modeling_ecg = importlib.util.module_from_spec(spec); spec.loader.exec_module(modeling_ecg)
  model = modeling_ecg.load("EXPORT")            # eval mode, float32
  model = modeling_ecg.load("EXPORT", label_set="ptbxl_superclass")   # scores another label set
  emb = model(ecg)                               # ecg: float32 (B, 12, 5000) mV -> (B, embed_dim)
  top = model.zero_shot(ecg, k=5)                # per record: [{"ja", "en", ..., "score", "probability",
                                                 #   "ood_score", "ood_percentile", "ood_warning"}]
  unusual = model.ood(ecg)                       # per record: {"score", "validation_records", "percentile",
                                                 #   "unfamiliar", "warning"}
  checks = modeling_ecg.check_leads(ecg)         # per record: leads present, flat/clipped/noisy/implausible, warnings

Input contract: 12 leads in the order of config.json "input.lead_order", 500 Hz, 10 s, millivolts,
channels-first. The network is ResNet1d (MERL): optional average-pool of the input in time, stem
Conv1d(k=7, stride 2, pad 3, no bias) + BatchNorm + ReLU, BasicBlock stages, global average pool. With
config.json "architecture.lead_mask" true, 12 presence channels (1.0 where a lead has a non-zero sample, 0.0 for an
all-zero lead) are appended to the leads before the stem: 24 input channels.

OOD score (with ood.json): the Mahalanobis distance of a record's pooled features (the ResNet1d output, before the
projection head) from the training records' mean, divided by sqrt(F): about 1 for a typical training ECG; its
percentile is the share (%) of validation records scoring strictly below it; above the threshold percentile
(ood.json "percentile", default 99) the record is "unfamiliar" and gets a plain warning. Without the files the
scores are None and the first call says "no OOD reference" once.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

NUM_LEADS = 12
LEADS = (
  "I",
  "II",
  "III",
  "aVR",
  "aVL",
  "aVF",
  "V1",
  "V2",
  "V3",
  "V4",
  "V5",
  "V6",
)  # config.json's lead_order
NUM_SAMPLES = 5000
BN_EPS = 1e-5
L2_EPS = 1e-6
MAX_LOGIT_SCALE = math.log(100.0)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Conv1d:
  """Bias-free Conv1d with symmetric padding kernel // 2 (as the Flax tower)."""
  return nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
  """Two k=3 convs with BN; 1x1 conv + BN shortcut when stride or width changes."""

  def __init__(self, in_ch: int, out_ch: int, stride: int):
    super().__init__()
    self.conv1 = _conv(in_ch, out_ch, 3, stride)
    self.bn1 = nn.BatchNorm1d(out_ch, eps=BN_EPS)
    self.conv2 = _conv(out_ch, out_ch, 3, 1)
    self.bn2 = nn.BatchNorm1d(out_ch, eps=BN_EPS)
    self.has_shortcut = stride != 1 or in_ch != out_ch
    if self.has_shortcut:
      self.shortcut_conv = _conv(in_ch, out_ch, 1, stride)
      self.shortcut_bn = nn.BatchNorm1d(out_ch, eps=BN_EPS)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, in_ch, T) -> (B, out_ch, T / stride)."""
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.has_shortcut:
      x = self.shortcut_bn(self.shortcut_conv(x))
    return F.relu(x + y)


class ResNet1d(nn.Module):
  """(B, 12, T) mV -> (B, 8 * width) time-averaged features; stage_sizes: BasicBlocks per stage (config.json's
  architecture.stage_sizes, e.g. [2, 2, 2, 2] for ResNet1d-18)."""

  def __init__(
    self, stage_sizes: list[int], width: int, downsample: int, in_channels: int = NUM_LEADS
  ):
    super().__init__()
    self.pool = nn.AvgPool1d(downsample, stride=downsample) if downsample > 1 else nn.Identity()
    self.stem_conv = _conv(in_channels, width, 7, 2)
    self.stem_bn = nn.BatchNorm1d(width, eps=BN_EPS)
    self.block_names = []
    in_ch = width
    for stage, num_blocks in enumerate(stage_sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        name = f"stage{stage + 1}_block{block + 1}"
        self.add_module(name, BasicBlock(in_ch, width * 2**stage, stride))
        self.block_names.append(name)
        in_ch = width * 2**stage

  def forward(self, ecg: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem_conv(self.pool(ecg))))
    for name in self.block_names:
      x = getattr(self, name)(x)
    return x.mean(dim=2)


class ECGEncoder(nn.Module):
  """ECG tower + projection head; forward gives unit-norm embeddings; zero_shot ranks labels."""

  def __init__(self, config: dict, labels: list[dict]):
    super().__init__()
    arch = config["architecture"]
    self.config = config
    self.labels = labels
    self.lead_mask = bool(arch.get("lead_mask", False))  # 12 presence channels beside the leads
    self.ecg = ResNet1d(
      arch["stage_sizes"],
      arch["width"],
      arch["downsample"],
      NUM_LEADS * (2 if self.lead_mask else 1),
    )
    self.ecg_head = nn.Linear(8 * arch["width"], arch["embed_dim"])
    self.logit_scale = nn.Parameter(torch.zeros(()))
    self.register_buffer(
      "label_embeddings", torch.zeros(len(labels), arch["embed_dim"]), persistent=False
    )
    self.ood_reference: dict | None = (
      None  # {"mean", "precision", "validation_scores", "meta"} from ood.*; set by load
    )
    self._said_no_reference = False

  def forward(self, ecg: torch.Tensor) -> torch.Tensor:
    """float32 (B, 12, 5000) millivolts -> float32 (B, embed_dim) L2-normalised embeddings."""
    return self.embed(self.features(ecg))

  def embed(self, features: torch.Tensor) -> torch.Tensor:
    """(B, 8 * width) pooled features -> (B, embed_dim) L2-normalised embeddings (the projection head)."""
    return F.normalize(self.ecg_head(features), dim=-1, eps=L2_EPS)

  def features(self, ecg: torch.Tensor) -> torch.Tensor:
    """float32 (B, 12, 5000) millivolts -> float32 (B, 8 * width) pooled ResNet1d features."""
    if ecg.dim() != 3 or ecg.shape[1] != NUM_LEADS or ecg.shape[2] != NUM_SAMPLES:
      hint = (
        "; channels-last input? pass ecg.transpose(1, 2)"
        if ecg.shape[1:] == (NUM_SAMPLES, NUM_LEADS)
        else ""
      )
      raise ValueError(
        f"expected an ECG batch of shape (B, {NUM_LEADS}, {NUM_SAMPLES}) (batch, leads, "
        f"samples at 500 Hz), got {tuple(ecg.shape)}{hint}"
      )
    if not ecg.is_floating_point():
      raise ValueError(
        f"expected float millivolts, got dtype {ecg.dtype} (int16 microvolts: divide by 1000)"
      )
    ecg = ecg.to(torch.float32)
    if self.lead_mask:  # 1.0 where a lead has a non-zero sample, 0.0 for an all-zero (absent) lead
      present = (ecg != 0).any(dim=2, keepdim=True).to(ecg.dtype)
      ecg = torch.cat([ecg, present.expand_as(ecg)], dim=1)
    return self.ecg(ecg)

  def scale(self) -> torch.Tensor:
    """exp(logit_scale), clamped to at most 100 (as in training)."""
    return torch.exp(torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE))

  def scores(self, ecg: torch.Tensor) -> torch.Tensor:
    """float32 (B, 12, 5000) mV -> zero-shot scores (B, num_labels) = scale * cosine similarity."""
    return self.scale() * self(ecg) @ self.label_embeddings.T

  @torch.no_grad()
  def zero_shot(
    self, ecg: torch.Tensor, k: int = 5, ood_percentile: float | None = None
  ) -> list[list[dict]]:
    """Top-k labels per record: [{"ja", "en", "group_ja", "group_en", "score", "probability", "ood_score",
    "ood_percentile", "ood_warning"}] * k.

    score is scale * cosine similarity; probability is the softmax of the scores over all labels; the ood_* keys
    are the record's OOD score, its percentile among validation records and the warning above the threshold
    percentile (ood_percentile, default ood.json's) or None (all None without an OOD reference).
    """
    features = self.features(ecg)
    scores = self.scale() * self.embed(features) @ self.label_embeddings.T
    probs = torch.softmax(scores, dim=-1)
    top = torch.topk(scores, k, dim=-1)
    unusual = self.ood_of(features, ood_percentile)
    return [
      [
        dict(
          self.labels[j],
          score=float(scores[i, j]),
          probability=float(probs[i, j]),
          ood_score=unusual[i]["score"],
          ood_percentile=unusual[i]["percentile"],
          ood_warning=unusual[i]["warning"],
        )
        for j in top.indices[i].tolist()
      ]
      for i in range(scores.shape[0])
    ]

  @torch.no_grad()
  def ood(self, ecg: torch.Tensor, percentile: float | None = None) -> list[dict]:
    """float32 (B, 12, 5000) mV -> per record {"score", "validation_records", "percentile", "unfamiliar",
    "warning"} (see the module docstring; percentile: the threshold, default ood.json's)."""
    return self.ood_of(self.features(ecg), percentile)

  @torch.no_grad()
  def ood_of(self, features: torch.Tensor, percentile: float | None = None) -> list[dict]:
    """ood() of (B, 8 * width) pooled features (self.features)."""
    if self.ood_reference is None:
      if not self._said_no_reference:
        warnings.warn(
          "no OOD reference (ood.json, ood.safetensors) in this export: predictions carry no OOD score",
          stacklevel=3,
        )
        self._said_no_reference = True
      none = {
        "score": None,
        "validation_records": None,
        "percentile": None,
        "unfamiliar": None,
        "warning": None,
      }
      return [dict(none) for _ in range(features.shape[0])]
    ref = self.ood_reference
    threshold = ref["meta"]["percentile"] if percentile is None else percentile
    d = features.to(torch.float64) - ref["mean"]
    squared = torch.einsum("bi,ij,bj->b", d, ref["precision"], d).clamp(min=0.0)
    scores = torch.sqrt(squared / ref["mean"].shape[0])
    below = torch.searchsorted(ref["validation_scores"].to(torch.float64), scores, side="left")
    pcts = 100.0 * below.to(torch.float64) / len(ref["validation_scores"])
    n, out = len(ref["validation_scores"]), []
    for s, p in zip(scores.tolist(), pcts.tolist()):
      share = (
        f"above all {n} validation records"
        if p >= 100.0
        else f"above {p:.1f}% of validation records"
      )
      warning = f"this ECG is unlike the training data (OOD score {s:.2f}, {share}): treat the findings with caution"
      out.append(
        {
          "score": s,
          "validation_records": n,
          "percentile": p,
          "unfamiliar": p > threshold,
          "warning": warning if p > threshold else None,
        }
      )
    return out


# Lead checks, with the thresholds of ecg_contrastive/ecg/quality.py (the package's predictor uses that file)
FLAT_MV, NOISY_MV, LARGE_MV = 0.02, 0.15, 15.0
CLIP_RUN, CLIP_TOTAL = (
  10,
  20,
)  # samples at 500 Hz: runs of >= 20 ms at a lead's extreme adding up to >= 40 ms
INT16_LIMIT_MV = 32.767
_MAD_TO_SD = 1 / (0.6745 * math.sqrt(2))


@torch.no_grad()
def check_leads(ecg: torch.Tensor) -> list[dict]:
  """float (B, 12, 5000) mV -> per record {"present", "flat", "clipped", "noisy", "implausible", "warnings"}.

  flat: peak-to-peak under 20 uV (a zero-filled or disconnected lead); clipped: runs of >= 20 ms at the lead's
  max or min (or +-32.767 mV) adding up to >= 40 ms; noisy {lead: SD mV}: broadband noise (median absolute first
  difference / 0.6745 / sqrt 2) over 0.15 mV; implausible {lead: mV}: a typical second's peak-to-peak over 15 mV.
  The model saw 12 live leads: findings of a record with warnings deserve less trust.
  """
  leads = list(LEADS)
  x = ecg.to(torch.float64)
  flat = (x.amax(-1) - x.amin(-1)) < FLAT_MV  # (B, 12)
  noise = (x[..., 1:] - x[..., :-1]).abs().median(-1).values * _MAD_TO_SD
  seconds = max(1, x.shape[-1] // 500)
  windows = x[..., : seconds * 500].reshape(*x.shape[:2], seconds, -1)
  amplitude = (windows.amax(-1) - windows.amin(-1)).median(-1).values
  extreme = (x == x.amax(-1, keepdim=True)) | (x == x.amin(-1, keepdim=True))
  extreme = extreme | (x.abs() >= INT16_LIMIT_MV - 5e-4)
  starts = (
    extreme.to(torch.float32).unfold(-1, CLIP_RUN, 1).amin(-1)
  )  # (B, 12, T - run + 1): a run starts
  covered = F.max_pool1d(F.pad(starts, (CLIP_RUN - 1, CLIP_RUN - 1)), CLIP_RUN, stride=1)
  clipped = (covered.sum(-1) >= CLIP_TOTAL) & ~flat
  out = []
  for b in range(x.shape[0]):
    found = {
      "present": [lead for lead, f in zip(leads, flat[b].tolist()) if not f],
      "flat": [lead for lead, f in zip(leads, flat[b].tolist()) if f],
      "clipped": [lead for lead, c in zip(leads, clipped[b].tolist()) if c],
      "noisy": {
        lead: float(sd)
        for lead, sd, f in zip(leads, noise[b].tolist(), flat[b].tolist())
        if sd > NOISY_MV and not f
      },
      "implausible": {
        lead: float(a) for lead, a in zip(leads, amplitude[b].tolist()) if a > LARGE_MV
      },
    }
    warnings = []
    if found["flat"]:
      warnings.append(f"flat lead(s) {', '.join(found['flat'])}")
    if found["clipped"]:
      warnings.append(f"clipped lead(s) {', '.join(found['clipped'])}")
    if found["noisy"]:
      warnings.append(
        "noisy lead(s) " + ", ".join(f"{k} ({v * 1000:.0f} uV)" for k, v in found["noisy"].items())
      )
    if found["implausible"]:
      warnings.append(
        "implausible amplitude in lead(s) "
        + ", ".join(f"{k} ({v:.1f} mV)" for k, v in found["implausible"].items())
        + "; check the units (mV)"
      )
    out.append(dict(found, warnings=warnings))
  return out


def load(folder: str, label_set: str | None = None) -> ECGEncoder:
  """Loads an export folder into an ECGEncoder in eval mode (BatchNorm uses running statistics); label_set:
  the name of one of its label_sets/ (default: the labels of labels.json)."""
  with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  stem = os.path.join("label_sets", label_set) if label_set else None
  names = (
    (stem + ".json", stem + ".safetensors")
    if stem
    else ("labels.json", "label_embeddings.safetensors")
  )
  if stem and not os.path.isfile(os.path.join(folder, names[0])):
    found = (
      sorted(f[:-5] for f in os.listdir(os.path.join(folder, "label_sets")) if f.endswith(".json"))
      if os.path.isdir(os.path.join(folder, "label_sets"))
      else []
    )
    raise FileNotFoundError(f"{folder}: no label set {label_set!r} in label_sets/ (it has {found})")
  with open(os.path.join(folder, names[0]), encoding="utf-8") as f:
    labels = json.load(f)
  model = ECGEncoder(config, labels)
  model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
  label_emb = load_file(os.path.join(folder, names[1]))["label_embeddings"]
  if label_emb.shape != model.label_embeddings.shape:
    raise ValueError(
      f"{names[1]} has shape {tuple(label_emb.shape)}; {names[0]} and "
      f"config.json expect {tuple(model.label_embeddings.shape)}"
    )
  model.label_embeddings.copy_(label_emb)
  if os.path.isfile(os.path.join(folder, "ood.json")) and os.path.isfile(
    os.path.join(folder, "ood.safetensors")
  ):
    with open(os.path.join(folder, "ood.json"), encoding="utf-8") as f:
      meta = json.load(f)
    tensors = load_file(os.path.join(folder, "ood.safetensors"))
    if tuple(tensors["mean"].shape) != (8 * config["architecture"]["width"],):
      raise ValueError(
        f"ood.safetensors holds a feature mean of shape {tuple(tensors['mean'].shape)}; this model's pooled "
        f"features have {8 * config['architecture']['width']}: export the folder again"
      )
    model.ood_reference = dict(tensors, meta=meta)
  return model.eval()
