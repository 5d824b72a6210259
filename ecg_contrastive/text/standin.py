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


LLAMA_SPECIAL_TOKENS = ["<unk>", "<|begin_of_text|>", "<|end_of_text|>"]


def write_llama_tokenizer(directory: str) -> str:
  """A character-level tokenizer in Llama-3's format (tokenizer.json; BOS added, no pad token).

  Vocabulary: `<unk>`, `<|begin_of_text|>`, `<|end_of_text|>`, then the stand-in's
  characters (standin_vocabulary); NFKC, whitespace dropped, one token per character.
  """
  from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = LLAMA_SPECIAL_TOKENS + standin_vocabulary()[len(SPECIAL_TOKENS) :]
  tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
  tokenizer.normalizer = normalizers.NFKC()
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
  )
  tokenizer.post_processor = processors.TemplateProcessing(
    single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)]
  )
  PreTrainedTokenizerFast(
    tokenizer_object=tokenizer,
    bos_token="<|begin_of_text|>",
    eos_token="<|end_of_text|>",
    unk_token="<unk>",
    model_max_length=8192,
  ).save_pretrained(directory)
  return directory


def llama_config(
  *,
  hidden_size: int = 64,
  num_layers: int = 2,
  num_heads: int = 8,
  num_kv_heads: int = 2,
  intermediate_size: int | None = None,
  vocab_size: int | None = None,
  max_positions: int = 2048,
) -> dict:
  """A Llama-3-style config.json (GQA, llama3 rope scaling at theta 500000) of the given size."""
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": vocab_size or len(LLAMA_SPECIAL_TOKENS) + len(standin_vocabulary()) - 5,
    "hidden_size": hidden_size,
    "intermediate_size": intermediate_size or 3 * hidden_size,
    "num_hidden_layers": num_layers,
    "num_attention_heads": num_heads,
    "num_key_value_heads": num_kv_heads,
    "hidden_act": "silu",
    "max_position_embeddings": max_positions,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
      "rope_type": "llama3",
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64,
    },
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
  }


def write_random_llama(
  directory: str, *, shards: int = 3, seed: int = 0, dtype: str = "float32", **sizes
) -> str:
  """A random-weight Llama-3-style model in `directory`: config.json, `shards` safetensors shards
  with model.safetensors.index.json (names as LlamaForCausalLM saves them, lm_head included),
  and the character tokenizer (write_llama_tokenizer). `sizes` go to llama_config. For tests and
  benchmarks: it knows no language."""
  import ml_dtypes
  from safetensors.numpy import save

  config = llama_config(**sizes)
  rng = np.random.default_rng(seed)
  h, kv = (
    config["hidden_size"],
    config["num_key_value_heads"] * (config["hidden_size"] // config["num_attention_heads"]),
  )
  out_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
  normal = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(out_dtype)
  tensors = {"model.embed_tokens.weight": normal(config["vocab_size"], h)}
  for n in range(config["num_hidden_layers"]):
    p = f"model.layers.{n}"
    for name, shape in (
      ("self_attn.q_proj", (h, h)),
      ("self_attn.k_proj", (kv, h)),
      ("self_attn.v_proj", (kv, h)),
      ("self_attn.o_proj", (h, h)),
      ("mlp.gate_proj", (config["intermediate_size"], h)),
      ("mlp.up_proj", (config["intermediate_size"], h)),
      ("mlp.down_proj", (h, config["intermediate_size"])),
    ):
      tensors[f"{p}.{name}.weight"] = normal(*shape)
    for name in ("input_layernorm", "post_attention_layernorm"):
      tensors[f"{p}.{name}.weight"] = (1 + rng.standard_normal(h) * 0.1).astype(out_dtype)
  tensors["model.norm.weight"] = np.ones(h, out_dtype)
  tensors["lm_head.weight"] = normal(config["vocab_size"], h)
  os.makedirs(directory, exist_ok=True)
  names = list(tensors)
  weight_map = {}
  for s in range(shards):
    shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[s::shards]}
    weight_map.update(dict.fromkeys(part, shard))
    write_bytes(os.path.join(directory, shard), save(part, {"format": "pt"}))
  index = {
    "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
    "weight_map": weight_map,
  }
  write_bytes(
    os.path.join(directory, "model.safetensors.index.json"), json.dumps(index, indent=2).encode()
  )
  write_llama_tokenizer(directory)
  config["torch_dtype"] = dtype
  write_bytes(os.path.join(directory, "config.json"), json.dumps(config, indent=2).encode())
  return directory
