"""Tokenisation of report texts with the model directory's own Hugging Face tokenizer.

`AutoTokenizer` reads the tokenizer files next to the weights, never the network
(`local_files_only=True`, whatever `HF_HUB_OFFLINE` says). Japanese BERTs use
`BertJapaneseTokenizer` (MeCab through `fugashi` with `unidic-lite` or `ipadic`);
RoBERTa variants may need `sentencepiece`.

`tokenize` truncates to `max_length` tokens (special tokens included) and counts what
a caller must hear about: empty texts, truncated texts, and [UNK] tokens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from ecg_contrastive.errors import UserError

_TOKENIZER_FILES = (
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.txt",
  "vocab.json",
  "sentencepiece.bpe.model",
  "spiece.model",
)


class TokenizerError(UserError, ValueError):
  """Tokenizer files that cannot be loaded; the message names the directory and what to do."""


def load_tokenizer(model_dir: str):
  """The tokenizer saved in `model_dir` (a transformers tokenizer object); local files only."""
  from transformers import AutoTokenizer

  if not any(os.path.isfile(os.path.join(model_dir, f)) for f in _TOKENIZER_FILES):
    raise FileNotFoundError(
      f"text model directory {model_dir!r} has no tokenizer files (any of {', '.join(_TOKENIZER_FILES)}); "
      "copy the tokenizer saved with the model into it (tokenizer.save_pretrained(dir))"
    )
  try:
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
  except ImportError as e:
    raise ImportError(
      f"the tokenizer of {model_dir!r} needs a package that is not installed ({e}); Japanese BERT "
      "tokenizers need `pip install fugashi unidic-lite` (or ipadic), SentencePiece ones "
      "`pip install sentencepiece`"
    ) from e
  except (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
  ) as e:  # a damaged or mismatched tokenizer file
    present = [f for f in _TOKENIZER_FILES if os.path.isfile(os.path.join(model_dir, f))]
    raise TokenizerError(
      f"the tokenizer files {present} in {model_dir!r} cannot be loaded "
      f"({type(e).__name__}: {' '.join(str(e).split())}); "
      "copy the tokenizer saved with the model again (tokenizer.save_pretrained(dir))"
    ) from e


@dataclasses.dataclass
class Tokenized:
  """Token ids of N texts, special tokens added, truncated to max_length."""

  ids: list[np.ndarray]  # N arrays of int32, each (length_i,), 1 <= length_i <= max_length
  empty: int  # texts with no characters other than whitespace
  truncated: int  # texts longer than max_length tokens, cut at the end
  unk_tokens: int  # [UNK] tokens over all texts, counted before truncation
  texts_with_unk: int
  unk_examples: list[str]  # up to 3 texts containing [UNK] (first 40 characters)

  @property
  def lengths(self) -> np.ndarray:
    """(N,) int32 token counts."""
    return np.array([len(i) for i in self.ids], np.int32)

  def counts(self) -> dict[str, int]:
    return {k: getattr(self, k) for k in ("empty", "truncated", "unk_tokens", "texts_with_unk")}


def check_texts(texts: Sequence[str]) -> list[str]:
  """The texts as a list; ValueError if there are none, TypeError naming the first non-str."""
  if isinstance(texts, str):
    raise TypeError("texts must be a sequence of str, not one str")
  texts = list(texts)
  if not texts:
    raise ValueError("no texts to embed")
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise TypeError(
        f"text {i} is {type(t).__name__} ({t!r:.60}), not str; decode bytes with "
        ".decode('utf-8') and replace missing reports with '' before embedding"
      )
  return texts


def tokenize(texts: Sequence[str], tokenizer, max_length: int) -> Tokenized:
  """Texts (str) -> Tokenized; an empty `texts` gives an empty Tokenized."""
  budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
  if budget < 1:
    raise ValueError(f"max_length {max_length} leaves no room for text after the special tokens")
  from transformers.utils import logging as hf_logging

  verbosity = hf_logging.get_verbosity()
  hf_logging.set_verbosity_error()  # we truncate ourselves; silence the "longer than maximum" warning
  try:
    raw = (
      tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
      if texts
      else []
    )
    # transformers 5's tokenizers-library backend (tokenizer.json: Llama, Qwen2, ...) has no
    # build_inputs_with_special_tokens: it adds its special tokens and truncates in one call
    with_special = (
      None
      if hasattr(tokenizer, "build_inputs_with_special_tokens") or not texts
      else tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)[
        "input_ids"
      ]
    )
  finally:
    hf_logging.set_verbosity(verbosity)
  unk = tokenizer.unk_token_id
  ids, truncated, unk_tokens, texts_with_unk, unk_examples = [], 0, 0, 0, []
  for i, (text, tokens) in enumerate(zip(texts, raw)):
    n_unk = sum(t == unk for t in tokens) if unk is not None else 0
    if n_unk:
      unk_tokens += n_unk
      texts_with_unk += 1
      if len(unk_examples) < 3:
        unk_examples.append(text[:40])
    if len(tokens) > budget:
      truncated += 1
      tokens = tokens[:budget]
    ids.append(
      np.asarray(
        tokenizer.build_inputs_with_special_tokens(tokens)
        if with_special is None
        else with_special[i],
        np.int32,
      )
    )
  return Tokenized(
    ids,
    empty=sum(1 for t in texts if not t.strip()),
    truncated=truncated,
    unk_tokens=unk_tokens,
    texts_with_unk=texts_with_unk,
    unk_examples=unk_examples,
  )
