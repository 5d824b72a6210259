"""ECG/s delivered as sharded global batches, side by side with the plain per-record TFDS read.

  python bench/input_pipeline.py                                  # demo train split, batch 256, 8 CPU devices
  python bench/input_pipeline.py --dataset synthetic_ecg_ja/tiny --batches 20 --generate 0

Rows (same run, same split, same random record order; int16 (5000, 12) per ECG):
  tfds per-record   tfds.data_source(...)[i]['ecg'] one record at a time, stacked into batches
                    on the host (proto decoding per record): what a plain input loop does
  tfds getitems     the data source's batch read (__getitems__), stacked: still per-record decoding
  pipeline          BatchIterator: global jax.Array batches sharded over the mesh axis 'data'
                    (8 virtual CPU devices by default), prefetched by its reader thread; each
                    batch is block_until_ready'd; the consumer does nothing else
Each row runs `--windows` timed windows after a warm-up; the figure is the median window.
--generate N also times the synthetic generator on N records (1 process; the builder uses 2).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="synthetic_ecg_ja/demo")
  parser.add_argument("--split", default="train")
  parser.add_argument(
    "--data_dir",
    default=None,
    help="default: $ECG_CONTRASTIVE_DATA or ~/.cache/ecg_contrastive/tfds",
  )
  parser.add_argument("--batch", type=int, default=256, help="global batch size")
  parser.add_argument("--batches", type=int, default=40, help="batches per timed window")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--devices", type=int, default=8, help="virtual CPU devices in the mesh")
  parser.add_argument(
    "--generate", type=int, default=20_000, help="records to time the generator on (0: skip)"
  )
  return parser.parse_args()


def main() -> None:
  args = _args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
  ).strip()
  import jax
  import numpy as np
  import tensorflow_datasets as tfds

  from ecg_contrastive.data import pipeline
  from ecg_contrastive.data.synthetic import synth

  print(
    f"python {platform.python_version()}, jax {jax.__version__}, {os.cpu_count()} CPU cores, "
    f"{jax.device_count()} devices; {args.dataset}:{args.split}, global batch {args.batch}; "
    f"load average {os.getloadavg()[0]:.1f}",
    flush=True,
  )
  rows = []
  if args.generate:
    start = time.perf_counter()
    for _ in synth.generate_split(0, "train", args.generate):
      pass
    elapsed = time.perf_counter() - start
    rows.append(
      (f"generate {args.generate} records (1 process)", args.generate / elapsed, f"{elapsed:.1f} s")
    )

  data_dir = args.data_dir or pipeline.data_dir_default()
  start = time.perf_counter()
  source = pipeline.open_source(args.dataset, args.split, data_dir)
  print(
    f"open_source: {len(source)} records in {time.perf_counter() - start:.1f} s (build/cache if first)",
    flush=True,
  )
  order = np.random.default_rng(0).permutation(
    len(source)
  )  # random records, as a shuffled epoch reads them
  plain = tfds.data_source(args.dataset, split=args.split, data_dir=data_dir)

  def plain_window(batch_read: bool):
    def run() -> float:
      starts = np.random.default_rng(len(rows)).integers(0, len(order) - args.batch, args.batches)
      start = time.perf_counter()
      for s in starts:
        indices = [int(i) for i in order[s : s + args.batch]]
        examples = plain.__getitems__(indices) if batch_read else [plain[i] for i in indices]
        ecg = np.stack([e["ecg"] for e in examples])
        assert ecg.shape == (args.batch, 5000, 12)
      return args.batches * args.batch / (time.perf_counter() - start)

    return run

  rows.append(("tfds per-record", *_median(args.windows, plain_window(False))))
  rows.append(("tfds getitems", *_median(args.windows, plain_window(True))))

  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  batches = pipeline.BatchIterator(
    source, global_batch_size=args.batch, mesh=mesh, seed=0, prefetch=2
  )
  for _ in range(3):
    next(batches)["ecg"].block_until_ready()

  def pipeline_window() -> float:
    start = time.perf_counter()
    for _ in range(args.batches):
      next(batches)["ecg"].block_until_ready()
    return args.batches * args.batch / (time.perf_counter() - start)

  rows.append((f"pipeline ({jax.device_count()} devices)", *_median(args.windows, pipeline_window)))
  print(
    f"host buffers reused: {batches.reuses_host_buffers}; load average at the end {os.getloadavg()[0]:.1f}"
  )
  batches.close()

  baseline = next(rate for name, rate, _ in rows if name == "tfds per-record")
  print("\n| path | ECG/s | MB/s | x per-record | windows |\n|---|---|---|---|---|")
  for name, rate, detail in rows:
    if name.startswith("generate"):
      print(f"| {name} | {rate:,.0f} | | | {detail} |")
    else:
      print(
        f"| {name} | {rate:,.0f} | {rate * 120_000 / 1e6:,.0f} | {rate / baseline:.1f}x | {detail} |"
      )
  sys.stdout.flush()


def _median(windows: int, run) -> tuple[float, str]:
  """(median rate, all window rates as text) of `windows` calls of run()."""
  rates = [run() for _ in range(windows)]
  return statistics.median(rates), " / ".join(f"{r:,.0f}" for r in rates)


if __name__ == "__main__":
  main()
