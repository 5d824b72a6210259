"""How many worker processes the builders use to generate or read records: one home for every builder."""

from __future__ import annotations

import os


def worker_count() -> int:
  """Worker processes for generating or reading records: ECG_CONTRASTIVE_WORKERS (default 2)."""
  value = os.environ.get("ECG_CONTRASTIVE_WORKERS", "2")
  if not value.isdigit() or int(value) < 1:
    raise ValueError(
      f"ECG_CONTRASTIVE_WORKERS={value!r}: use a positive integer (1 = no worker processes)"
    )
  return int(value)
