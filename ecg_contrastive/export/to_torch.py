"""Export a training workdir's checkpoint to a standalone PyTorch folder, and prove parity.

  python -m ecg_contrastive.export.to_torch --workdir DIR [--step N] --out DIR [--no-verify]

Writes model.safetensors, label_embeddings.safetensors, labels.json, config.json and a verbatim
copy of modeling_ecg.py (see its docstring), plus the workdir's OOD reference (ood.safetensors, ood.json: see
models/ood.py) when it belongs to the exported step (else the log says the export has none and how to make it).
Writing needs no PyTorch. Where torch is installed (or with
--verify), the written folder is loaded back (strict=True) and its embeddings and zero-shot scores on random
ECGs are compared with the Flax model's; more than 1e-5 relative error fails the export. The measured errors
go into config.json ("verified_parity": null when not verified, and the log says so).

The name/layout map (`layout_map`) is the single place where Flax names meet PyTorch names:
  Flax params/<path>/kernel      Conv  (width, in, out) -> <path>.weight (out, in, width)
  Flax params/<path>/kernel      Dense (in, out)        -> <path>.weight (out, in)
  Flax params/<path>/bias        Dense                  -> <path>.bias
  Flax params/<path>/scale, bias BatchNorm              -> <path>.weight, <path>.bias
  Flax batch_stats/<path>/mean, var                     -> <path>.running_mean, <path>.running_var
  (no Flax counterpart)                                 -> <path>.num_batches_tracked = 0
  Flax params/logit_scale        ()                     -> logit_scale
where <path> is the Flax module path with '/' -> '.', e.g. ecg/stage2_block1/conv1 -> ecg.stage2_block1.conv1.
params/txt_head/* is not exported: it projects the label prompts into label_embeddings.safetensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from ecg_contrastive import checkpoints, paths
from ecg_contrastive.ecg import signal
from ecg_contrastive.errors import UserError
from ecg_contrastive.export import model_card
from ecg_contrastive.export import ood as ood_files
from ecg_contrastive.export.flax_scorer import FlaxScorer
from ecg_contrastive.models.resnet1d import stage_sizes
from ecg_contrastive.models.two_tower import (
  ARCHITECTURE_KEYS,
  MAX_LOGIT_SCALE,
  TwoTower,
  from_config,
  split_config,
)

MODELING_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modeling_ecg.py")
TEXT_HEAD = ("params/txt_head/kernel", "params/txt_head/bias")
NOT_EXPORTED = ("params/logit_bias",)  # the sigmoid loss's bias: a constant shift of every score
TOLERANCE = 1e-5
log = logging.getLogger("ecg_contrastive")
LAYOUTS = {
  "conv": lambda a: np.transpose(a, (2, 1, 0)),  # (width, in, out) -> (out, in, width)
  "dense": lambda a: a.T,  # (in, out) -> (out, in)
  "same": lambda a: a,
}


class ExportError(UserError, ValueError):
  """The workdir cannot be exported (no checkpoint, unknown architecture, failed parity)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  flax: str  # "params/ecg/stem_conv/kernel"
  torch: str  # "ecg.stem_conv.weight"
  layout: str  # key of LAYOUTS


def _conv(path: str) -> list[Entry]:
  return [Entry(f"params/{path}/kernel", f"{path.replace('/', '.')}.weight", "conv")]


def _dense(path: str) -> list[Entry]:
  name = path.replace("/", ".")
  return [
    Entry(f"params/{path}/kernel", f"{name}.weight", "dense"),
    Entry(f"params/{path}/bias", f"{name}.bias", "same"),
  ]


def _batch_norm(path: str) -> list[Entry]:
  name = path.replace("/", ".")
  return [
    Entry(f"params/{path}/scale", f"{name}.weight", "same"),
    Entry(f"params/{path}/bias", f"{name}.bias", "same"),
    Entry(f"batch_stats/{path}/mean", f"{name}.running_mean", "same"),
    Entry(f"batch_stats/{path}/var", f"{name}.running_var", "same"),
  ]


