"""The OOD reference (models/ood.py) of a workdir or an export folder, read and copied through paths.py."""

from __future__ import annotations

from ecg_contrastive import paths
from ecg_contrastive.models import ood


def load(folder: str) -> ood.Reference | None:
  """The reference in `folder` (ood.safetensors + ood.json), or None when it has none."""
  weights, meta = paths.join(folder, ood.WEIGHTS), paths.join(folder, ood.META)
  if not (paths.exists(weights) and paths.exists(meta)):
    return None
  return ood.from_bytes(paths.read_bytes(weights), paths.read_bytes(meta))


def save(folder: str, reference: ood.Reference) -> None:
  """Writes the reference's two files into `folder`."""
  for name, data in ood.to_bytes(reference).items():
    paths.write_bytes(paths.join(folder, name), data)
