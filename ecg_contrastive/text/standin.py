"""A STAND-IN text model: a small random-weight BERT in Hugging Face format, written locally.

Nothing can be downloaded here, so the built-in demo and the tests embed reports with
this model. It knows no Japanese: its weights are random. What makes it usable for the
demo is that it is lexical. Weights drawn with BERT's usual std 0.02 (position rows
0.002) keep the residual stream dominated by the token embeddings, so the mask-aware
mean of the last hidden states is close to a bag-of-characters vector, and a report containing "心房細動" lies
nearest the prompt "心房細動". For real work point the config at a real model directory
(e.g. tohoku-nlp/bert-base-japanese-v3 saved locally); see docs/text.md.

Tokenizer: `BertJapaneseTokenizer`, MeCab word splitting (fugashi + unidic-lite) then
one token per character. The vocabulary covers the 98 ECG terms, kana, ASCII and its
full-width forms, Japanese punctuation, common symbols and all CJK unified ideographs
U+4E00..U+9FFF; MeCab's NFKC normalisation maps full-width ASCII to ASCII first.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ecg_contrastive.paths import write_bytes
from ecg_contrastive.vocab.terms import term_names

STANDIN_VERSION = 1
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SYMBOLS = "°±×÷→←↑↓≥≤≧≦≒≠∞‰′″№※○●◎△▲▽▼□■◇◆☆★"
_RANGES = [
  (0x0021, 0x007E),  # ASCII printable (space is a separator, not a token)
  (0x0391, 0x03C9),  # Greek (α, β, μ ...)
  (0x3001, 0x303F),  # Japanese punctuation: 、。〃「」『』【】〜 ...
  (0x3041, 0x3096),  # hiragana, small forms included
  (0x309D, 0x309F),  # hiragana iteration marks
  (0x30A1, 0x30FF),  # katakana, small forms, ・ and the prolonged-sound mark ー
  (0x31F0, 0x31FF),  # small katakana extension
  (0x4E00, 0x9FFF),  # CJK unified ideographs
  (0xFF01, 0xFF5E),  # full-width ASCII forms
]


def standin_vocabulary() -> list[str]:
  """Special tokens, then every covered character in code-point order (one token each)."""
  chars = set("".join(term_names())) | set(_SYMBOLS)
  for lo, hi in _RANGES:
    chars.update(chr(c) for c in range(lo, hi + 1))
  return SPECIAL_TOKENS + sorted(chars)


def _config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, seed: int) -> dict:
  return {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": vocab_size,
    "hidden_size": hidden_size,
    "num_hidden_layers": num_layers,
    "num_attention_heads": num_heads,
    "intermediate_size": 4 * hidden_size,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "initializer_range": 0.02,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "ecg_contrastive_standin": {
      "version": STANDIN_VERSION,
      "seed": seed,
      "note": "random weights; a stand-in, not a language model",
    },
  }


def _weights(config: dict, seed: int) -> dict[str, np.ndarray]:
  """HF BertModel tensor names -> float32 arrays: N(0, 0.02) matrices (positions 0.002), zero
  biases, unit LayerNorm."""
  rng = np.random.default_rng(seed)
  h, i = config["hidden_size"], config["intermediate_size"]
  normal = lambda *shape: (rng.standard_normal(shape) * config["initializer_range"]).astype(
    np.float32
  )
  tensors = {}

  def linear(name: str, n_out: int, n_in: int) -> None:
    tensors[f"{name}.weight"] = normal(n_out, n_in)
    tensors[f"{name}.bias"] = np.zeros(n_out, np.float32)

  def layer_norm(name: str) -> None:
    tensors[f"{name}.weight"] = np.ones(h, np.float32)
    tensors[f"{name}.bias"] = np.zeros(h, np.float32)

  tensors["embeddings.word_embeddings.weight"] = normal(config["vocab_size"], h)
  # Position rows 10x smaller than BERT's: at full size they rival the token rows and the
  # mean-pooled embedding groups texts by length more than by characters (docs/text.md).
  tensors["embeddings.position_embeddings.weight"] = 0.1 * normal(
    config["max_position_embeddings"], h
  )
  tensors["embeddings.token_type_embeddings.weight"] = normal(config["type_vocab_size"], h)
  layer_norm("embeddings.LayerNorm")
  for n in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{n}"
    for part in ("query", "key", "value"):
      linear(f"{p}.attention.self.{part}", h, h)
    linear(f"{p}.attention.output.dense", h, h)
    layer_norm(f"{p}.attention.output.LayerNorm")
    linear(f"{p}.intermediate.dense", i, h)
    linear(f"{p}.output.dense", h, i)
    layer_norm(f"{p}.output.LayerNorm")
  linear("pooler.dense", h, h)
  return tensors


def _tokenizer_config() -> dict:
  return {
    "tokenizer_class": "BertJapaneseTokenizer",
    "do_lower_case": False,
    "word_tokenizer_type": "mecab",
    "subword_tokenizer_type": "character",
    "mecab_kwargs": {"mecab_dic": "unidic_lite"},
    "model_max_length": 512,
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
  }


def write_standin_model(
  directory: str, *, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> str:
  """Writes the stand-in model into `directory` (created if absent) and returns it.

  Files: config.json, model.safetensors, vocab.txt, tokenizer_config.json, README.md.
  Idempotent: the same arguments give byte-identical files, and a directory already
  holding them is left untouched. A directory with a config.json that is not a
  stand-in's is refused rather than overwritten.
  """
  from safetensors.numpy import save

  if hidden_size % num_heads:
    raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
  vocab = standin_vocabulary()
  config = _config(len(vocab), hidden_size, num_layers, num_heads, seed)
  config_bytes = (json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
  config_path = os.path.join(directory, "config.json")
  names = ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "README.md"]
  if os.path.isfile(config_path):
    with open(config_path, "rb") as f:
      existing = f.read()
    if existing == config_bytes and all(os.path.isfile(os.path.join(directory, n)) for n in names):
      return directory
    if "ecg_contrastive_standin" not in json.loads(existing):
      raise FileExistsError(
        f"{directory!r} holds a model that is not the stand-in; "
        "choose an empty directory for write_standin_model"
      )
  os.makedirs(directory, exist_ok=True)
  write_bytes(os.path.join(directory, "vocab.txt"), ("\n".join(vocab) + "\n").encode())
  write_bytes(
    os.path.join(directory, "tokenizer_config.json"),
    (json.dumps(_tokenizer_config(), indent=2, sort_keys=True) + "\n").encode(),
  )
  write_bytes(
    os.path.join(directory, "model.safetensors"), save(_weights(config, seed), {"format": "pt"})
  )
  write_bytes(
    os.path.join(directory, "README.md"),
    (
      b"# STAND-IN text model (random weights)\n\n"
      b"Written by `ecg_contrastive.text.standin.write_standin_model` for the demo and tests.\n"
      b"It is not a language model: a random BERT over a character vocabulary whose mean-pooled\n"
      b"embeddings are roughly bags of characters. Use a real Japanese BERT for real work\n"
      b"(docs/text.md).\n"
    ),
  )
  write_bytes(config_path, config_bytes)  # last: its presence marks a complete directory
  return directory
