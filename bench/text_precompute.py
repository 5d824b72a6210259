"""Reports/s of the text precompute against transformers' PyTorch model, side by side; and XLA's memory plan
of embedding with a Llama-3-8B-shaped model.

  python bench/text_precompute.py            # BERT-base shape, 256 reports, batch 64, 3 windows
  python bench/text_precompute.py --family llama   # a small random Llama-3-style model vs LlamaModel
  python bench/text_precompute.py --plan --cpu-devices 8   # Llama-3-8B shapes: bytes per device, nothing run

Both sides embed the same unique Japanese report texts with the same tokenizer, batch
size, max_length 128, float32 and mask-aware mean pooling, from the same random-weight
directory: BERT-base (12 layers, hidden 768, 12 heads, stand-in character vocabulary), or
with --family llama a Llama-3-style decoder (--llama-size: hidden, layers, heads, kv heads;
llama3 rope, 3 safetensors shards, the stand-in characters in a tokenizer.json).
Rows:
  ours           embed_texts end to end: tokenise, length buckets, forward, cache write
                 (a fresh cache directory per window, so nothing is read from cache)
  torch          the usual PyTorch loop: batches in data order, padded to their longest
  torch sorted   the PyTorch loop given our length-sorted batches (isolates the forward)
Windows alternate between the rows so background load hits all of them alike; the
figure is the median window. Ours is warmed up by one full run (it compiles one XLA
program per bucket shape); that cold run is reported too. torch uses 2 threads.

--plan compiles (never runs) the embedding of one batch with abstract Llama-3-8B parameters
(jax.ShapeDtypeStruct, bfloat16, nothing allocated) and prints XLA's plan per device:
parameters, batch and outputs, temporaries. Layouts: the weights split over all devices
along heads / MLP with the batch split too ("split weights, split batch", what the precompute
does), or with the batch replicated (tensor parallel), or everything on one device.
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
from ecg_contrastive.text.standin import write_random_llama, write_standin_model
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


TORCH_DATA_ORDER = "torch, data order"


class TorchBaseline:
  """transformers BertModel (or LlamaModel) forward + masked mean pooling, batches of `batch_size`."""

  def __init__(self, model_dir: str, batch_size: int, max_length: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    self.torch = torch
    self.model = AutoModel.from_pretrained(model_dir).eval()
    self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if self.tokenizer.pad_token is None:  # Llama-3 has none; padding is masked out
      self.tokenizer.pad_token = self.tokenizer.eos_token
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


LLAMA3_8B = (
  dict(  # meta-llama/Meta-Llama-3-8B's config.json (MedLlama3-JP-v2's base), as LlamaConfig fields
    vocab_size=128256,
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=14336,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
  )
)
GIB = 2**30
# (name, devices, weights split over the mesh, batch split over the mesh)
LAYOUTS = (
  ("split weights, split batch", 8, True, True),
  ("split weights, replicated batch (tensor parallel)", 8, True, False),
  ("replicated weights, split batch", 8, False, True),
  ("one device", 1, False, False),
)


def plan_rows(
  batch: int,
  length: int,
  devices: int,
  layouts=LAYOUTS,
  config: dict = LLAMA3_8B,
  dtype: str = "bfloat16",
) -> list[dict]:
  """XLA's memory plan per device of embedding a (batch, length) bfloat16 batch (mean pooling) with abstract
  parameters of `config`'s shapes, for each layout that fits in `devices`: compiled, never run."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from ecg_contrastive.models import llama
  from ecg_contrastive.models.pooling import pool
  from ecg_contrastive.sharding import data_sharding, make_mesh, replicated

  cfg = llama.LlamaConfig(**config)
  jdtype = jnp.dtype(dtype)
  module = llama.LlamaEncoder(cfg, cfg.num_hidden_layers, dtype=jdtype, param_dtype=jdtype)
  shapes = traverse_util.flatten_dict(llama.abstract_params(module), sep="/")
  weights = sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in shapes.values())
  embed = lambda params, ids, mask: pool(
    module.apply({"params": params}, ids, mask)[0], None, mask, "mean"
  )
  rows = []
  for name, n, split_weights, split_batch in layouts:
    if n > devices:
      continue
    mesh = make_mesh(jax.devices()[:n])
    params = traverse_util.unflatten_dict(
      {
        path: jax.ShapeDtypeStruct(
          v.shape,
          v.dtype,
          sharding=llama.param_sharding(path, v.shape, mesh) if split_weights else replicated(mesh),
        )
        for path, v in shapes.items()
      },
      sep="/",
    )
    rows_sharding = data_sharding(mesh) if split_batch else replicated(mesh)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows_sharding)
    start = time.perf_counter()
    compiled = jax.jit(embed).lower(params, ids, ids).compile()
    m = compiled.memory_analysis()
    total = (
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      + m.temp_size_in_bytes
      - m.alias_size_in_bytes
    )
    rows.append(
      dict(
        layout=name,
        devices=n,
        batch=batch,
        length=length,
        weights_gib=weights / GIB,
        arguments_gib=m.argument_size_in_bytes / GIB,
        temp_gib=m.temp_size_in_bytes / GIB,
        total_gib=total / GIB,
        compile_s=time.perf_counter() - start,
      )
    )
  return rows


