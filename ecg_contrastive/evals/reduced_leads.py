"""Zero-shot accuracy with fewer leads: the other leads zeroed, as a recording without them would arrive.

  python -m ecg_contrastive.evals.reduced_leads --workdir runs/demo [--split test] [--step N]

prints a Markdown table of top-1 / top-5 for LEAD_SETS (12; 6 limb; 3: I, II, V2; 2: I, II; 1: II; the 3- and 2-lead
sets are those of the PhysioNet/CinC Challenge 2021) on a split of the run's own dataset. A model trained with
config.model.lead_mask sees the zeroed leads as absent; one without it sees flat leads it never met in training.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ecg_contrastive.checkpoints import restore_inference
from ecg_contrastive.data import pipeline
from ecg_contrastive.ecg import signal
from ecg_contrastive.evals.zeroshot import zero_shot_metrics
from ecg_contrastive.models.two_tower import TwoTower

LEAD_SETS = {
  "12": signal.LEADS,
  "6 (limb)": ("I", "II", "III", "aVR", "aVL", "aVF"),
  "3 (I, II, V2)": ("I", "II", "V2"),
  "2 (I, II)": ("I", "II"),
  "1 (II)": ("II",),
}
BATCH = 256


def keep_mask(leads: tuple[str, ...]) -> np.ndarray:
  """(12,) float32: 1 for the leads kept, 0 for those zeroed."""
  return np.array([lead in leads for lead in signal.LEADS], np.float32)


def reduced_lead_metrics(
  workdir: str, split: str = "test", step: int | None = None
) -> dict[str, dict]:
  """{lead set name: {"top1", "top5", "n"}} of the workdir's checkpoint on `split` of its dataset (float32)."""
  inference = restore_inference(workdir, step)
  config = inference.config
  source = pipeline.open_source(
    config.dataset,
    split,
    config.get("data_dir") or None,
    source_dir=config.get("source_dir") or None,
  )
  model = inference.model.clone(dtype=jnp.float32)
  params = {"params": inference.variables["params"]}
  z_labels = np.asarray(
    model.apply(params, inference.label_text_embeddings, method=TwoTower.encode_text)
  )
  embed = jax.jit(
    lambda v, ecg, keep: model.apply(
      v, signal.to_millivolts(ecg) * keep, method=TwoTower.encode_ecg
    )
  )
  meta = source.meta
  results = {}
  for name, leads in LEAD_SETS.items():
    keep = jnp.asarray(keep_mask(leads))
    z = np.concatenate(
      [
        np.asarray(
          embed(inference.variables, source.read(np.arange(i, min(i + BATCH, len(source)))), keep)
        )
        for i in range(0, len(source), BATCH)
      ]
    )
    metrics = zero_shot_metrics(
      z,
      z_labels,
      [t["ja"] for t in inference.labels],
      [t["group_ja"] for t in inference.labels],
      meta.primary_label,
      meta.labels,
    )
    results[name] = {"top1": metrics["top1"], "top5": metrics["top5"], "n": len(source)}
  return results


def format_table(results: dict[str, dict], title: str) -> str:
  lines = [f"| {title} | top-1 | top-5 |", "|---|---:|---:|"]
  lines += [f"| {name} | {m['top1']:.3f} | {m['top5']:.3f} |" for name, m in results.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", default="test")
  parser.add_argument("--step", type=int, default=None)
  args = parser.parse_args(argv)
  results = reduced_lead_metrics(args.workdir, args.split, args.step)
  n = next(iter(results.values()))["n"]
  print(format_table(results, f"leads ({args.split}, {n} records)"))


if __name__ == "__main__":
  main()
