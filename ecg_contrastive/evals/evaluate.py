"""Evaluation of a training state: zero-shot + retrieval on each eval split -> workdir/eval/<split>.json + PNG."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ecg_contrastive import paths
from ecg_contrastive import step as step_lib
from ecg_contrastive.data import pipeline
from ecg_contrastive.evals import plots
from ecg_contrastive.evals.retrieval import retrieval_metrics
from ecg_contrastive.evals.zeroshot import zero_shot_metrics
from ecg_contrastive.models.two_tower import TwoTower
from ecg_contrastive.sharding import replicated
from ecg_contrastive.text import precompute
from ecg_contrastive.vocab import terms


def make_ecg_encoder(model: TwoTower, mesh):
  """jit(variables, ecg, index, mask) -> (embeddings, index, mask), replicated so that every process
  holds the whole batch's embeddings and record indices. Compiled once, used for every split."""
  return jax.jit(
    lambda v, ecg, index, mask: (
      model.apply(v, step_lib.ecg_millivolts(ecg), method=TwoTower.encode_ecg),
      index,
      mask,
    ),
    out_shardings=replicated(mesh),
  )


def embed_split(
  encode, state: dict, source: pipeline.EcgSource, batch_size: int, embed_dim: int, mesh
) -> np.ndarray:
  """(N, E) unit-norm ECG embeddings of every record of a split, in record order (eval-mode BN)."""
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  out = np.zeros((len(source), embed_dim), np.float32)
  batches = pipeline.BatchIterator(
    source,
    global_batch_size=batch_size,
    mesh=mesh,
    seed=0,
    shuffle=False,
    drop_remainder=False,
    num_epochs=1,
  )
  for batch in batches:
    emb, index, mask = (
      np.asarray(x) for x in encode(variables, batch["ecg"], batch["index"], batch["mask"])
    )
    out[index[mask]] = emb[mask]
  return out


def evaluate(
  *,
  config: ml_collections.ConfigDict,
  model: TwoTower,
  state: dict,
  sources: dict[str, pipeline.EcgSource],
  table: precompute.TextTable,
  label_emb: np.ndarray,
  labels: list[terms.Term],
  mesh,
  workdir: str,
) -> dict[str, dict]:
  """Zero-shot + retrieval metrics of each split of config.eval_splits (records of `sources`, reports embedded in
  `table`, label prompts `label_emb` of `labels`); process 0 writes workdir/eval/<split>.json and a PNG and prints
  the summary."""
  params = state["params"]
  project = jax.jit(lambda p, x: model.apply({"params": p}, x, method=TwoTower.encode_text))
  z_labels = np.asarray(project(params, jnp.asarray(label_emb)))
  encode = make_ecg_encoder(model, mesh)
  if jax.process_index() == 0:
    paths.makedirs(paths.join(workdir, "eval"))
  results = {}
  for split in config.eval_splits:
    source = sources[split]
    z_ecg = embed_split(encode, state, source, config.eval_batch_size, model.embed_dim, mesh)
    meta = source.meta
    metrics = zero_shot_metrics(
      z_ecg,
      z_labels,
      [t.ja for t in labels],
      [t.group_ja for t in labels],
      meta.primary_label,
      meta.labels,
    )
    split_reports = sorted(set(meta.reports))
    z_reports = np.asarray(
      project(params, jnp.asarray(table.embeddings[table.rows(split_reports)]))
    )
    local_row = {r: i for i, r in enumerate(split_reports)}
    metrics.update(
      retrieval_metrics(z_ecg, z_reports, np.array([local_row[r] for r in meta.reports]))
    )
    metrics["step"] = int(state["step"])
    results[split] = metrics
    if jax.process_index() == 0:
      paths.write_text(
        paths.join(workdir, "eval", f"{split}.json"),
        json.dumps(metrics, ensure_ascii=False, indent=1),
      )
      plots.plot_per_label(
        metrics,
        paths.join(workdir, "eval", f"{split}_per_label.png"),
        f"{config.dataset} {split} @ step {metrics['step']}",
      )
      print(plots.format_summary(split, metrics), flush=True)
  return results
