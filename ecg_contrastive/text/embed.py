r"""Precompute text embeddings with any supported text model (BERT, RoBERTa, Llama, Mistral, Qwen2).

  python -m ecg_contrastive.text.embed --model-dir /models/MedLlama3-JP-v2 --texts reports.txt \
      --out reports.npy --pooling last --template 'この心電図所見「{}」を一語で表すと：' --dtype bfloat16

FILE holds one text per line (UTF-8; an empty line is an empty text). OUT.npy holds float32
(n, hidden) in the input order, one row per line, duplicates included. Each distinct text
is embedded once, on all local devices (a Llama-family model's weights split over them),
and the table goes to the same cache as the training job's (text/cache.py: the key covers
the model files, the texts, pooling, template, layer, max_length and dtype), so a run
with the same settings reads it back instead of embedding again. Mistakes (a missing
directory or file, an unsupported model, a bad option) are one line `error: ...` on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from ecg_contrastive import paths
from ecg_contrastive.errors import UserError, one_line, want_traceback
from ecg_contrastive.models.pooling import POOLINGS

log = logging.getLogger("ecg_contrastive")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m ecg_contrastive.text.embed",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--model-dir", required=True, help="local Hugging Face model directory")
  p.add_argument("--texts", required=True, help="UTF-8 text file, one text per line")
  p.add_argument("--out", required=True, help="output .npy: float32 (n, hidden), input order")
  p.add_argument(
    "--pooling",
    default="mean",
    choices=POOLINGS,
    help="mean (mask-aware, default), last (last token: decoders), cls or pooler (BERT)",
  )
  p.add_argument("--template", default="", help="prompt with '{}' once, wrapped around each text")
  p.add_argument("--max-length", type=int, default=128, help="tokens per text, special included")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
  p.add_argument(
    "--layer",
    type=int,
    default=-1,
    help="hidden states to pool: transformers' hidden_states index, -1 the last (Llama family)",
  )
  p.add_argument("--cache-dir", default="", help="'' -> $ECG_CONTRASTIVE_CACHE or ~/.cache/...")
  p.add_argument(
    "--distributed",
    action="store_true",
    help="jax.distributed.initialize() first: run the same command on every host; each process embeds its "
    "share of the texts on its own devices, process 0 writes --out",
  )
  p.add_argument("--verbose", action="store_true", help="tracebacks for mistakes too")
  return p.parse_args(argv)


def read_texts(path: str) -> list[str]:
  """One text per line (newline removed, nothing else); errors name the file."""
  try:
    with open(path, encoding="utf-8", newline="") as f:
      texts = f.read().split("\n")
  except UnicodeDecodeError as e:
    raise TextsError(f"{path}: not UTF-8 text ({e}); save the texts as UTF-8") from None
  if texts and texts[-1] == "":
    texts.pop()  # the newline that ends the last line
  texts = [t[:-1] if t.endswith("\r") else t for t in texts]
  if not texts:
    raise TextsError(f"{path}: holds no texts; write one text per line")
  return texts


class TextsError(UserError, ValueError):
  """A texts file that cannot be embedded."""


def run(args: argparse.Namespace) -> np.ndarray:
  """Embeds the texts of args.texts and writes args.out; returns the (n, hidden) float32 rows."""
  import jax

  from ecg_contrastive.text.precompute import embed_texts

  if not os.path.isfile(args.texts):
    raise FileNotFoundError(f"--texts {args.texts!r}: no such file")
  if not os.path.isdir(args.model_dir):
    raise FileNotFoundError(f"--model-dir {args.model_dir!r}: no such directory")
  texts = read_texts(args.texts)
  table = embed_texts(
    texts,
    args.model_dir,
    pooling=args.pooling,
    max_length=args.max_length,
    batch_size=args.batch_size,
    dtype=args.dtype,
    cache_dir=args.cache_dir or None,
    template=args.template,
    layer=args.layer,
  )
  rows = table.embeddings[table.rows(texts)]
  if jax.process_index() == 0:
    paths.np_save(args.out, rows)
  s = table.summary
  print(
    f"{len(texts)} texts ({s['unique']} distinct, {s['tokens']} tokens"
    f"{', from cache' if s['from_cache'] else ''}) -> {args.out} float32 {rows.shape}, "
    f"{s['seconds']:.1f} s",
    file=sys.stderr,
  )
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  args = parse_args(argv)
  if args.distributed:
    from ecg_contrastive.sharding import init_distributed

    init_distributed()
  try:
    run(args)
  except (UserError, FileNotFoundError) as e:
    if want_traceback(list(argv or sys.argv)):
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
