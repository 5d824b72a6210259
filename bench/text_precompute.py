"""Reports/s of the text precompute against transformers' PyTorch BertModel, side by side.

  python bench/text_precompute.py            # BERT-base shape, 256 reports, batch 64, 3 windows

Both sides embed the same unique Japanese report texts with the same tokenizer, batch
size, max_length 128, float32 and mask-aware mean pooling, from the same random-weight
BERT-base directory (12 layers, hidden 768, 12 heads, stand-in character vocabulary).
Rows:
  ours           embed_texts end to end: tokenise, length buckets, forward, cache write
                 (a fresh cache directory per window, so nothing is read from cache)
  torch          the usual PyTorch loop: batches in data order, padded to their longest
  torch sorted   the PyTorch loop given our length-sorted batches (isolates the forward)
Windows alternate between the rows so background load hits all of them alike; the
figure is the median window. Ours is warmed up by one full run (it compiles one XLA
program per bucket shape); that cold run is reported too. torch uses 2 threads.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from ecg_contrastive.text.precompute import embed_texts
from ecg_contrastive.text.standin import write_standin_model
from ecg_contrastive.vocab.terms import load_terms

_LEADS = ("II, III, aVF", "V1-V3", "I, aVL", "V4-V6", "I, aVL, V5, V6", "V1, V2")
_COMMENTS = (
  "前回心電図と比較して著変なし。",
  "臨床症状と併せてご判断ください。",
  "心エコーでの評価をご検討ください。",
  "電解質異常の有無をご確認ください。",
  "前回より心拍数が増加している。",
  "経過観察を推奨する。",
)


def make_reports(n: int, seed: int = 0) -> list[str]:
  """n distinct Japanese ECG readings: a rhythm, 0-4 findings, measurements, sometimes a comment.

  Character counts spread roughly 20-120 (most 30-70), as in hospital ECG reports.
  """
  rng = np.random.default_rng(seed)
  terms = load_terms()
  rhythms = [t.ja for t in terms if t.group_ja == "調律"]
  findings = [t.ja for t in terms if t.group_ja not in ("調律", "総合判定")]
  reports: set[str] = set()
  while len(reports) < n:
    parts = [
      f"{rhythms[rng.integers(len(rhythms))] if rng.random() < 0.4 else '洞調律'}、"
      f"心拍数{rng.integers(40, 150)}/分。"
    ]
    for f in rng.choice(findings, size=rng.integers(0, 5), replace=False):
      where = f"{_LEADS[rng.integers(len(_LEADS))]}誘導で" if rng.random() < 0.3 else ""
      parts.append(f"{where}{f}{('を認める。', 'あり。', 'の疑い。', '。')[rng.integers(4)]}")
    if len(parts) == 1:
      parts.append("正常心電図。")
    if rng.random() < 0.3:
      parts.append(f"QTc {rng.integers(380, 500)}ms。")
    if rng.random() < 0.3:
      parts.append(_COMMENTS[rng.integers(len(_COMMENTS))])
    reports.add("".join(parts))
  ordered = sorted(reports)
  rng.shuffle(ordered)
  return ordered


class TorchBaseline:
  """transformers BertModel forward + masked mean pooling, batches of `batch_size`."""

  def __init__(self, model_dir: str, batch_size: int, max_length: int):
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(2)
    self.torch = torch
    self.model = BertModel.from_pretrained(model_dir).eval()
    self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    self.batch_size, self.max_length = batch_size, max_length
    self.padded_tokens: dict[
      bool, int
    ] = {}  # sort_by_length -> token slots computed by the last call

  def __call__(self, texts: list[str], sort_by_length: bool) -> np.ndarray:
    if sort_by_length:
      lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
      texts = [texts[i] for i in np.argsort(lengths, kind="stable")]
    out, padded = [], 0
    with self.torch.inference_mode():
      for start in range(0, len(texts), self.batch_size):
        batch = self.tokenizer(
          texts[start : start + self.batch_size],
          padding=True,
          truncation=True,
          max_length=self.max_length,
          return_tensors="pt",
        )
        padded += batch["input_ids"].numel()
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    self.padded_tokens[sort_by_length] = padded
    return np.concatenate(out)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--num-texts", type=int, default=256)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument(
    "--model-dir", help="a local HF BERT directory (default: a base-size random stand-in)"
  )
  args = parser.parse_args()

  load_start = os.getloadavg()[0]
  with tempfile.TemporaryDirectory(prefix="bench_text_") as work:
    run(args, work, load_start)


def run(args: argparse.Namespace, work: str, load_start: float) -> None:
  """Writes the model (unless given) and the caches under `work`; prints the table."""
  model_dir = args.model_dir or write_standin_model(
    f"{work}/model", hidden_size=768, num_layers=12, num_heads=12
  )
  texts = make_reports(args.num_texts)
  ours = lambda i: embed_texts(
    texts,
    model_dir,
    batch_size=args.batch_size,
    max_length=args.max_length,
    cache_dir=f"{work}/cache{i}",
    progress=False,
  )
  torch_run = TorchBaseline(model_dir, args.batch_size, args.max_length)

  start = time.perf_counter()
  table = ours("cold")
  cold_s = time.perf_counter() - start
  reference = torch_run(texts[: args.batch_size], sort_by_length=False)  # torch warm-up
  np.testing.assert_allclose(
    table.embeddings[table.rows(texts[: args.batch_size])], reference, rtol=1e-3, atol=1e-4
  )  # both sides compute the same thing
  rows = {
    "ours (embed_texts)": lambda i: ours(i),
    "torch BertModel, data order": lambda i: torch_run(texts, sort_by_length=False),
    "torch BertModel, our length-sorted batches": lambda i: torch_run(texts, sort_by_length=True),
  }
  times: dict[str, list[float]] = {name: [] for name in rows}
  for window in range(args.windows):
    for name, embed in rows.items():
      start = time.perf_counter()
      embed(window)
      times[name].append(time.perf_counter() - start)
      print(
        f"window {window}: {name}: {len(texts) / times[name][-1]:.2f} reports/s", file=sys.stderr
      )

  s = table.summary
  versions = ", ".join(
    f"{p} {importlib.metadata.version(p)}" for p in ("jax", "flax", "torch", "transformers")
  )
  print(
    f"\nmachine: {os.cpu_count()} cores {platform.machine()}, {s['devices']} JAX device(s), torch threads 2, "
    f"load average at start/end {load_start:.1f}/{os.getloadavg()[0]:.1f}; {versions}; "
    f"python {platform.python_version()}"
  )
  print(
    f"texts: {len(texts)} unique reports, {s['tokens'] / len(texts):.1f} tokens/report on average "
    f"(max {args.max_length}), batch {args.batch_size}; ours pads {s['padded_tokens']} token slots for "
    f"{s['tokens']} tokens in {s['shapes']} shapes; torch {torch_run.padded_tokens[False]} in data order, "
    f"{torch_run.padded_tokens[True]} sorted; "
    f"ours cold (compiling): {len(texts) / cold_s:.2f} reports/s\n"
  )
  base = statistics.median(times["torch BertModel, data order"])
  print("| implementation | reports/s (median) | min-max | vs torch data order |")
  print("|---|---|---|---|")
  for name, window_s in times.items():
    rates = [len(texts) / t for t in window_s]
    print(
      f"| {name} | {len(texts) / statistics.median(window_s):.2f} | {min(rates):.2f}-{max(rates):.2f} "
      f"| {base / statistics.median(window_s):.2f}x |"
    )


if __name__ == "__main__":
  main()
