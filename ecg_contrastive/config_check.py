"""Checks a config before any work starts; each error says what to change."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from ecg_contrastive.data import pipeline
from ecg_contrastive.data.placement import PLACEMENTS
from ecg_contrastive.ecg import augment, signal
from ecg_contrastive.errors import UserError
from ecg_contrastive.models.batch_norm import BACKWARDS
from ecg_contrastive.models.bert import POOLINGS
from ecg_contrastive.models.fused_conv import IMPLS
from ecg_contrastive.models.resnet1d import stage_sizes
from ecg_contrastive.models.two_tower import split_config

LOSSES = ("softmax", "sigmoid")
# config.eval.best_metric: metrics of the first eval split that can pick the best checkpoint (higher is better)
BEST_METRICS = (
  "top1",
  "top5",
  "superset_top1",
  "macro_auroc",
  "ecg_to_report_r@1",
  "report_to_ecg_r@1",
)
DTYPES = ("float32", "bfloat16")
SPLITS = (
  "train",
  "validation",
  "test",
)  # every dataset's splits (builders/local_source.SPLITS, synthetic_ecg_ja)


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key and what to change."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """config.<key> must be of `kind` (int, float: finite, int accepted; str) and satisfy `ok`; else: use `use`."""

  key: str
  kind: type
  ok: Callable[[Any], bool]
  use: str


def _choice(options: tuple) -> Callable[[Any], bool]:
  return lambda v: v in options


RULES = (
  Rule("seed", int, lambda v: True, "an integer, e.g. 0"),
  Rule(
    "batch_size",
    int,
    lambda v: v > 0,
    "a positive integer (ECGs per step over all devices), e.g. 256",
  ),
  Rule("eval_batch_size", int, lambda v: v > 0, "a positive integer, e.g. 512"),
  Rule("microbatches", int, lambda v: v >= 1, "a positive integer (1: no gradient caching)"),
  Rule("num_steps", int, lambda v: v >= 0, "an integer >= 0 (0: train num_epochs epochs)"),
  Rule("num_epochs", int, lambda v: v >= 0, "an integer >= 0 (ignored when num_steps > 0)"),
  Rule("prefetch", int, lambda v: v >= 1, "an integer >= 1 (batches read ahead), e.g. 2"),
  Rule("log_every", int, lambda v: v >= 1, "an integer >= 1 (steps between metric lines), e.g. 20"),
  Rule("eval_every", int, lambda v: v >= 0, "an integer >= 0 (0: evaluate at the end only)"),
  Rule(
    "checkpoint_every",
    int,
    lambda v: v >= 1,
    "an integer >= 1 (steps between checkpoints), e.g. 500",
  ),
  Rule(
    "keep_checkpoints",
    int,
    lambda v: v >= 1,
    "an integer >= 1 (checkpoints kept; 0 would delete them all)",
  ),
  Rule(
    "optimizer.lr",
    float,
    lambda v: v > 0,
    "a number > 0, e.g. 1e-3 (a negative rate trains uphill)",
  ),
  Rule("optimizer.b1", float, lambda v: 0 <= v < 1, "a number in [0, 1), e.g. 0.9"),
  Rule("optimizer.b2", float, lambda v: 0 <= v < 1, "a number in [0, 1), e.g. 0.999"),
  Rule("optimizer.weight_decay", float, lambda v: v >= 0, "a number >= 0, e.g. 1e-4"),
  Rule("optimizer.warmup_steps", int, lambda v: v >= 0, "an integer >= 0, e.g. 100"),
  Rule(
    "optimizer.final_lr_fraction", float, lambda v: 0 <= v <= 1, "a number in [0, 1], e.g. 0.01"
  ),
  Rule("optimizer.grad_clip_norm", float, lambda v: v >= 0, "a number >= 0 (0: no clipping)"),
  Rule("model.width", int, lambda v: v > 0, "a positive integer, e.g. 64"),
  Rule("model.embed_dim", int, lambda v: v > 0, "a positive integer, e.g. 256"),
  Rule("model.downsample", int, lambda v: v >= 1, "an integer >= 1 (1: the full 500 Hz input)"),
  Rule("train.temperature", float, lambda v: 0 < v < 1, "a number in (0, 1), the paper uses 0.07"),
  Rule("train.dtype", str, _choice(DTYPES), f"one of {DTYPES}"),
  Rule("loss.name", str, _choice(LOSSES), f"one of {LOSSES}"),
  Rule(
    "loss.tile",
    int,
    lambda v: v >= 0,
    "an integer >= 0 (0: dense loss; T: (T, T) logit tiles, any T), e.g. 4096",
  ),
  Rule("text.pooling", str, _choice(POOLINGS), f"one of {POOLINGS}"),
  Rule("text.dtype", str, _choice(DTYPES), f"one of {DTYPES}"),
  Rule(
    "text.template",
    str,
    lambda v: v == "" or v.count("{}") == 1,
    "'' or a prompt containing '{}' once (the report goes there)",
  ),
  Rule(
    "text.layer", int, lambda v: True, "an integer: transformers' hidden_states index, -1 the last"
  ),
  Rule(
    "text.max_length",
    int,
    lambda v: v > 2,
    "an integer > 2 (tokens per report, special tokens included), e.g. 128",
  ),
  Rule(
    "text.batch_size",
    int,
    lambda v: v > 0,
    "a positive integer (texts per embedding batch), e.g. 256",
  ),
  Rule("train_split", str, _choice(SPLITS), f"one of {SPLITS}"),
  Rule("eval.label_set", str, lambda v: True, "a built-in label set name or a TSV file path"),
  Rule(
    "eval.best_metric",
    str,
    _choice(("",) + BEST_METRICS),
    f"'' (keep no best checkpoint) or one of {BEST_METRICS}",
  ),
  Rule(
    "data.host_read",
    str,
    _choice(pipeline.HOST_READS),
    f"one of {pipeline.HOST_READS} ('stream': no full copy of the split on each host)",
  ),
  Rule(
    "data.reader_threads", int, lambda v: v >= 1, "an integer >= 1 (shard reader threads), e.g. 4"
  ),
  Rule(
    "data.host_cache",
    str,
    _choice(pipeline.HOST_CACHES),
    f"one of {pipeline.HOST_CACHES} ('share' only with data.host_read='stream')",
  ),
  Rule(
    "data.placement",
    str,
    _choice(PLACEMENTS),
    f"one of {PLACEMENTS} ('auto': on the devices when the split fits in data.device_memory_share)",
  ),
  Rule(
    "data.device_memory_share",
    float,
    lambda v: 0 < v <= 1,
    "a number in (0, 1] (the share of each device's memory the split may take), e.g. 0.3",
  ),
  Rule(
    "data.device_memory_bytes",
    float,
    lambda v: v >= 0 and v == int(v),
    "a whole number of bytes >= 0 per device (0: as the backend reports; none on CPU), e.g. 16e9",
  ),
  Rule(
    "data.expected_ecg_per_s",
    float,
    lambda v: v >= 0,
    "a number >= 0 (global ECG/s the log plans input bandwidth for; 0: measured), e.g. 24000",
  ),
)

# Keys that were settings once and are fixed now: key -> (the one value an older config may still hold, why).
# A config.json of an older run keeps working (that value is ignored); any other value is an error saying so.
RETIRED = {
  "ecg_length": (
    signal.NUM_SAMPLES,
    (
      f"every dataset stores {signal.DURATION_S} s at {signal.SAMPLE_RATE} Hz; "
      "to compute at a lower rate set config.model.downsample"
    ),
  ),
  "ecg_leads": (signal.NUM_LEADS, "every dataset stores the 12 standard leads"),
}


def retired_key_message(key: str) -> str | None:
  """For a key of RETIRED: what it was and why it is gone (for an 'unknown key' message); else None."""
  if key not in RETIRED:
    return None
  return (
    f"config.{key} is no longer a setting: the ECG input is fixed at {signal.NUM_SAMPLES} x "
    f"{signal.NUM_LEADS} (samples x leads) by ecg_contrastive/ecg/signal.py; {RETIRED[key][1]}"
  )


# Keys the trainer reads that a config file written before they existed may lack. Their defaults have one home,
# configs/default.py; a config without one is reported (what to set), never filled in here with a second default.
REQUIRED = (
  "microbatches",
  "data.host_read",
  "data.reader_threads",
  "data.host_cache",
  "data.placement",
  "data.device_memory_share",
  "data.device_memory_bytes",
  "data.expected_ecg_per_s",
  "text.template",
  "text.layer",
)

_KIND = {int: "an integer", float: "a number", str: "a string"}
_MISSING = object()


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node: Any = config
  for part in key.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


def _kind_ok(value: Any, kind: type) -> bool:
  if isinstance(value, bool):
    return False  # True is an int to Python, not to a config
  if kind is float:
    return isinstance(value, (int, float))
  return isinstance(value, kind)


def check_values(config: ml_collections.ConfigDict) -> None:
  """ConfigError for the first value of RULES of the wrong type, NaN/inf or out of range, and for bad eval_splits.
  Keys a config does not have are skipped (an older config.json); a RETIRED key is accepted only at its fixed value."""
  for key, (fixed, _) in RETIRED.items():
    value = _get(config, key)
    if value is not _MISSING and (isinstance(value, bool) or value != fixed):
      raise ConfigError(
        f"config.{key}={value!r}: {retired_key_message(key)}; use no {key} key (an older "
        f"config's {key}={fixed} is ignored)"
      )
  for rule in RULES:
    value = _get(config, rule.key)
    if value is _MISSING:
      continue
    if not _kind_ok(value, rule.kind):
      raise ConfigError(
        f"config.{rule.key}={value!r}: {type(value).__name__}, not {_KIND[rule.kind]}; "
        f"use {rule.use}"
      )
    if rule.kind is float and not math.isfinite(value):
      raise ConfigError(f"config.{rule.key}={value!r}: not a finite number; use {rule.use}")
    if not rule.ok(value):
      raise ConfigError(f"config.{rule.key}={value!r}: out of range; use {rule.use}")
  if _get(config, "data.host_cache") == "share" and _get(config, "data.host_read") != "stream":
    raise ConfigError(
      "config.data.host_cache='share' keeps streamed records; with "
      f"config.data.host_read={_get(config, 'data.host_read')!r} the whole split is cached already: "
      "set --config.data.host_read=stream or --config.data.host_cache=none"
    )
  splits = _get(config, "eval_splits")
  if splits is not _MISSING:
    if isinstance(splits, str) or not isinstance(splits, (tuple, list)) or not splits:
      raise ConfigError(
        f"config.eval_splits={splits!r}: use a non-empty tuple of split names from {SPLITS}, "
        "e.g. --config.eval_splits=\"('validation', 'test')\""
      )
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
      raise ConfigError(
        f"config.eval_splits={tuple(splits)!r}: unknown split(s) {unknown}; use names from {SPLITS}"
      )


def check_config(config: ml_collections.ConfigDict) -> None:
  _check_required(config)
  check_values(config)
  check_augment(config)
  dataset = config.dataset.split("/")[0]
  known = pipeline.known_datasets()
  if dataset not in known:
    raise ConfigError(
      f"config.dataset={config.dataset!r}: unknown dataset {dataset!r}; known: {sorted(known)}"
    )
  variant = config.dataset.partition("/")[2]
  variants = [c.name for c in getattr(known[dataset], "BUILDER_CONFIGS", None) or []]
  if variant and variants and variant not in variants:
    raise ConfigError(
      f"config.dataset={config.dataset!r}: {dataset} has no variant {variant!r}; use one of "
      f"{', '.join(f'{dataset}/{v}' for v in variants)}"
    )
  if pipeline.needs_source(dataset):
    _check_source_dir(config)
  m, training = config.model, split_config(config)[1]
  try:
    stage_sizes(m.depth)
  except ValueError as e:
    raise ConfigError(f"config.model.depth={m.depth}: {e}") from e
  if not isinstance(m.get("lead_mask", False), bool):
    raise ConfigError(
      f"config.model.lead_mask={m.get('lead_mask')!r}: use True (the tower also sees which leads are all "
      "zero; pair it with config.augment.lead_dropout) or False"
    )
  if training.get("bn_backward", "lean") not in BACKWARDS:
    raise ConfigError(
      f"config.train.bn_backward={training['bn_backward']!r}: use one of {BACKWARDS} (the same math; "
      "'lean' keeps less for the backward pass)"
    )
  if (conv_impl := dict(config.get("train") or {}).get("conv_impl", "xla")) not in IMPLS:
    raise ConfigError(
      f"config.train.conv_impl={conv_impl!r}: use one of {IMPLS} (the same math; the fused ones, "
      "models/fused_conv.py, make fewer passes over the activations on a GPU)"
    )
  if (config.loss.name == "sigmoid") != (training.get("logit_bias") is not None):
    raise ConfigError(
      f"config.loss.name={config.loss.name!r} with config.train.logit_bias={training.get('logit_bias')}: "
      "the sigmoid loss needs a learnable bias (set --config.train.logit_bias=-10.0, SigLIP's "
      "initialisation) and the softmax loss has none (leave it None)"
    )
  if not (config.num_steps or config.num_epochs):
    raise ConfigError("set config.num_steps or config.num_epochs (both are 0)")
  _check_batch_sizes(config)
  if config.text.model_dir:
    from ecg_contrastive.models.safetensors_io import INDEX, SINGLE, checkpoint_files

    missing = [
      f for f in ("config.json",) if not os.path.exists(os.path.join(config.text.model_dir, f))
    ] + ([] if checkpoint_files(config.text.model_dir) else [f"{SINGLE} (or {INDEX})"])
    if not os.path.isdir(config.text.model_dir) or missing:
      raise ConfigError(
        f"config.text.model_dir={config.text.model_dir!r}: "
        + (
          "no such directory" if not os.path.isdir(config.text.model_dir) else f"missing {missing}"
        )
        + "; point it at a local Hugging Face BERT/RoBERTa or Llama-family directory (config.json, "
        "model.safetensors or its shards, tokenizer files), or leave it empty to use the built-in stand-in"
      )
  _check_ood(config)
  _check_text_length(config)
  if not config.text.templates or any("{}" not in t for t in config.text.templates):
    raise ConfigError(
      f"config.text.templates={tuple(config.text.templates)}: each template needs a '{{}}' "
      "placeholder for the label"
    )


# config.augment.<name>.<parameter>: (ok, use), checked in this order (ecg/augment.py says what each one does)
_AUGMENT_RULES = {
  "p": (lambda v: 0 <= v <= 1, "a probability in [0, 1] (0: off)"),
  "max_s": (lambda v: 0 <= v <= 2, "seconds in [0, 2], e.g. 0.5"),
  "low": (lambda v: v > 0, "a factor > 0 and <= high, e.g. 0.7"),
  "high": (lambda v: v > 0, "a factor > 0 and >= low, e.g. 1.4"),
  "mv": (lambda v: 0 <= v <= 5, "millivolts in [0, 5], e.g. 0.05"),
  "max_hz": (
    lambda v: augment.WANDER_MIN_HZ < v <= 5,
    f"a frequency in ({augment.WANDER_MIN_HZ:g}, 5] Hz (baseline wander), e.g. 0.5",
  ),
  "components": (lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1, e.g. 3"),
  "lead_p": (lambda v: 0 <= v < 1, "a probability in [0, 1) (each lead's chance to be zeroed)"),
}


def check_augment(config: ml_collections.ConfigDict) -> None:
  """config.augment: every augmentation of ecg/augment.py with its parameters, numbers in range; a missing section
  is reported (configs/default.py has it, all off), an unknown augmentation or parameter named."""
  section = _get(config, "augment")
  if section is _MISSING:
    raise ConfigError(
      "config.augment is missing: set it in the config file (configs/default.py has every augmentation, "
      "all off with p=0.0)"
    )
  unknown = sorted(set(section) - set(augment.PARAMETERS))
  if unknown:
    raise ConfigError(
      f"config.augment.{unknown[0]}: unknown augmentation; use one of {', '.join(augment.PARAMETERS)}"
    )
  for name, parameters in augment.PARAMETERS.items():
    given = section.get(name)
    if given is None:
      raise ConfigError(
        f"config.augment.{name} is missing: set it as in configs/default.py "
        f"(parameters {', '.join(parameters)}; p=0.0 is off)"
      )
    extra = sorted(set(given) - set(parameters))
    if extra:
      raise ConfigError(
        f"config.augment.{name}.{extra[0]}: unknown parameter; {name} has {', '.join(parameters)}"
      )
    for parameter in parameters:
      key, (ok, use) = f"augment.{name}.{parameter}", _AUGMENT_RULES[parameter]
      value = given.get(parameter, _MISSING)
      if value is _MISSING:
        raise ConfigError(f"config.{key} is missing: set it, {use}")
      if not _kind_ok(value, float) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"config.{key}={value!r}: use {use}")
    if "low" in parameters and given["low"] > given["high"]:
      raise ConfigError(
        f"config.augment.{name}.low={given['low']!r} > high={given['high']!r}: set low <= high"
      )


def _check_ood(config: ml_collections.ConfigDict) -> None:
  """config.ood (optional: export/ood.py's defaults without it): sizes, percentile, calibration split."""
  section = _get(config, "ood")
  if section is _MISSING:
    return
  known = {"bank_size", "calibration_size", "percentile", "split"}
  unknown = sorted(set(section) - known)
  if unknown:
    raise ConfigError(
      f"config.ood.{unknown[0]}: unknown key; config.ood has {', '.join(sorted(known))}"
    )
  for key in ("bank_size", "calibration_size"):
    value = section.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(
        f"config.ood.{key}={value!r}: give a whole number of records >= 0, e.g. 4096 (bank_size 0: no OOD "
        "reference)"
      )
  pct = section.get("percentile", 99.0)
  if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct < 100:
    raise ConfigError(f"config.ood.percentile={pct!r}: give a percentile in [0, 100), e.g. 99.0")
  if section.get("bank_size", 1) and section.get("calibration_size", 1) == 0:
    raise ConfigError(
      "config.ood.calibration_size=0 with bank_size > 0: the percentiles need validation records; "
      "give e.g. 4096, or bank_size=0 for no OOD reference"
    )
  if not isinstance(section.get("split", "validation"), str) or not section.get(
    "split", "validation"
  ):
    raise ConfigError(f"config.ood.split={section.get('split')!r}: name a split, e.g. 'validation'")


def _check_text_length(config: ml_collections.ConfigDict) -> None:
  """config.text.max_length fits the text model's position embeddings (config.json, or the stand-in's); the
  pooling and layer suit its family."""
  from ecg_contrastive.models.bert import BertConfig
  from ecg_contrastive.text import model as text_model
  from ecg_contrastive.text import standin

  if config.text.model_dir:
    model, source = text_model.read_config(config.text.model_dir), repr(config.text.model_dir)
  else:
    model = BertConfig.from_hf(standin._config(1, hidden_size=1, num_layers=1, num_heads=1, seed=0))
    source = "the stand-in text model"
  positions = text_model.max_tokens(model)
  if config.text.max_length > positions:
    raise ConfigError(
      f"config.text.max_length={config.text.max_length}: {source} has {positions} "
      f"positions; use at most {positions}"
    )
  try:
    text_model.check_options(model, config.text.pooling, config.text.layer)
  except ValueError as e:
    raise ConfigError(f"config.text.pooling / config.text.layer: {e}") from None


def _check_required(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first key of REQUIRED the config lacks and what to set it to."""
  use = {rule.key: rule.use for rule in RULES}
  for key in REQUIRED:
    if _get(config, key) is _MISSING:
      raise ConfigError(
        f"config.{key} is missing: set it in the config file (--config.{key} works only for keys "
        f"the file has): {use[key]}; configs/default.py has every key with its default"
      )


def _check_batch_sizes(config: ml_collections.ConfigDict) -> None:
  """batch_size (with microbatches) and eval_batch_size split evenly over this run's devices and processes (the
  split train.py makes), checked before any data or model work."""
  from ecg_contrastive.sharding import batch_sizes, make_mesh

  mesh = make_mesh()
  for key, microbatches in (("batch_size", config.microbatches), ("eval_batch_size", 1)):
    try:
      batch_sizes(config[key], mesh, microbatches)
    except ValueError as e:
      raise ConfigError(f"config.{key}={config[key]}: {e}") from e


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
    raise ConfigError(
      f"config.dataset={config.dataset!r}, config.source_dir={config.get('source_dir')!r}: {e}"
    ) from e
