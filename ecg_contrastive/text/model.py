"""Which text model a directory holds, and loading it onto a mesh: the one dispatch between families.

config.json's `model_type` picks the family: BERT/RoBERTa encoders (models/bert.py) or
Llama-family decoders (models/llama.py: llama, mistral, qwen2). A BERT is small: its
float32 weights are replicated on every device. A Llama-family model is large (8B in
bfloat16 is 16 GB): each weight is read slice by slice straight into its place, split
over the devices of the mesh along its heads / MLP axis (llama.param_sharding), and
computed in the requested dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from ecg_contrastive.models import bert, llama
from ecg_contrastive.models.pooling import check_pooling
from ecg_contrastive.models.safetensors_io import TextModelError
from ecg_contrastive.sharding import replicated

BERT_TYPES = tuple(sorted(bert._FAMILIES))
LLAMA_TYPES = llama.FAMILIES


@dataclasses.dataclass
class TextModel:
  module: Any  # BertEncoder or LlamaEncoder: apply(params, ids, mask) -> (hidden, pooler or None)
  params: dict  # jax.Arrays placed on the mesh
  config: Any  # BertConfig or LlamaConfig
  family: str  # "bert" (BERT/RoBERTa) or "llama" (Llama/Mistral/Qwen2)

  @property
  def max_tokens(self) -> int:
    return max_tokens(self.config)


def read_config(model_dir: str):
  """config.json of `model_dir` -> BertConfig or LlamaConfig; errors name the file."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"text model directory {model_dir!r} has no config.json; point the config at a local "
      "Hugging Face model directory (config.json, safetensors weights, tokenizer files)"
    )
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise TextModelError(f"{path}: not valid JSON ({type(e).__name__}: {e}){bert._REDO}") from e
  if not isinstance(hf, dict):
    raise TextModelError(f"{path}: holds a {type(hf).__name__}, not a JSON object{bert._REDO}")
  model_type = hf.get("model_type")
  if model_type in LLAMA_TYPES:
    return llama.LlamaConfig.from_hf(hf, source=path)
  if model_type in BERT_TYPES:
    return bert.BertConfig.from_hf(hf, source=path)
  raise TextModelError(
    f"{path}: model_type {model_type!r} (architectures {hf.get('architectures')}) is not a "
    f"supported text model; supported: BERT family {BERT_TYPES}, Llama family {LLAMA_TYPES}"
  )


def family(config) -> str:
  return "llama" if isinstance(config, llama.LlamaConfig) else "bert"


def max_tokens(config) -> int:
  """Tokens per text the model has positions for."""
  if isinstance(config, llama.LlamaConfig):
    return config.max_position_embeddings
  return bert.max_tokens(config)


def check_options(config, pooling: str, layer: int) -> None:
  """TextModelError for a pooling or layer this family cannot give."""
  if family(config) == "llama":
    if pooling in ("cls", "pooler"):
      raise TextModelError(
        f"pooling {pooling!r} does not suit a causal decoder ({config.family}): its first token "
        "sees nothing but itself and it has no pooler; use 'mean' or 'last'"
      )
    llama.layers_to_run(config, layer)
  elif layer != -1:
    raise TextModelError(
      f"layer {layer}: choosing the layer is implemented for Llama-family models; use -1 with "
      f"a {config.family} encoder"
    )
  check_pooling(pooling, has_pooler=True)  # a BERT's pooler weights are checked when it loads


def load_text_model(
  model_dir: str, *, dtype: str = "float32", mesh: Mesh, layer: int = -1
) -> TextModel:
  """The model of `model_dir` with its weights placed on `mesh` (dtype: 'float32' or 'bfloat16')."""
  config = read_config(model_dir)
  jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  if family(config) == "llama":
    module, params = llama.load_llama(model_dir, config, dtype=jdtype, mesh=mesh, layer=layer)
  else:
    if layer != -1:
      check_options(config, "mean", layer)
    module, params, config = bert.load_hf_encoder(model_dir, dtype=jdtype)
    params = jax.device_put(params, replicated(mesh))
  return TextModel(module, params, config, family(config))
