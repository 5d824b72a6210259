"""Training metrics to WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard (WORKDIR/tb).

metrics.jsonl works on gs:// (no append there): the writer keeps the rows in memory and rewrites
the whole file on every write (local: temporary file + rename; gs://: one object), so a reader
always sees complete lines. On resume from step S, rows of the old file with step > S (steps
replayed after a crash or preemption) are dropped, so every step appears once.

TensorBoard is optional: without tensorboardX only metrics.jsonl is written (one warning). On a
remote workdir, event files are written to a local folder and copied to WORKDIR/tb on every write.
"""

from __future__ import annotations

import json
import logging
import os

from ecg_contrastive import paths

log = logging.getLogger(__name__)


class MetricWriter:
  """Writes {"step": s, **metrics} rows; mirrors scalars to TensorBoard. Only process 0 writes (enabled).

  resume_step: the step training resumes from (0 for a fresh run); rows of an existing
  metrics.jsonl with a larger step are dropped. None keeps every existing row.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    if not enabled:
      return
    self._path = paths.join(workdir, "metrics.jsonl")
    self._rows = _read_rows(self._path)
    if resume_step is not None:
      kept = [line for line in self._rows if json.loads(line).get("step", 0) <= resume_step]
      if len(kept) < len(self._rows):
        log.info(
          "metrics.jsonl: dropped %d row(s) after step %d (replayed after resume)",
          len(self._rows) - len(kept),
          resume_step,
        )
      self._rows = kept
    self._flush()
    self._tb, self._tb_remote = _open_tensorboard(workdir)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._rows.append(json.dumps({"step": step, **metrics}))
    self._flush()
    if self._tb is None:
      return
    for name, value in metrics.items():
      self._tb.add_scalar(name.replace("@", "_at_"), value, step)  # TensorBoard tags allow no '@'
    if self._tb_remote:
      self._tb.flush()
      _copy_files(self._tb.logdir, self._tb_remote)

  def close(self) -> None:
    if self.enabled and self._tb is not None:
      self._tb.close()
      if self._tb_remote:
        _copy_files(self._tb.logdir, self._tb_remote)

  def _flush(self) -> None:
    paths.write_text(self._path, "".join(row + "\n" for row in self._rows))


def _read_rows(path: str) -> list[str]:
  """The complete JSON lines of an existing metrics.jsonl (a torn last line is dropped)."""
  if not paths.exists(path):
    return []
  rows = []
  for line in paths.read_text(path).splitlines():
    try:
      json.loads(line)
    except ValueError:
      log.warning("metrics.jsonl: dropped an unreadable line %r", line[:80])
      continue
    rows.append(line)
  return rows


def _open_tensorboard(workdir: str):
  """(SummaryWriter or None, remote tb folder to copy event files to or None)."""
  try:
    from tensorboardX import SummaryWriter  # imported here: only the writing process needs it
  except ImportError:
    log.warning(
      "tensorboardX is not installed: writing metrics.jsonl only (pip install tensorboardX "
      "for TensorBoard event files)"
    )
    return None, None
  tb_dir = paths.join(workdir, "tb")
  if not paths.is_remote(workdir):
    return SummaryWriter(tb_dir), None
  local = paths.local_dir("tb", tb_dir)
  log.info(
    "TensorBoard: event files are written to %s and copied to %s at every metrics write",
    local,
    tb_dir,
  )
  return SummaryWriter(local), tb_dir


def _copy_files(local_dir: str, remote_dir: str) -> None:
  """Copies each file of local_dir (flat) to remote_dir, whole."""
  for name in sorted(os.listdir(local_dir)):
    with open(os.path.join(local_dir, name), "rb") as f:
      paths.write_bytes(paths.join(remote_dir, name), f.read())
