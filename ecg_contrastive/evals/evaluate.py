"""Evaluation of a training state: zero-shot over each label set + retrieval on each eval split.

Writes, into `out_dir` (training: WORKDIR/eval; `--mode eval`: WORKDIR/eval/<dataset>):
  <split>.json, <split>_per_label.png                     the default label set (the 98 terms)
  <split>.<label set>.json, <split>.<label set>_per_label.png   any other label set
  <split>[.<label set>].scores.npz                        record_id, labels, scores (N, L): the cosine similarities
and appends one row per (dataset, split, label set, step) to WORKDIR/eval/results.csv (RESULTS_COLUMNS).
Process 0 writes; every process computes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ecg_contrastive import paths
from ecg_contrastive import step as step_lib
from ecg_contrastive.data import pipeline
from ecg_contrastive.evals import plots
from ecg_contrastive.evals.label_sets import DEFAULT, LabelSet, load_label_sets
from ecg_contrastive.evals.retrieval import retrieval_metrics
from ecg_contrastive.evals.zeroshot import label_set_metrics
from ecg_contrastive.models.two_tower import TwoTower
from ecg_contrastive.sharding import replicated
from ecg_contrastive.text import precompute, setup

log = logging.getLogger("ecg_contrastive")

RESULTS_COLUMNS = (
  "time",
  "mode",
  "dataset",
  "split",
  "label_set",
  "step",
  "n",
  "num_labels",
  "macro_auroc",
  "macro_auroc_labels",
  "labels_without_positives",
  "n_with_primary",
  "top1",
  "top5",
  "superset_top1",
  "ecg_to_report_r@1",
  "report_to_ecg_r@1",
)


def make_ecg_encoder(model: TwoTower, mesh):
  """jit(variables, ecg, index, mask) -> (embeddings, index, mask), replicated so that every process
  holds the whole batch's embeddings and record indices. Compiled once, used for every split."""

  def encode_ecg_batch(v, ecg, index, mask):
    return model.apply(v, step_lib.ecg_millivolts(ecg), method=TwoTower.encode_ecg), index, mask

  return jax.jit(encode_ecg_batch, out_shardings=replicated(mesh))


class Encoders:
  """The jitted ECG and text projections of one model on one mesh: build once, evaluate many times (a training
  run's periodic evaluation compiles each only once per input shape)."""

  def __init__(self, model: TwoTower, mesh):
    self.model, self.mesh = model, mesh
    self.ecg = make_ecg_encoder(model, mesh)

    def project_text(params, text_emb):
      return model.apply({"params": params}, text_emb, method=TwoTower.encode_text)

    self.text = jax.jit(project_text)


@dataclasses.dataclass
class PreparedLabelSet:
  """A label set with the frozen text tower's embeddings of its prompts."""

  label_set: LabelSet
  prompt_emb: (
    np.ndarray
  )  # float32 (P, D): rows of label_set.prompt_texts(), averaged over templates


def prepare_label_sets(
  config: ml_collections.ConfigDict, default_emb: np.ndarray | None = None
) -> list[PreparedLabelSet]:
  """The label sets of config.eval.label_set (default: the 98 terms) with their prompts embedded by the
  config's text tower; `default_emb`: the 98 terms' prompt embeddings when already computed."""
  spec = config.get("eval", {}).get("label_set", DEFAULT)
  out = []
  for label_set in load_label_sets(spec):
    if label_set.name == DEFAULT and default_emb is not None:
      emb = default_emb  # the same texts and templates: embed_texts embedded them already
    else:
      emb = setup.embed_prompts(config, label_set.prompt_texts())
    out.append(PreparedLabelSet(label_set, np.asarray(emb, np.float32)))
  return out


def label_embeddings(encoders: Encoders, params, prepared: PreparedLabelSet) -> np.ndarray:
  """(L, E) unit-norm label embeddings: each prompt projected into the joint space; a label with several
  prompts is the renormalised mean of theirs."""
  z = np.asarray(encoders.text(params, jnp.asarray(prepared.prompt_emb)))
  row = {t: i for i, t in enumerate(prepared.label_set.prompt_texts())}
  out = []
  for prompts in prepared.label_set.prompts:
    if len(prompts) == 1:
      out.append(z[row[prompts[0]]])
    else:
      mean = z[[row[p] for p in prompts]].mean(axis=0)
      out.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
  return np.stack(out).astype(np.float32)


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


def file_stem(split: str, label_set: str) -> str:
  """<split> for the default label set, <split>.<label set> for any other."""
  return split if label_set == DEFAULT else f"{split}.{label_set}"


