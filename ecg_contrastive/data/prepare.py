r"""Builds a dataset, and what each split is read through, without training: a pod's data is made once, first.

  python -m ecg_contrastive.data.prepare synthetic_ecg_ja/demo
  python -m ecg_contrastive.data.prepare ptbxl --source-dir /data/ptb-xl-1.0.3 --data-dir /data/tfds
  python -m ecg_contrastive.data.prepare mimic_iv_ecg --source-dir /data/mimic-iv-ecg --host-read stream
  python -m ecg_contrastive.data.prepare synthetic_ecg_ja/demo --data-dir gs://bucket/tfds --host-read stream

Writes the TFDS ArrayRecord shards (the project's TensorFlow-free builder path: no `tfds build`), then per
split the int16 cache (--host-read cache, the default: a full decoded copy, memory-mapped by training) or
only the record index (--host-read stream: the metadata and the skipped records, no waveforms; training
then reads the shards). Prints, per split, the records, the records skipped with their reasons, the bytes
and the paths. What is there already and matches the dataset is not rebuilt: a second run changes nothing.

On a gs:// --data-dir the shards must be there already (array_record writes local files: build into a
local folder, copy it; docs/data.md); the record index is then written beside them, for every host.
With --distributed (every process of a multi-host job runs it) process 0 writes each file while the
others wait, as training does; otherwise run it on one machine. A user's mistake (unknown dataset or
split, missing source folder) is one line, `error: ...`, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from ecg_contrastive import paths
from ecg_contrastive.data import cache, pipeline, streaming
from ecg_contrastive.errors import DataError, UserError, exit_code

MAX_SKIPS_SHOWN = 10


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m ecg_contrastive.data.prepare",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("dataset", help="name or name/config, e.g. synthetic_ecg_ja/demo, ptbxl")
  parser.add_argument(
    "--data-dir", default="", help="TFDS data dir ('' -> $ECG_CONTRASTIVE_DATA or ~/.cache/...)"
  )
  parser.add_argument(
    "--source-dir", default="", help="folder of the raw records (ptbxl, mimic_iv_ecg, ecg_manifest)"
  )
  parser.add_argument(
    "--splits", default="", help="comma-separated splits to prepare ('' -> all of the dataset's)"
  )
  parser.add_argument(
    "--host-read",
    default="cache",
    choices=pipeline.HOST_READS,
    help="what training will read (config.data.host_read): 'cache' builds the int16 cache, "
    "'stream' only the record index",
  )
  parser.add_argument(
    "--distributed",
    action="store_true",
    help="jax.distributed.initialize() first: process 0 writes, the others wait",
  )
  parser.add_argument("--verbose", action="store_true", help="tracebacks and INFO logs")
  return parser.parse_args(argv)


def _check_dataset(dataset: str, source_dir: str) -> None:
  """DataError for an unknown dataset or variant, or a source folder that does not exist."""
  name, _, variant = dataset.partition("/")
  known = pipeline.known_datasets()
  if name not in known:
    raise DataError(f"unknown dataset {dataset!r}; known datasets: {sorted(known)}")
  variants = [c.name for c in getattr(known[name], "BUILDER_CONFIGS", None) or []]
  if variant and variant not in variants:
    raise DataError(
      f"{name} has no variant {variant!r}; use one of "
      + (", ".join(f"{name}/{v}" for v in variants) or name)
    )
  if source_dir and not os.path.isdir(os.path.expanduser(source_dir)):
    raise DataError(f"--source-dir {source_dir}: no such folder")


def _size(p: str) -> int:
  return paths.path(p).stat().length if paths.exists(p) else 0


def prepare(
  dataset: str,
  data_dir: str | None = None,
  source_dir: str | None = None,
  splits: Sequence[str] = (),
  host_read: str = "cache",
) -> dict:
  """Builds what is missing; returns what there is: {'dataset', 'version', 'folder', 'built' (the shards were
  missing: built now, by this process or process 0), 'seconds', 'splits': [{'split', 'records', 'skipped'
  (list), 'shard_bytes', 'shards', 'file' (cache .npy or record index), 'file_bytes', 'built' (that file)}]}."""
  import tensorflow_datasets as tfds

  _check_dataset(dataset, source_dir or "")
  start = time.perf_counter()
  root = os.fspath(paths.path(data_dir)) if data_dir else pipeline.data_dir_default()
  missing = not tfds.builder(dataset, data_dir=root, file_format="array_record").is_prepared()
  builder, _ = pipeline.prepare_dataset(dataset, data_dir, source_dir)
  have = sorted(builder.info.splits)
  unknown = [s for s in splits if s not in have]
  if unknown:
    raise DataError(f"{dataset}: no split(s) {unknown}; it has {have}")
  rows = []
  for split in splits or have:
    if host_read == "cache":
      ready, file = cache.is_built(builder, split), cache.cache_files(builder, split)[0]
    else:
      ready = streaming.is_indexed(builder, split)
      file = streaming.index_path(str(builder.data_dir), split)
    source = pipeline.open_source(dataset, split, data_dir, source_dir, host_read=host_read)
    if host_read == "stream":
      source.close()
    shards = [str(p) for p in builder.info.splits[split].filepaths]
    rows.append(
      {
        "split": split,
        "records": len(source),
        "skipped": source.skipped,
        "shards": len(shards),
        "shard_bytes": sum(_size(p) for p in shards),
        "file": file,
        "file_bytes": _size(file),
        "built": not ready,
      }
    )
  return {
    "dataset": dataset,
    "version": str(builder.version),
    "folder": str(builder.data_dir),
    "built": missing,
    "seconds": time.perf_counter() - start,
    "host_read": host_read,
    "splits": rows,
  }


def _mb(n: int) -> str:
  return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def report(done: dict, process: int = 0) -> str:
  """What prepare() built and found, as lines for a terminal (`process`: this JAX process's index)."""
  built = "built" if process == 0 else "built by process 0"
  what = "int16 cache" if done["host_read"] == "cache" else "record index"
  lines = [
    f"{done['dataset']} {done['version']} in {done['folder']}: shards "
    f"{built if done['built'] else 'already there'}; {what} per split "
    f"(host_read={done['host_read']}); {done['seconds']:.1f} s",
    f"{'split':<12}{'records':>9}{'skipped':>9}{'shards':>8}{'shard bytes':>14}  {what}",
  ]
  for row in done["splits"]:
    lines.append(
      f"{row['split']:<12}{row['records']:>9,}{len(row['skipped']):>9,}{row['shards']:>8}"
      f"{_mb(row['shard_bytes']):>14}  {built if row['built'] else 'already there'}, "
      f"{_mb(row['file_bytes'])}: {row['file']}"
    )
  skips = [(row["split"], s) for row in done["splits"] for s in row["skipped"]]
  lines.append(f"skipped records: {len(skips) or 'none'}")
  for split, s in skips[:MAX_SKIPS_SHOWN]:
    where = (
      f"record {s['index']}" if s.get("index") is not None else f"at {s.get('stage', 'build')}"
    )
    lines.append(f"  {split} {where} {s['record_id']}: {s['reason']}")
  if len(skips) > MAX_SKIPS_SHOWN:
    lines.append(
      f"  ... {len(skips) - MAX_SKIPS_SHOWN} more: the split's EcgSource.skipped, "
      f"{os.path.join(done['folder'], cache.BUILD_SKIPS_FILE)} and the {what}'s .meta.json"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = _args(argv)
  logging.basicConfig(
    level=logging.INFO if args.verbose else logging.WARNING,
    format="%(asctime)s %(name)s %(levelname)s %(message)s",
  )
  # ImportError: gs:// without gcsfs
  return exit_code(lambda: _run(args), args.verbose, (UserError, FileNotFoundError, ImportError))


def _run(args: argparse.Namespace) -> int:
  if args.distributed:
    from ecg_contrastive.sharding import init_distributed

    init_distributed()
  done = prepare(
    args.dataset,
    args.data_dir or None,
    args.source_dir or None,
    [s for s in args.splits.split(",") if s],
    args.host_read,
  )
  import jax

  print(report(done, jax.process_index()), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
