"""Where a figure came from (machine, card, date, command, versions) and how results are written:
a Markdown table for the terminal and BENCHMARKS.md, plus PREFIX.json (meta + rows) and PREFIX.csv.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy")
ENV_VARS = (
  "XLA_FLAGS",
  "XLA_PYTHON_CLIENT_MEM_FRACTION",
  "XLA_PYTHON_CLIENT_PREALLOCATE",
  "JAX_PLATFORMS",
)


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment(devices: Sequence[Any]) -> dict[str, Any]:
  """Machine, accelerator, date, command and package versions for a results file.

  devices: the JAX devices the run used.
  """
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
    "platform": devices[0].platform,
    "device": devices[0].device_kind,
    "num_devices": len(devices),
    "cpu": f"{_cpu_model()} x {os.cpu_count()}",
    "load_average_1m": os.getloadavg()[0],  # other work on the host skews CPU figures
    "python": platform.python_version(),
    "versions": {p: _version(p) for p in PACKAGES},
    "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
  }


Column = tuple[str, str, str]  # (row key, header, format spec)


def _cell(value: Any, spec: str) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  return format(value, spec) if spec else str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
  """A Markdown table; missing or non-finite figures read 'n/a'."""
  cells = [[header for _, header, _ in columns]]
  cells += [[_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
  lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
  return "\n".join(lines)


def format_meta(meta: dict[str, Any]) -> str:
  """One paragraph: card, date, command and versions, to go with a table."""
  versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
  return (
    f"{meta['device']} x {meta['num_devices']} ({meta['platform']}; host {meta['cpu']}, load average "
    f"{meta['load_average_1m']:.1f}), {meta['date']}\n"
    f"command: {meta['command']}\nversions: python {meta['python']}, {versions}"
  )


def write_results(
  prefix: str, meta: dict[str, Any], rows: Sequence[dict[str, Any]], columns: Sequence[Column]
) -> list[str]:
  """Writes PREFIX.json ({meta, columns, rows}) and PREFIX.csv (the table's columns); returns the paths."""
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  with open(prefix + ".json", "w", encoding="utf-8") as f:
    json.dump(
      {"meta": meta, "columns": [list(c) for c in columns], "rows": list(rows)}, f, indent=1
    )
  with open(prefix + ".csv", "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([key for key, _, _ in columns])
    writer.writerows([[row.get(key) for key, _, _ in columns] for row in rows])
  return [prefix + ".json", prefix + ".csv"]


def read_results(path: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[Column]]:
  """(meta, rows, columns) of a PREFIX.json written by write_results."""
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  return data["meta"], data["rows"], [tuple(c) for c in data["columns"]]