def evaluate(
  *,
  config: ml_collections.ConfigDict,
  model: TwoTower,
  state: dict,
  sources: dict[str, pipeline.EcgSource],
  table: precompute.TextTable,
  label_sets: list[PreparedLabelSet],
  mesh,
  out_dir: str,
  results_csv: str | None = None,
  mode: str = "train",
  encoders: Encoders | None = None,
) -> dict[str, dict[str, dict]]:
  """{split: {label set: metrics}} of each split of config.eval_splits (records of `sources`, reports embedded
  in `table`): zero-shot over each label set, retrieval of the split's reports. Process 0 writes the json and PNG
  of each (split, label set) into out_dir, appends a row to `results_csv` and prints the summary. A label set of
  which no record of the split carries a label gets retrieval metrics only (said in the log and the json).
  `encoders`: pass the same one to every call of a run (compiled once)."""
  encoders = encoders or Encoders(model, mesh)
  params, step = state["params"], int(state["step"])
  z_sets = [label_embeddings(encoders, params, p) for p in label_sets]
  writer = jax.process_index() == 0
  if writer:
    paths.makedirs(out_dir)
  results = {}
  for split in config.eval_splits:
    source = sources[split]
    z_ecg = embed_split(encoders.ecg, state, source, config.eval_batch_size, model.embed_dim, mesh)
    meta = source.meta
    split_reports = sorted(set(meta.reports))
    z_reports = np.asarray(
      encoders.text(params, jnp.asarray(table.embeddings[table.rows(split_reports)]))
    )
    local_row = {r: i for i, r in enumerate(split_reports)}
    retrieval = retrieval_metrics(z_ecg, z_reports, np.array([local_row[r] for r in meta.reports]))
    results[split] = {}
    for prepared, z_labels in zip(label_sets, z_sets):
      ls = prepared.label_set
      metrics = label_set_metrics(
        z_ecg, z_labels, ls.labels, ls.terms, ls.groups, meta.primary_label, meta.labels
      )
      header = {"dataset": config.dataset, "split": split, "label_set": ls.name, "step": step}
      if not metrics["per_label"]:
        note = (
          f"no record of {config.dataset} {split} carries a label of label set {ls.name!r}: "
          "retrieval metrics only"
        )
        log.warning("%s", note)
        metrics = {"n": metrics["n"], "num_labels": len(ls), "zero_shot": None, "note": note}
      metrics = {**header, **metrics, **retrieval}
      results[split][ls.name] = metrics
      if writer:
        _write(metrics, out_dir, results_csv, mode, config.dataset)
        _write_scores(out_dir, metrics, meta.record_id, z_ecg @ z_labels.T, ls)
  return results


def _write(metrics: dict, out_dir: str, results_csv: str | None, mode: str, dataset: str) -> None:
  stem = file_stem(metrics["split"], metrics["label_set"])
  paths.write_text(
    paths.join(out_dir, f"{stem}.json"), json.dumps(metrics, ensure_ascii=False, indent=1)
  )
  if metrics.get("per_label"):
    plots.plot_per_label(
      metrics,
      paths.join(out_dir, f"{stem}_per_label.png"),
      f"{dataset} {metrics['split']} ({metrics['label_set']}) @ step {metrics['step']}",
    )
  print(plots.format_summary(f"{metrics['split']} / {metrics['label_set']}", metrics), flush=True)
  if results_csv:
    append_result(results_csv, {**metrics, "mode": mode})


def _write_scores(out_dir: str, metrics: dict, record_id, scores: np.ndarray, ls: LabelSet) -> None:
  """<stem>.scores.npz: record_id (N,), labels (L,), scores float32 (N, L) cosine similarities, for one's own
  statistics (bootstrap intervals, other metrics)."""
  buffer = io.BytesIO()
  np.savez_compressed(
    buffer,
    record_id=np.array(record_id),
    labels=np.array(ls.labels),
    scores=scores.astype(np.float32),
  )
  stem = file_stem(metrics["split"], metrics["label_set"])
  paths.write_bytes(paths.join(out_dir, f"{stem}.scores.npz"), buffer.getvalue())


def append_result(path: str, metrics: dict) -> None:
  """Appends one row of RESULTS_COLUMNS to the csv at `path` (header first when new; works on gs://)."""
  row = {
    k: ("" if metrics.get(k) is None else metrics.get(k, ""))
    for k in RESULTS_COLUMNS
    if k != "time"
  }
  row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
  if isinstance(metrics.get("labels_without_positives"), list):
    row["labels_without_positives"] = len(metrics["labels_without_positives"])
  old = paths.read_text(path) if paths.exists(path) else ""
  out = io.StringIO()
  w = csv.DictWriter(out, RESULTS_COLUMNS, lineterminator="\n")
  if not old:
    w.writeheader()
  w.writerow(row)
  paths.write_text(path, old + out.getvalue())
