"""Checkpoints of a training workdir (orbax) and what inference needs from them.

Workdir layout written by training:
  config.json                    the run's ml_collections config (model kwargs under "model")
  labels.json                    zero-shot label set: [{"ja", "en", "group_ja", "group_en"}, ...]
  label_text_embeddings.npy      float32 (num_labels, text_dim): frozen-text-tower prompt embeddings
  checkpoints/<step>/            orbax CheckpointManager: item "state" = {step, params, batch_stats,
                                 opt_state}, item "data" = the input iterator state (JSON)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ecg_contrastive.models.two_tower import TwoTower


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_state)), force=True)
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores (state with the shardings of `abstract_state`, data iterator state)."""
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                      data=ocp.args.JsonRestore()))
  return out["state"], out["data"]


@dataclasses.dataclass
class Inference:
  """A trained model ready for embedding ECGs and zero-shot scoring (host arrays)."""
  model: TwoTower
  variables: dict            # {"params": ..., "batch_stats": ...} as numpy arrays
  config: ml_collections.ConfigDict
  step: int
  labels: list[dict]         # [{"ja", "en", "group_ja", "group_en"}]
  label_text_embeddings: np.ndarray  # float32 (num_labels, text_dim)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training workdir "
                            "(run `python -m ecg_contrastive.main --workdir ...` first)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_inference(workdir: str, step: int | None = None) -> Inference:
  """Loads params + BatchNorm statistics of `step` (default: latest) from a training workdir."""
  config = read_config(workdir)
  manager = make_manager(workdir)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}: train first, or pass the "
                            "workdir of a run that saved one")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise ValueError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; available: {sorted(steps)}")
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  variables = {k: _to_numpy(v) for k, v in variables.items()}
  with open(os.path.join(workdir, "labels.json"), encoding="utf-8") as f:
    labels = json.load(f)
  label_emb = np.load(os.path.join(workdir, "label_text_embeddings.npy"))
  return Inference(TwoTower(**config.model.to_dict()), variables, config, int(step), labels, label_emb)


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
