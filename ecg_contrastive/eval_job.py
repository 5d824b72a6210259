"""evaluate_checkpoint(config, workdir, step): `--mode eval`, a trained checkpoint on any dataset and label set.

    python -m ecg_contrastive.main --mode eval --workdir runs/demo --config configs/default.py \
        --config.dataset=ptbxl --config.source_dir=/data/ptb-xl-1.0.3 --config.eval.label_set=ptbxl_superclass

The model (config.model, config.train) and the text tower (config.text, but its cache_dir) are the run's own
(WORKDIR/config.json): the checkpoint and the label prompts must come from the same towers. The data and the
evaluation come from `config`: dataset, data_dir, source_dir, eval_splits, eval_batch_size, eval.label_set.
Only the parameters and the BatchNorm statistics are read from the checkpoint (no optimizer state, no data
iterator state), onto a mesh of this machine's devices: any dataset, any number of devices. Writes
WORKDIR/eval/<dataset>/<split>[.<label set>].json + PNG and appends to WORKDIR/eval/results.csv (process 0).
"""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import ml_collections

from ecg_contrastive import checkpoints, paths
from ecg_contrastive.config_check import ConfigError, check_config
from ecg_contrastive.data import pipeline
from ecg_contrastive.ecg.signal import NUM_LEADS, NUM_SAMPLES
from ecg_contrastive.evals.evaluate import Encoders, evaluate, label_embeddings, prepare_label_sets
from ecg_contrastive.evals.label_sets import load_label_sets
from ecg_contrastive.models import two_tower
from ecg_contrastive.sharding import batch_sizes, make_mesh, replicated
from ecg_contrastive.text.setup import embed_texts
from ecg_contrastive.vocab import terms

log = logging.getLogger("ecg_contrastive")

RUN_KEYS = ("model", "train", "text")  # taken from the run's config.json


def eval_config(
  config: ml_collections.ConfigDict, run_config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """`config` with the model and text tower of the run (RUN_KEYS; text.cache_dir stays `config`'s)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key in RUN_KEYS:
    if key not in run_config:
      continue
    theirs = run_config[key].to_dict() if hasattr(run_config[key], "to_dict") else run_config[key]
    if key == "text":
      theirs = {**theirs, "cache_dir": config.text.cache_dir}
    mine = out[key].to_dict() if hasattr(out[key], "to_dict") else out[key]
    if json.loads(json.dumps(mine)) != json.loads(json.dumps(theirs)):  # tuples and lists alike
      log.info("config.%s: the run's own (%s), not the command line's", key, theirs)
    out[key] = theirs
  return out


def _restore(config, workdir: str, step: int | None, text_dim: int, mesh, model=None):
  """(step, {"params", "batch_stats"}) of the checkpoint, replicated on `mesh`."""
  model = model or two_tower.from_config(config)
  shapes = jax.eval_shape(
    lambda rng: model.init(
      rng,
      jnp.zeros((2, NUM_SAMPLES, NUM_LEADS), jnp.float32),
      jnp.zeros((2, text_dim), jnp.float32),
      train=False,
    ),
    jax.random.PRNGKey(0),
  )
  abstract = jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), dict(shapes)
  )
  return checkpoints.restore_variables(workdir, abstract, step)


def write_label_sets(
  config: ml_collections.ConfigDict, workdir: str, folder: str, step: int | None = None
) -> list[str]:
  """Writes each label set of config.eval.label_set into the export folder `folder` as
  label_sets/<name>.json ([{"ja", "en", "group_ja", "group_en"}]) and label_sets/<name>.safetensors
  (`label_embeddings` float32 (L, E), unit-norm, as the export's own), computed in float32 from the run's text
  tower and the checkpoint's text projection: a PyTorch user then scores them without JAX
  (modeling_ecg.load(folder, label_set=name), export.predict --label-set). Returns the files written."""
  import json as json_lib

  import numpy as np
  from safetensors.numpy import save_file

  if not paths.exists(paths.join(folder, "modeling_ecg.py")):
    raise FileNotFoundError(
      f"{folder!r} is not an export folder (no modeling_ecg.py); write one first with "
      f"`python -m ecg_contrastive.main --mode export --workdir {workdir} --export_dir {folder}`"
    )
  config = eval_config(config, checkpoints.read_config(workdir))
  load_label_sets(config.eval.label_set)
  mesh = make_mesh(jax.local_devices()[:1])
  prepared = prepare_label_sets(config)
  model = two_tower.from_config(config).clone(dtype=jnp.float32)  # the export computes in float32
  step, variables = _restore(config, workdir, step, prepared[0].prompt_emb.shape[1], mesh, model)
  encoders, written = Encoders(model, mesh), []
  out = paths.join(folder, "label_sets")
  paths.makedirs(out)
  for p in prepared:
    ls = p.label_set
    emb = label_embeddings(encoders, variables["params"], p)
    labels = [
      {"ja": name, "en": en, "group_ja": group, "group_en": ""}
      for name, en, group in zip(ls.labels, ls.en, ls.groups or [""] * len(ls))
    ]
    paths.write_text(
      paths.join(out, f"{ls.name}.json"), json_lib.dumps(labels, ensure_ascii=False, indent=1)
    )
    local = paths.join(out, f"{ls.name}.safetensors")
    save_file(
      {"label_embeddings": np.ascontiguousarray(emb, np.float32)},
      local,
      metadata={"source_step": str(step), "label_set": ls.name},
    )
    written += [paths.join(out, f"{ls.name}.json"), local]
    log.info("label set %s (%d labels) -> %s", ls.name, len(ls), local)
  return written


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  step: int | None = None,
  mesh=None,
  out_name: str | None = None,
) -> dict[str, dict[str, dict]]:
  """{split: {label set: metrics}} of the checkpoint of `step` (default: newest intact) of `workdir` on
  config.dataset's config.eval_splits; mesh: default all devices. Files go to WORKDIR/eval/<out_name>/
  (default: the dataset's name)."""
  config = eval_config(config, checkpoints.read_config(workdir))
  check_config(config)
  load_label_sets(config.eval.label_set)  # a bad label-set file fails before any data or model work
  mesh = mesh or make_mesh()
  try:
    batch_sizes(config.eval_batch_size, mesh)
  except ValueError as e:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size}: {e}") from e
  data = config.get("data", {})
  sources = {
    s: pipeline.open_source(
      config.dataset,
      s,
      config.data_dir or None,
      source_dir=config.get("source_dir") or None,
      **{k: config.data[k] for k in ("host_read", "reader_threads", "host_cache") if k in data},
    )
    for s in config.eval_splits
  }
  log.info(
    "eval %s on %s: %s; mesh of %d device(s)",
    workdir,
    config.dataset,
    ", ".join(f"{s}={len(src)}" for s, src in sources.items()),
    mesh.devices.size,
  )
  table, label_emb = embed_texts(
    config, (r for src in sources.values() for r in src.meta.reports), list(terms.load_terms())
  )
  label_sets = prepare_label_sets(config, label_emb)
  model = two_tower.from_config(config)
  step, variables = _restore(config, workdir, step, table.embeddings.shape[1], mesh, model)
  log.info("restored the parameters and BatchNorm statistics of step %d", step)
  return evaluate(
    config=config,
    model=model,
    state={"step": step, **variables},
    sources=sources,
    table=table,
    label_sets=label_sets,
    mesh=mesh,
    out_dir=paths.join(workdir, "eval", out_name or config.dataset),
    results_csv=paths.join(workdir, "eval", "results.csv"),
    mode="eval",
  )
