"""Precompute of the frozen text tower: texts -> embedding table (one row per unique text).

The text tower is locked, so each distinct report and label prompt is embedded once and
training reads rows of the table. `embed_texts` dedupes, tokenises, embeds in length
buckets on all local devices (each process its contiguous share of the unique texts,
assembled afterwards) and caches the table on disk or gs:// (`cache.py`; process 0 writes the
entry while the others wait). Its summary counts
everything a caller must hear about: empty texts, truncated texts, [UNK] tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ecg_contrastive import paths
from ecg_contrastive.models.bert import require_model_files
from ecg_contrastive.models.pooling import check_pooling
from ecg_contrastive.models.safetensors_io import TextModelError
from ecg_contrastive.sharding import make_mesh
from ecg_contrastive.text import cache
from ecg_contrastive.text import model as text_model
from ecg_contrastive.text.encode import Encoder, embed_token_ids
from ecg_contrastive.text.tokenizer import check_texts, load_tokenizer, tokenize

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_COUNTS = (
  "empty",
  "truncated",
  "unk_tokens",
  "texts_with_unk",
  "tokens",
  "padded_tokens",
  "batches",
)


@dataclasses.dataclass
class TextTable:
  """Embedding table of unique texts, in sorted (code point) order."""

  texts: list[str]  # N unique texts
  embeddings: np.ndarray  # float32 (N, D), raw pooled output (not normalised)
  summary: dict  # counts and settings, see docs/text.md
  _index: dict[str, int] = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    if self.embeddings.shape[0] != len(self.texts):
      raise ValueError(f"{len(self.texts)} texts but {self.embeddings.shape[0]} embedding rows")
    self._index = {t: i for i, t in enumerate(self.texts)}

  def rows(self, texts: Sequence[str]) -> np.ndarray:
    """(len(texts),) int32 row of each text; KeyError naming the first text not in the table."""
    out = np.empty(len(texts), np.int32)
    for i, t in enumerate(texts):
      try:
        out[i] = self._index[t]
      except KeyError:
        raise KeyError(
          f"text {i} ({t[:60]!r}) is not in the embedding table of {len(self.texts)} "
          "texts; include it in the texts passed to embed_texts"
        ) from None
    return out


def _check_options(
  pooling: str, max_length: int, batch_size: int, dtype: str, template: str
) -> None:
  check_pooling(pooling, has_pooler=True)  # pooler weights are checked when the model loads
  if dtype not in DTYPES:
    raise TextModelError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
  if max_length < 2 or batch_size < 1:
    raise TextModelError(
      f"max_length ({max_length}) must be >= 2 and batch_size ({batch_size}) >= 1"
    )
  if template and template.count("{}") != 1:
    raise TextModelError(
      f"template {template!r} must contain the placeholder '{{}}' exactly once (the text goes "
      "there), or be '' for none"
    )


def _all_processes(value: np.ndarray) -> np.ndarray:
  """(P, ...) the value from every process, stacked in process order."""
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(value))


def _embed_share(
  unique: list[str],
  model_dir: str,
  pooling: str,
  max_length: int,
  batch_size: int,
  dtype: str,
  progress: bool,
  template: str = "",
  layer: int = -1,
) -> tuple[np.ndarray, dict]:
  """Embeds this process's contiguous share of `unique` -> (N, D) table (all processes) and counts.

  The model is placed on this process's devices (a Llama-family model split over them).
  """
  config = text_model.read_config(model_dir)
  text_model.check_options(config, pooling, layer)
  positions = text_model.max_tokens(config)
  if max_length > positions:
    raise TextModelError(
      f"config.text.max_length={max_length} exceeds the {positions} positions of {model_dir!r}; "
      "lower it"
    )
  tokenizer = load_tokenizer(model_dir)
  if len(tokenizer) > config.vocab_size:
    raise TextModelError(
      f"{model_dir!r}: the tokenizer has {len(tokenizer)} tokens but config.json has "
      f"vocab_size {config.vocab_size}; the tokenizer files belong to another model"
    )
  mesh = make_mesh(jax.local_devices())
  model = text_model.load_text_model(model_dir, dtype=dtype, mesh=mesh, layer=layer)
  encoder = Encoder(model.module, model.params, pooling, mesh)
  count, index = jax.process_count(), jax.process_index()
  share = -(-len(unique) // count)
  texts = unique[index * share : (index + 1) * share]
  tokenized = tokenize(
    [template.replace("{}", t) for t in texts] if template else texts, tokenizer, max_length
  )
  local, batching = embed_token_ids(
    encoder,
    tokenized.ids,
    batch_size=batch_size,
    max_length=max_length,
    pad_id=pad_id(tokenizer),
    progress=progress and index == 0,
  )
  counts = {**tokenized.counts(), **batching}
  if count == 1:
    return local, {**counts, "unk_examples": tokenized.unk_examples}
  padded = np.zeros((share, encoder.dim), np.float32)
  padded[: len(local)] = local
  table = _all_processes(padded).reshape(-1, encoder.dim)[: len(unique)]
  summed = _all_processes(np.array([counts[k] for k in _COUNTS], np.int64)).sum(0)
  return table, {
    **dict(zip(_COUNTS, summed.tolist())),
    "shapes": batching["shapes"],
    "unk_examples": tokenized.unk_examples,
  }


def pad_id(tokenizer) -> int:
  """The id that fills padded positions (masked out, so any id works): the pad token, else EOS
  (Llama-3's tokenizer has no pad token), else 0."""
  for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if isinstance(token_id, int):
      return token_id
  return 0


def embed_texts(
  texts: Sequence[str],
  model_dir: str,
  *,
  pooling: str = "mean",
  max_length: int = 128,
  batch_size: int = 256,
  dtype: str = "float32",
  cache_dir: str | None = None,
  progress: bool = True,
  template: str = "",
  layer: int = -1,
) -> TextTable:
  """Embeds every distinct text once -> TextTable; duplicates share a row.

  texts: report texts or prompts (str; '' is allowed and counted as empty).
  model_dir: local Hugging Face directory of a BERT/RoBERTa encoder or a Llama-family decoder
  (config.json, model.safetensors or its shards with model.safetensors.index.json, tokenizer).
  pooling: 'mean' (mask-aware), 'last' (last attended token), 'cls' or 'pooler' (BERT only).
  max_length: tokens kept per text, special tokens included; longer texts are cut at the end and counted.
  batch_size: rows per forward pass (rounded up to a multiple of the local device count).
  dtype: compute dtype, 'float32' or 'bfloat16' (a Llama-family model's weights too).
  cache_dir: default $ECG_CONTRASTIVE_CACHE or ~/.cache/ecg_contrastive/text.
  template: '' or a prompt with '{}' once, wrapped around each
  text before tokenising (e.g. the PromptEOL style 'この心電図所見「{}」を一語で表すと：'); the
  table stays keyed by the texts themselves. layer: which hidden states to pool
  (transformers' hidden_states index; -1 the last; Llama family only).
  """
  start = time.perf_counter()
  texts = check_texts(texts)
  _check_options(pooling, max_length, batch_size, dtype, template)
  require_model_files(model_dir)
  text_model.check_options(text_model.read_config(model_dir), pooling, layer)
  unique = sorted(set(texts))
  text_fp = cache.text_fingerprint(unique)
  multi = jax.process_count() > 1
  if multi:
    digests = _all_processes(np.frombuffer(bytes.fromhex(text_fp), np.uint8))
    if not (digests == digests[0]).all():
      raise ValueError(
        "processes passed different text sets to embed_texts; every process must "
        "pass the same texts (each embeds its share)"
      )
  cache_dir = cache_dir or cache.default_cache_dir()
  key = cache.cache_key(
    cache.model_fingerprint(model_dir), text_fp, pooling, max_length, dtype, template, layer
  )
  hit = cache.load(cache_dir, key, len(unique))
  if multi and not _all_processes(np.array(hit is not None)).all():
    hit = None  # every process must take the same path: the miss path has collectives
  settings = {
    "model_dir": model_dir,
    "pooling": pooling,
    "max_length": max_length,
    "dtype": dtype,
    "template": template,
    "layer": layer,
  }
  if hit is not None:
    embeddings, meta = hit
    counts = meta["summary"]
  else:
    embeddings, counts = _embed_share(
      unique, model_dir, pooling, max_length, batch_size, dtype, progress, template, layer
    )
    counts = {
      **counts,
      "devices": jax.local_device_count(),
      "processes": jax.process_count(),
      "embed_seconds": round(time.perf_counter() - start, 3),
    }
    entry = {**settings, "unique": len(unique), "summary": counts}
    paths.one_process_writes(
      f"text cache {key}",
      lambda: cache.complete(cache_dir, key),
      lambda: cache.save(cache_dir, key, embeddings, entry),
    )
  summary = {
    "texts": len(texts),
    "unique": len(unique),
    **counts,
    **settings,
    "dim": embeddings.shape[1],
    "seconds": round(time.perf_counter() - start, 3),
    "from_cache": hit is not None,
  }
  _log(summary)
  return TextTable(unique, embeddings, summary)


def _log(summary: dict) -> None:
  log.info(
    "text precompute: %d texts, %d unique, %.1f s%s",
    summary["texts"],
    summary["unique"],
    summary["seconds"],
    " (from cache)" if summary["from_cache"] else "",
  )
  if summary["empty"] or summary["truncated"] or summary["unk_tokens"]:
    log.warning(
      "text precompute: %d empty texts, %d truncated to %d tokens, %d [UNK] tokens in %d "
      "texts (e.g. %s)",
      summary["empty"],
      summary["truncated"],
      summary["max_length"],
      summary["unk_tokens"],
      summary["texts_with_unk"],
      summary["unk_examples"],
    )


def embed_label_prompts(
  labels: Sequence[str], templates: Sequence[str], model_dir: str, **kw
) -> np.ndarray:
  """-> float32 (num_labels, D) label embeddings averaged over prompt templates.

  Each template contains '{}' once, replaced by the label. Each prompt embedding is
  L2-normalised before averaging over templates, so every template weighs the same
  whatever its norm; the average is returned unnormalised (its norm shrinks when
  templates disagree; normalise it where cosine similarity is wanted). `kw` goes to
  embed_texts.
  """
  labels, templates = list(labels), list(templates)
  if not labels or not templates:
    raise ValueError(
      f"need at least one label and one template (got {len(labels)} and {len(templates)})"
    )
  for t in templates:
    if not isinstance(t, str) or t.count("{}") != 1:
      raise ValueError(f"template {t!r} must contain the placeholder '{{}}' exactly once")
  prompts = [t.replace("{}", label) for label in check_texts(labels) for t in templates]
  table = embed_texts(prompts, model_dir, **kw)
  e = table.embeddings[table.rows(prompts)].reshape(len(labels), len(templates), -1)
  e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
  return e.mean(axis=1).astype(np.float32)
