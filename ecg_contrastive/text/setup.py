"""Text setup of a run: the text model directory (configured, or the stand-in written on first use) and the
frozen text embeddings of every report and label prompt (config.text)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

import jax
import ml_collections

from ecg_contrastive import paths
from ecg_contrastive.text import cache as text_cache
from ecg_contrastive.text import precompute, standin
from ecg_contrastive.vocab import terms

log = logging.getLogger("ecg_contrastive")


def text_model_dir(config: ml_collections.ConfigDict) -> str:
  """The configured text model directory, or the stand-in (written on first use)."""
  if config.text.model_dir:
    return config.text.model_dir
  root = config.text.cache_dir or text_cache.default_cache_dir()
  if paths.is_remote(root):  # the text tower loads from local files
    local = paths.local_dir("text_models", root)
    log.info(
      "text cache %s is remote: the stand-in text model goes to the local folder %s", root, local
    )
    root = local
  kw = (
    config.text.standin.to_dict()
  )  # one directory per stand-in size: configs of different sizes coexist
  name = "standin_bert_ja_" + "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
  directory = os.path.join(root, name)
  # process 0 (re)writes it if stale (idempotent); the others use its copy, or write their own if they cannot see it
  paths.one_process_writes(
    f"stand-in text model {name}",
    lambda: jax.process_index() > 0 and os.path.isfile(os.path.join(directory, "config.json")),
    lambda: standin.write_standin_model(directory, **kw),
  )
  return directory


def embed_texts(config, reports: Iterable[str], labels: list[terms.Term]):
  """Embeds every distinct report of `reports` (those of the used splits) and the label prompts.

  Returns (TextTable of reports, (num_labels, text_dim) label prompt embeddings).
  """
  model_dir, kw = text_model_dir(config), _options(config)
  reports = sorted(set(reports))
  table = precompute.embed_texts(reports, model_dir, **kw)
  log.info("report table: %s", json.dumps(table.summary, ensure_ascii=False))
  return table, embed_prompts(config, [t.ja for t in labels])


def embed_prompts(config, prompts: list[str]):
  """(len(prompts), text_dim) embeddings of label prompts, each averaged over config.text.templates."""
  return precompute.embed_label_prompts(
    prompts, list(config.text.templates), text_model_dir(config), **_options(config)
  )


def _options(config) -> dict:
  return dict(
    pooling=config.text.pooling,
    max_length=config.text.max_length,
    batch_size=config.text.batch_size,
    dtype=config.text.dtype,
    cache_dir=config.text.cache_dir or None,
    progress=jax.process_index() == 0,
    template=config.text.template,
    layer=config.text.layer,
  )
