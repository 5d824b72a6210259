"""Training metrics to DIR/metrics.jsonl (one JSON object per line) and TensorBoard (DIR/tb)."""

from __future__ import annotations

import json
import os


class MetricWriter:
  """Appends {"step": s, **metrics} lines; mirrors scalars to TensorBoard. Only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # imported here: only the writing process needs it
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(name.replace("@", "_at_"), value, step)  # TensorBoard tags allow no '@'

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
