"""The figures issue 6 asks of one GPU run, checked against the results rows of `step` and `pipeline`.

At global batch 1024 on (5000, 12), ResNet1d-18: ours >= 30,000 ECG/s, >= 3x torch.compile measured
in the same run, and through the real input path >= 90% of ours on device-resident batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TARGET_BATCH = 1024
MIN_ECG_PER_S = 30_000.0
MIN_VS_TORCH_COMPILE = 3.0
MIN_PIPELINE_FRACTION = 0.9


def _verdict(ok: bool) -> str:
  return "met" if ok else "MISSED"


def check(
  step_rows: Sequence[dict[str, Any]], pipeline_rows: Sequence[dict[str, Any]] = ()
) -> list[str]:
  """One line per target: the measured figure, the target and whether it is met."""
  ours = [r for r in step_rows if r["impl"] == "jax (ours)" and r["batch"] == TARGET_BATCH]
  if not ours:
    return [f"no row of ours at batch {TARGET_BATCH}: targets not checked"]
  row = ours[0]
  if row["ecg_per_s"] is None:
    return [f"ours at batch {TARGET_BATCH} failed ({row.get('error')}): targets not checked"]
  lines = [
    f"ours at batch {TARGET_BATCH}: {row['ecg_per_s']:,.0f} ECG/s (target >= {MIN_ECG_PER_S:,.0f}): "
    f"{_verdict(row['ecg_per_s'] >= MIN_ECG_PER_S)}"
  ]
  vs = row.get("vs_torch_compile")
  lines.append(
    f"ours / torch.compile at batch {TARGET_BATCH}: "
    + (
      "not measured"
      if vs is None
      else f"{vs:.2f}x (target >= {MIN_VS_TORCH_COMPILE:.0f}x): "
      f"{_verdict(vs >= MIN_VS_TORCH_COMPILE)}"
    )
  )
  fed = [
    r
    for r in pipeline_rows
    if r["impl"] == "jax (ours), input pipeline" and r["batch"] == TARGET_BATCH
  ]
  lines.append(
    f"input pipeline / device-resident at batch {TARGET_BATCH}: "
    + (
      "not measured"
      if not fed
      else f"{fed[0]['fraction']:.2f} (target >= {MIN_PIPELINE_FRACTION:.2f}): "
      f"{_verdict(fed[0]['fraction'] >= MIN_PIPELINE_FRACTION)}"
    )
  )
  return lines