def plan_table(batch: int, length: int, devices: int) -> list[dict]:
  """The bfloat16 plan of each layout, with the temporaries of the same program in float32 beside it.

  XLA:CPU has no bfloat16 matmul: it converts bfloat16 weights to float32 and hoists that
  conversion out of the layer loop, so its bfloat16 plan holds a float32 copy of every weight
  the device has (temporaries that grow with the layer count; GPUs and TPUs multiply bfloat16
  natively). The float32 program's temporaries do not grow with layers and bound the
  bfloat16 activations from above (same shapes, twice the bytes), so
  `accelerator_gib` = bfloat16 parameters + batch + float32 temporaries is an upper bound
  of the plan on a GPU or TPU.
  """
  bf16 = plan_rows(batch, length, devices)
  f32 = plan_rows(batch, length, devices, dtype="float32")
  for row, ref in zip(bf16, f32):
    row["f32_temp_gib"] = ref["temp_gib"]
    row["accelerator_gib"] = row["arguments_gib"] + ref["temp_gib"]
  return bf16


def print_plan(rows: list[dict]) -> None:
  print(
    f"\nLlama-3-8B shapes ({rows[0]['weights_gib']:.2f} GiB of bfloat16 weights, lm_head excluded), one batch "
    f"of {rows[0]['batch']} x {rows[0]['length']} tokens, mean pooling; XLA's plan per device (compiled, not run)"
  )
  print(
    "| layout | devices | bf16 parameters + batch | temporaries, bf16 on CPU | temporaries, f32 program "
    "| bound on GPU/TPU (bf16 + f32 temps) |"
  )
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['layout']} | {r['devices']} | {r['arguments_gib']:.2f} GiB | {r['temp_gib']:.2f} GiB "
      f"| {r['f32_temp_gib']:.2f} GiB | {r['accelerator_gib']:.2f} GiB |"
    )


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--num-texts", type=int, default=256)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument(
    "--model-dir", help="a local HF directory (default: a random model, see --family)"
  )
  parser.add_argument("--family", choices=("bert", "llama"), default="bert")
  parser.add_argument(
    "--llama-size",
    default="512,8,8,2",
    help="with --family llama: hidden,layers,heads,kv_heads of the random model",
  )
  parser.add_argument("--plan", action="store_true", help="the Llama-3-8B memory plan instead")
  parser.add_argument("--plan-batch", type=int, default=256, help="with --plan: rows per batch")
  parser.add_argument("--plan-length", type=int, default=128, help="with --plan: tokens per row")
  parser.add_argument(
    "--cpu-devices", type=int, default=0, help="virtual CPU devices (set before JAX starts)"
  )
  args = parser.parse_args()
  if args.cpu_devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={args.cpu_devices}"
    )
  if args.plan:
    import jax

    print_plan(plan_table(args.plan_batch, args.plan_length, len(jax.devices())))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {len(jax.devices())} device(s)")
    return

  load_start = os.getloadavg()[0]
  with tempfile.TemporaryDirectory(prefix="bench_text_") as work:
    run(args, work, load_start)


def _model_dir(args: argparse.Namespace, work: str) -> str:
  if args.model_dir:
    return args.model_dir
  if args.family == "llama":
    hidden, layers, heads, kv_heads = (int(x) for x in args.llama_size.split(","))
    return write_random_llama(
      f"{work}/model", hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads
    )
  return write_standin_model(f"{work}/model", hidden_size=768, num_layers=12, num_heads=12)


def run(args: argparse.Namespace, work: str, load_start: float) -> None:
  """Writes the model (unless given) and the caches under `work`; prints the table."""
  model_dir = _model_dir(args, work)
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
    TORCH_DATA_ORDER: lambda i: torch_run(texts, sort_by_length=False),
    "torch, our length-sorted batches": lambda i: torch_run(texts, sort_by_length=True),
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
  base = statistics.median(times[TORCH_DATA_ORDER])
  print(f"model: {type(torch_run.model).__name__} from {model_dir}")
  print(
    "| implementation | reports/s (median) | min-max | real tokens/s (median) | vs torch data order |"
  )
  print("|---|---|---|---|---|")
  for name, window_s in times.items():
    rates = [len(texts) / t for t in window_s]
    print(
      f"| {name} | {len(texts) / statistics.median(window_s):.2f} | {min(rates):.2f}-{max(rates):.2f} "
      f"| {s['tokens'] / statistics.median(window_s):.0f} | {base / statistics.median(window_s):.2f}x |"
    )


if __name__ == "__main__":
  main()
