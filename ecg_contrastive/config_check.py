"""Checks a config before any work starts; each error says what to change."""

from __future__ import annotations

import os

import ml_collections

from ecg_contrastive.data import pipeline
from ecg_contrastive.models.batch_norm import BACKWARDS
from ecg_contrastive.models.resnet1d import STAGE_SIZES

LOSSES = ("softmax", "sigmoid")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what to change."""


def check_config(config: ml_collections.ConfigDict) -> None:
  dataset = config.dataset.split("/")[0]
  known = pipeline.known_datasets()
  if dataset not in known:
    raise ConfigError(f"config.dataset={config.dataset!r}: unknown dataset {dataset!r}; known: {sorted(known)}")
  if pipeline.needs_source(dataset):
    _check_source_dir(config)
  m = config.model
  if m.depth not in STAGE_SIZES:
    raise ConfigError(f"config.model.depth={m.depth}: unknown model ResNet1d-{m.depth}; use one of {sorted(STAGE_SIZES)}")
  if m.width <= 0 or m.embed_dim <= 0 or m.downsample < 1:
    raise ConfigError(f"config.model: width ({m.width}), embed_dim ({m.embed_dim}) must be > 0 and "
                      f"downsample ({m.downsample}) >= 1")
  if m.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={m.dtype!r}: use one of {DTYPES}")
  if m.get("bn_backward", "lean") not in BACKWARDS:
    raise ConfigError(f"config.model.bn_backward={m.bn_backward!r}: use one of {BACKWARDS} (the same math; "
                      "'lean' keeps less for the backward pass)")
  if not 0 < m.temperature < 1:
    raise ConfigError(f"config.model.temperature={m.temperature}: must be in (0, 1), the paper uses 0.07")
  if config.loss.name not in LOSSES:
    raise ConfigError(f"config.loss.name={config.loss.name!r}: unknown loss; use one of {LOSSES}")
  if (config.loss.name == "sigmoid") != (m.get("logit_bias") is not None):
    raise ConfigError(f"config.loss.name={config.loss.name!r} with config.model.logit_bias={m.get('logit_bias')}: "
                      "the sigmoid loss needs a learnable bias (set --config.model.logit_bias=-10.0, SigLIP's "
                      "initialisation) and the softmax loss has none (leave it None)")
  microbatches = config.get("microbatches", 1)
  if not isinstance(microbatches, int) or microbatches < 1:
    raise ConfigError(f"config.microbatches={microbatches!r}: use a positive integer (1: no gradient caching)")
  if config.batch_size <= 0 or config.eval_batch_size <= 0:
    raise ConfigError(f"config.batch_size ({config.batch_size}) and eval_batch_size ({config.eval_batch_size}) must be > 0")
  if not (config.num_steps or config.num_epochs):
    raise ConfigError("set config.num_steps or config.num_epochs (both are 0)")
  if config.text.model_dir:
    missing = [f for f in ("config.json", "model.safetensors") if not os.path.exists(os.path.join(config.text.model_dir, f))]
    if not os.path.isdir(config.text.model_dir) or missing:
      raise ConfigError(f"config.text.model_dir={config.text.model_dir!r}: "
                        + ("no such directory" if not os.path.isdir(config.text.model_dir) else f"missing {missing}")
                        + "; point it at a local Hugging Face BERT/RoBERTa directory (config.json, model.safetensors, "
                        "tokenizer files), or leave it empty to use the built-in stand-in")
  if not config.text.templates or any("{}" not in t for t in config.text.templates):
    raise ConfigError(f"config.text.templates={tuple(config.text.templates)}: each template needs a '{{}}' "
                      "placeholder for the label")


def _check_source_dir(config: ml_collections.ConfigDict) -> None:
  """A real-data dataset that is not prepared yet needs config.source_dir with the files it reads: the check
  open_source makes before building, made here before any work."""
  import tensorflow_datasets as tfds

  from ecg_contrastive.data.builders.local_source import SourceError

  builder = tfds.builder(config.dataset, data_dir=config.data_dir or pipeline.data_dir_default())
  if builder.is_prepared():
    return  # built before: the raw folder is not read again
  try:
    pipeline.source_download_config(builder, config.get("source_dir") or None)
  except SourceError as e:
    raise ConfigError(f"config.dataset={config.dataset!r}, config.source_dir={config.get('source_dir')!r}: {e}") from e
