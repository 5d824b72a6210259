"""Pooling of a text encoder's hidden states into one embedding per text (BERT and Llama families).

'mean': the mean over attended tokens (special tokens included, padding excluded; a row
with no attended token gives zeros). 'last': the last attended token, wherever the padding
is (right or left): the natural summary of a causal decoder, whose last token has seen the
whole text. 'cls': the first position (BERT's [CLS]; meaningless for a causal decoder,
whose first token sees nothing else). 'pooler': BERT's tanh(dense(cls)), when the
checkpoint has pooler weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ecg_contrastive.models.safetensors_io import TextModelError

POOLINGS = ("cls", "mean", "pooler", "last")


def check_pooling(pooling: str, has_pooler: bool) -> None:
  """TextModelError unless `pooling` is one of POOLINGS and usable with this checkpoint."""
  if pooling not in POOLINGS:
    raise TextModelError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
  if pooling == "pooler" and not has_pooler:
    raise TextModelError(
      "pooling 'pooler' needs pooler weights (pooler.dense.*), which this "
      "checkpoint lacks; use pooling 'mean', 'last' or 'cls'"
    )


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """(B, L) mask -> (B,) int32 position of each row's last attended token (0 for an empty row)."""
  mask = attention_mask.astype(bool)
  length = mask.shape[1]
  from_end = jnp.argmax(mask[:, ::-1], axis=1)  # first attended position counted from the end
  return jnp.where(mask.any(axis=1), length - 1 - from_end, 0).astype(jnp.int32)


def pool(
  hidden: jax.Array, pooler_output: jax.Array | None, attention_mask: jax.Array, pooling: str
) -> jax.Array:
  """hidden (B, L, H), pooler_output (B, H) or None, attention_mask (B, L) -> (B, H) float32."""
  check_pooling(pooling, pooler_output is not None)
  if pooling == "cls":
    return hidden[:, 0].astype(jnp.float32)
  if pooling == "last":
    rows = jnp.arange(hidden.shape[0])
    return hidden[rows, last_token_index(attention_mask)].astype(jnp.float32)
  if pooling == "mean":
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return pooler_output.astype(jnp.float32)