def layout_map(depth: int) -> list[Entry]:
  """Every exported tensor of a TwoTower with a ResNet1d-`depth` ECG tower, Flax -> PyTorch."""
  entries = _conv("ecg/stem_conv") + _batch_norm("ecg/stem_bn")
  for stage, num_blocks in enumerate(stage_sizes(depth)):
    for block in range(num_blocks):
      path = f"ecg/stage{stage + 1}_block{block + 1}"
      entries += (
        _conv(f"{path}/conv1")
        + _batch_norm(f"{path}/bn1")
        + _conv(f"{path}/conv2")
        + _batch_norm(f"{path}/bn2")
      )
      if stage > 0 and block == 0:  # stride 2 and a wider output: the 1x1 conv + BN shortcut
        entries += _conv(f"{path}/shortcut_conv") + _batch_norm(f"{path}/shortcut_bn")
  return entries + _dense("ecg_head") + [Entry("params/logit_scale", "logit_scale", "same")]


def architecture(config: Any) -> TwoTower:
  """The TwoTower of a workdir config (two_tower.from_config), checked to be an architecture this exporter knows:
  config.model is the architecture as is (an older config.json's training-only keys there: split_config)."""
  if "model" not in config:
    raise ExportError("cannot export: the workdir config has no 'model' section")
  unknown = sorted(set(split_config(config)[0]) - set(ARCHITECTURE_KEYS))
  if unknown:
    raise ExportError(
      f"cannot export: unknown model option(s) {unknown} in config.model; the exporter "
      f"knows the architecture ({', '.join(ARCHITECTURE_KEYS)})"
    )
  tower = from_config(config)
  try:
    stage_sizes(tower.depth)
  except ValueError as e:
    raise ExportError(f"cannot export: {e}") from e
  return tower


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


