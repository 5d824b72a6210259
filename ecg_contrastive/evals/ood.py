"""The OOD reference of a trained checkpoint (models/ood.py): pooled features of training and validation records.

  python -m ecg_contrastive.main --mode ood --workdir RUN --config configs/default.py [--step N]

Training calls write_for_run at its end (config.ood; bank_size 0: nothing); the command above (re)computes it for an
existing run, its model from RUN (config.json, the checkpoint) and its records from --config (dataset, data_dir,
source_dir, train_split, ood.*). Writes RUN/ood.safetensors and RUN/ood.json; `--mode export` copies them.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ecg_contrastive import paths
from ecg_contrastive.checkpoints import restore_inference
from ecg_contrastive.data import pipeline
from ecg_contrastive.ecg import signal
from ecg_contrastive.errors import DataError
from ecg_contrastive.models import ood, two_tower

BATCH = 256
log = logging.getLogger("ecg_contrastive")


def settings(config) -> dict:
  """config.ood (configs/default.py's `# ood` block) with models/ood.py's defaults for keys an older config lacks."""
  given = dict(config.get("ood", {}) or {})
  return {
    "bank_size": int(given.get("bank_size", ood.BANK_SIZE)),
    "calibration_size": int(given.get("calibration_size", ood.CALIBRATION_SIZE)),
    "percentile": float(given.get("percentile", ood.PERCENTILE)),
    "split": str(given.get("split", "validation")),
  }


def _subset(n: int, size: int, seed: int) -> np.ndarray:
  """A fixed random subset of range(n) of min(size, n) indices, sorted (sequential reads)."""
  if size >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def host_variables(state: dict) -> dict:
  """{"params", "batch_stats"} of a training state as numpy arrays on this host (replicated arrays: this host's
  copy; no collective, so process 0 alone may call it)."""
  return jax.tree_util.tree_map(
    lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
    {"params": state["params"], "batch_stats": state["batch_stats"]},
  )


def build(
  config,
  workdir: str,
  step: int | None = None,
  sources: dict | None = None,
  variables: dict | None = None,
) -> ood.Reference:
  """The pooled features (float32, as the predictor and the export compute) of a fixed random subset of
  config.train_split (mean and covariance) and of config.ood.split (the calibration), with checkpoint `step`
  (default newest) of `workdir`. sources: already open {split: source} (training passes its own); others are
  opened from config (dataset, data_dir, source_dir). variables: the model's {"params", "batch_stats"} of `step`
  (training passes its final state, so nothing is restored), else restored from the checkpoint."""
  s = settings(config)
  sources = dict(sources or {})
  for split in (config.train_split, s["split"]):
    if split not in sources:
      sources[split] = pipeline.open_source(
        config.dataset, split, config.data_dir or None, source_dir=config.get("source_dir") or None
      )
  if variables is None:
    inference = restore_inference(workdir, step)
    model, variables, step = inference.model, inference.variables, inference.step
  else:
    model = two_tower.from_config(config)
  model = model.clone(dtype=jnp.float32)  # the export computes in float32
  encode = jax.jit(
    lambda variables, ecg: model.apply(variables, ecg, method=ood.features_and_embeddings)[0]
  )

  def features(source, rows: np.ndarray) -> np.ndarray:
    return np.concatenate(
      [
        np.asarray(encode(variables, signal.to_millivolts(source.read(rows[i : i + BATCH]))))
        for i in range(0, len(rows), BATCH)
      ]
    )

  train, calibration = sources[config.train_split], sources[s["split"]]
  bank_rows = _subset(len(train), s["bank_size"], ood.BANK_SEED)
  calibration_rows = _subset(len(calibration), s["calibration_size"], ood.BANK_SEED + 1)
  reference = ood.make_reference(
    features(train, bank_rows),
    features(calibration, calibration_rows),
    s["percentile"],
    step=int(step),
    dataset=config.dataset,
    bank_split=config.train_split,
    calibration_split=s["split"],
  )
  log.info(
    "OOD reference of step %d: %d %s records fit the mean and covariance, %d %s records calibrate it; "
    "validation scores median %.3f, %g%% %.3f",
    step,
    len(bank_rows),
    config.train_split,
    len(calibration_rows),
    s["split"],
    reference.meta["validation_quantiles"]["50"],
    s["percentile"],
    reference.meta["threshold_score"],
  )
  return reference


def save(folder: str, reference: ood.Reference) -> list[str]:
  """Writes ood.safetensors and ood.json into `folder` (local or gs://); returns their paths."""
  paths.makedirs(folder)
  written = []
  for name, data in ood.to_bytes(reference).items():
    paths.write_bytes(paths.join(folder, name), data)
    written.append(paths.join(folder, name))
  return written


def write_for_run(
  config,
  workdir: str,
  step: int | None = None,
  sources: dict | None = None,
  state: dict | None = None,
) -> list[str]:
  """build + save into `workdir`; config.ood.bank_size 0 writes nothing. Returns the files written. sources
  (training's own open splits): a dataset without the calibration split is a warning, not an error; state: the
  training state of `step` (its parameters are used instead of restoring the checkpoint)."""
  if settings(config)["bank_size"] == 0:
    return []
  if sources is None:  # --mode ood: a dataset without the split is the user's one-line error
    return _save_logged(workdir, build(config, workdir, step))
  try:  # at the end of training: a dataset without the calibration split must not fail the run
    reference = build(
      config, workdir, step, sources, None if state is None else host_variables(state)
    )
  except DataError as e:
    log.warning(
      "no OOD reference written (%s); name a split the dataset has with --config.ood.split and run "
      "`python -m ecg_contrastive.main --mode ood --workdir %s --config CONFIG`",
      e,
      workdir,
    )
    return []
  return _save_logged(workdir, reference)


def _save_logged(workdir: str, reference: ood.Reference) -> list[str]:
  written = save(workdir, reference)
  log.info("OOD reference -> %s", written[-1])
  return written
