"""A tiny trained-looking workdir (the layout of ecg_contrastive.checkpoints) for export tests."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ecg_contrastive import checkpoints
from ecg_contrastive.models.two_tower import from_config
from ecg_contrastive.vocab import terms

TINY_MODEL = {
  "depth": 18,
  "width": 8,
  "downsample": 5,
  "embed_dim": 32,
}  # config.model: the architecture
TINY_TRAIN = {
  "temperature": 0.07,
  "dtype": "float32",
}  # config.train: TwoTower settings of training only
TEXT_DIM = 16


def _random_like(tree: dict, rng: np.random.Generator) -> dict:
  """Random values for every variable of an abstract tree (numpy: far faster than an eager init).

  Kernels are He-normal over fan-in (all but the last axis); BatchNorm scales and variances are
  uniform in [0.5, 1.5]; biases and means N(0, 0.1): a swapped or dropped tensor changes the output.
  """
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out[key] = _random_like(value, rng)
    elif key == "kernel":
      out[key] = rng.normal(0.0, np.sqrt(2.0 / np.prod(value.shape[:-1])), value.shape).astype(
        np.float32
      )
    elif key in ("scale", "var"):
      out[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    elif key in ("bias", "mean"):
      out[key] = rng.normal(0.0, 0.1, value.shape).astype(np.float32)
    elif key == "logit_bias":  # the sigmoid loss's bias
      out[key] = np.asarray(-10.0, np.float32)
    else:
      raise ValueError(f"no random rule for variable {key!r}")
  return out


def logit_scale_at(step: int) -> np.ndarray:
  return np.asarray(2.5 + 0.01 * step, np.float32)


def make_workdir(
  workdir: str,
  model: dict | None = None,
  steps: tuple[int, ...] = (3,),
  seed: int = 0,
  params_hook=None,
  train: dict | None = None,
  legacy: bool = False,
) -> str:
  """Writes config.json, labels.json, label_text_embeddings.npy and checkpoints at `steps`.

  model, train: config.model and config.train (default TINY_MODEL, TINY_TRAIN); legacy: write them as a config.json
  from before the split did, all in one "model" dict. Variables are random (see _random_like); logit_scale
  differs per step (logit_scale_at) so that tests can tell which step was exported.
  params_hook: optional f(params dict) -> params dict applied before saving (to corrupt the tree).
  """
  model, train = (
    dict(TINY_MODEL if model is None else model),
    dict(TINY_TRAIN if train is None else train),
  )
  config = {"model": dict(model, **train)} if legacy else {"model": model, "train": train}
  rng = np.random.default_rng(seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  labels = [dataclasses.asdict(t) for t in terms.load_terms()]
  with open(os.path.join(workdir, "labels.json"), "w", encoding="utf-8") as f:
    json.dump(labels, f, ensure_ascii=False)
  np.save(
    os.path.join(workdir, "label_text_embeddings.npy"),
    rng.normal(size=(len(labels), TEXT_DIM)).astype(np.float32),
  )
  shapes = jax.eval_shape(
    from_config(config).init, jax.random.key(0), jnp.zeros((1, 5000, 12)), jnp.zeros((1, TEXT_DIM))
  )
  shapes["params"].pop("logit_scale")
  variables = _random_like(shapes, rng)
  params = variables["params"] if params_hook is None else params_hook(variables["params"])
  manager = checkpoints.make_manager(workdir)
  for step in steps:
    step_params = dict(params, logit_scale=logit_scale_at(step))
    checkpoints.save(
      manager,
      step,
      {
        "step": step,
        "params": step_params,
        "batch_stats": variables["batch_stats"],
        "opt_state": {},
      },
      data_state={},
    )
  return workdir