def to_state_dict(variables: dict, depth: int) -> dict[str, np.ndarray]:
  """Flax {"params", "batch_stats"} -> PyTorch state dict (numpy) of modeling_ecg.ECGEncoder."""
  flat = _flatten(variables)
  entries = layout_map(depth)
  expected = {e.flax for e in entries} | set(TEXT_HEAD)
  missing, unexpected = (
    sorted(expected - set(flat)),
    sorted(set(flat) - expected - set(NOT_EXPORTED)),
  )
  if missing or unexpected:
    raise ExportError(
      f"cannot export: the checkpoint is not a TwoTower with a ResNet1d-{depth} ECG tower; "
      f"unexpected variables: {unexpected or 'none'}; missing variables: {missing or 'none'}"
    )
  state = {
    e.torch: np.ascontiguousarray(LAYOUTS[e.layout](flat[e.flax]), np.float32) for e in entries
  }
  for e in entries:
    if e.torch.endswith(".running_mean"):
      state[e.torch.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
  return state


def architecture_section(arch: dict | TwoTower) -> dict:
  """config.json's "architecture" of a TwoTower (or its ARCHITECTURE_KEYS): what the exported modeling_ecg.py builds
  the network from (stage_sizes from models/resnet1d.py's table: the exported file has no table of its own)."""
  if isinstance(arch, TwoTower):
    arch = {key: getattr(arch, key) for key in ARCHITECTURE_KEYS}
  return {
    "name": "ResNet1d",
    "depth": arch["depth"],
    "width": arch["width"],
    "downsample": arch["downsample"],
    "embed_dim": arch["embed_dim"],
    "lead_mask": bool(arch.get("lead_mask", False)),
    "stage_sizes": list(stage_sizes(arch["depth"])),
    "batchnorm_eps": 1e-5,
    "l2_normalize_eps": 1e-6,
    "compute_dtype": "float32",
  }


def export_config(tower: TwoTower, num_labels: int, workdir: str, step: int) -> dict:
  """config.json of the export folder: architecture, input contract, zero-shot head, provenance."""
  return {
    "model_type": model_card.MODEL_TYPE,  # Hugging Face tooling reads config.json and expects one
    "format_version": 1,
    "architecture": architecture_section(tower),
    "input": {
      "shape": f"(B, {signal.NUM_LEADS}, {signal.NUM_SAMPLES})",
      "layout": "channels-first: (batch, lead, sample)",
      "dtype": "float32",
      "sampling_rate_hz": signal.SAMPLE_RATE,
      "num_samples": signal.NUM_SAMPLES,
      "duration_s": signal.DURATION_S,
      "lead_order": list(signal.LEADS),
      "units": "mV",
      "scaling": "raw millivolts, no filtering or per-record normalisation; training data is "
      "int16 microvolts, so mV = int16 / 1000",
    },
    "zero_shot": {
      "num_labels": num_labels,
      "labels": "labels.json",
      "embeddings": "label_embeddings.safetensors",
      "score": f"exp(min(logit_scale, {MAX_LOGIT_SCALE:.6f})) * cosine(ecg, label)",
    },
    "source": {
      "workdir": workdir if paths.is_remote(workdir) else os.path.abspath(workdir),
      "step": step,
      "training_compute_dtype": jnp.dtype(tower.dtype).name,
      "temperature": tower.temperature,
    },
  }


def load_exported(folder: str, label_set: str | None = None) -> Any:
  """Loads `folder` with its own modeling_ecg.py (not the package's): modeling_ecg.load(folder[, label_set])."""
  if not torch_available():
    raise ExportError(
      f"{folder} is a PyTorch folder and PyTorch is not installed: pip install torch (see README, "
      "'Installing'), or predict from the JAX checkpoint with --workdir"
    )
  spec = importlib.util.spec_from_file_location(
    "modeling_ecg", os.path.join(folder, "modeling_ecg.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.load(folder, label_set=label_set) if label_set else module.load(folder)


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
  """max |actual - reference| / max |reference| over the whole array."""
  return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


def measure_parity(scorer: FlaxScorer, folder: str, ecg_mv: np.ndarray) -> dict[str, float]:
  """Relative errors of the exported module vs Flax on float32 (B, 5000, 12) mV ECGs."""
  import torch  # only the verification needs torch

  module = load_exported(folder)
  with torch.no_grad():
    ecg = torch.from_numpy(np.ascontiguousarray(ecg_mv.transpose(0, 2, 1), np.float32))
    embeddings, scores = module(ecg).numpy(), module.scores(ecg).numpy()
  return {
    "embeddings": relative_error(embeddings, scorer.embed(ecg_mv)),
    "scores": relative_error(scores, scorer.scores(ecg_mv)),
  }


def torch_available() -> bool:
  """Whether PyTorch can be imported (writing an export needs no torch; verifying its parity does)."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def export(workdir: str, out: str, step: int | None = None, verify: bool | None = None) -> str:
  """Exports checkpoint `step` (default: latest) of `workdir` into folder `out`; returns `out`.

  verify: True checks parity with PyTorch (needs torch), False skips it, None checks it when torch is installed
  and otherwise says that it did not. The folder is written beside `out` and renamed into place only when
  complete (and verified): a failed export leaves no half-written folder and an earlier export intact.
  """
  if verify and not torch_available():
    raise ExportError(
      "cannot verify the export: PyTorch is not installed; pip install torch (see README, "
      "'Installing') or pass --no-verify"
    )
  try:
    run_config = checkpoints.read_config(workdir)
  except FileNotFoundError as e:
    raise ExportError(f"cannot export: {e}") from e
  tower = architecture(run_config)  # before restoring: an unknown architecture fails fast
  try:
    inference = checkpoints.restore_inference(workdir, step)
  except (FileNotFoundError, ValueError, checkpoints.CheckpointError) as e:
    raise ExportError(f"cannot export {workdir!r}: {e}") from e
  state = to_state_dict(inference.variables, tower.depth)
  scorer = FlaxScorer(inference)
  remote = paths.is_remote(out)
  if not remote:
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
  # Local: written beside `out`, renamed into place. Remote: written and verified here, then uploaded.
  partial = tempfile.mkdtemp(
    prefix=os.path.basename(out) + ".partial-", dir=None if remote else os.path.dirname(out)
  )
  try:
    save_file(
      state,
      os.path.join(partial, "model.safetensors"),
      metadata={"source_step": str(inference.step)},
    )
    save_file(
      {"label_embeddings": scorer.label_embeddings},
      os.path.join(partial, "label_embeddings.safetensors"),
    )
    with open(os.path.join(partial, "labels.json"), "w", encoding="utf-8") as f:
      json.dump(inference.labels, f, ensure_ascii=False, indent=1)
    shutil.copyfile(MODELING_FILE, os.path.join(partial, "modeling_ecg.py"))
    has_ood = _copy_ood_reference(workdir, partial, inference.step)
    config = export_config(tower, len(inference.labels), workdir, inference.step)
    config["ood"] = (  # modeling_ecg reads ood.json itself; this says whether the folder has one
      {"reference": "ood.json", "weights": "ood.safetensors"} if has_ood else None
    )
    _write_config(partial, config)  # modeling_ecg.load reads it
    if verify is None:
      verify = torch_available()
      if not verify:
        log.warning(
          "export to %s: parity with the Flax model NOT verified (PyTorch is not installed); to verify, "
          "pip install torch and rerun the export",
          out,
        )
    if verify:
      ecg = np.random.default_rng(0).normal(0.0, 0.5, (2, signal.NUM_SAMPLES, signal.NUM_LEADS))
      errors = measure_parity(scorer, partial, ecg.astype(np.float32))
      if max(errors.values()) > TOLERANCE:
        raise ExportError(
          f"export to {out!r} failed verification: relative errors {errors} exceed {TOLERANCE}"
        )
      config["verified_parity"] = {
        "inputs": "2 random ECGs, N(0, 0.5 mV)",
        "tolerance": TOLERANCE,
        "max_relative_error": errors,
      }
    else:
      config["verified_parity"] = None
    _write_config(partial, config)
    card = model_card.render(run_config, config, inference.labels, model_card.read_results(workdir))
    with open(os.path.join(partial, "README.md"), "w", encoding="utf-8") as f:
      f.write(card)
    if remote:
      _upload_folder(partial, out)
      shutil.rmtree(partial)
    else:
      _replace_folder(partial, out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  return out


def _copy_ood_reference(workdir: str, folder: str, step: int) -> bool:
  """Copies the workdir's OOD reference into the export folder if it is of `step`; else logs why not."""
  reference = ood_files.load(workdir)
  if reference is not None and reference.meta.get("step") == step:
    ood_files.save(folder, reference)
    return True
  how = (
    f"`python -m ecg_contrastive.main --mode ood --workdir {workdir} --step {step} --config CONFIG`, then "
    "export again"
  )
  if reference is None:
    log.warning(
      "export: %s has no OOD reference: the export gives no OOD score; to add one: %s", workdir, how
    )
  else:
    log.warning(
      "export: the OOD reference of %s is of step %s, not the exported step %d: the export gives no OOD score; "
      "to add one: %s",
      workdir,
      reference.meta.get("step"),
      step,
      how,
    )
  return False


def _upload_folder(local: str, out: str) -> None:
  """Copies the complete, verified folder to a remote `out` (each file one object; config.json last, so a
  folder with a config.json is complete)."""
  names = sorted(os.listdir(local), key=lambda name: name == "config.json")
  paths.makedirs(out)
  for name in names:
    with open(os.path.join(local, name), "rb") as f:
      paths.write_bytes(paths.join(out, name), f.read())


def _replace_folder(new: str, out: str) -> None:
  """Moves the complete folder `new` to `out`; an existing `out` is removed only once `new` is in place."""
  old = None
  if os.path.exists(out):
    old = out + f".old-{os.getpid()}"
    os.rename(out, old)
  os.rename(new, out)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def _write_config(out: str, config: dict) -> None:
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False, indent=1)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--workdir", required=True, help="training workdir (config.json + checkpoints/)"
  )
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--out", required=True, help="export folder to write")
  parser.add_argument(
    "--verify",
    dest="verify",
    action="store_true",
    default=None,
    help="require the PyTorch parity check (default: checked when torch is installed)",
  )
  parser.add_argument(
    "--no-verify", dest="verify", action="store_false", help="skip the PyTorch parity check"
  )
  args = parser.parse_args(argv)
  try:
    out = export(args.workdir, args.out, args.step, verify=args.verify)
  except ExportError as e:
    sys.exit(f"error: {e}")
  print(f"exported {args.workdir} -> {out}")


if __name__ == "__main__":
  main()
