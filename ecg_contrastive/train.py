"""train_and_evaluate(config, workdir): the main job, in visible phases.

1. check the config (fails before any work with a message that says what to change)
2. mesh and batch sizes
3. data: open the splits (built on first use)
4. text: the frozen text tower embeds every distinct report and the label prompts once
5. model, optimizer and state; resume from the newest intact checkpoint in `workdir`
6. the loop: jit step over the mesh, metrics.jsonl + TensorBoard, NaN guard, checkpoints;
   SIGTERM/SIGINT: finish the step, save, return Preempted (the next start resumes exactly)
7. evaluation: zero-shot + retrieval on each eval split -> workdir/eval/<split>.json + PNG

One run per workdir: WORKDIR/run.lock is held from phase 1 to the end (workdir_lock).
"""

from __future__ import annotations

import functools
import json
import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ecg_contrastive import checkpoints, paths, preemption, workdir_lock
from ecg_contrastive import step as step_lib
from ecg_contrastive.config_check import ConfigError, check_config
from ecg_contrastive.data import pipeline, placement
from ecg_contrastive.errors import UserError
from ecg_contrastive.evals import ood
from ecg_contrastive.evals.evaluate import Encoders, evaluate, prepare_label_sets
from ecg_contrastive.evals.label_sets import load_label_sets
from ecg_contrastive.metric_writer import MetricWriter
from ecg_contrastive.sharding import batch_sizes, make_mesh, replicated
from ecg_contrastive.text.setup import embed_texts
from ecg_contrastive.vocab import terms

log = logging.getLogger("ecg_contrastive")


class NonFiniteLossError(UserError, FloatingPointError):
  """The training loss became NaN or Inf."""


class Preempted(dict):
  """What train_and_evaluate returns when SIGTERM/SIGINT stopped it: no metrics (no final evaluation); `step` is
  the step of the checkpoint it saved. A clean stop: the command exits 0 and a rerun resumes from `step`."""

  def __init__(self, step: int):
    super().__init__()
    self.step = step


# ----------------------------------------------------------------------------- the job


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Trains, checkpoints and evaluates; returns {split: metrics} of the final evaluation, or an empty
  Preempted (with .step) when SIGTERM/SIGINT stopped it after saving a checkpoint."""
  # 1. config; the workdir lock (fails fast when another run holds the workdir)
  check_config(config)
  load_label_sets(
    config.get("eval", {}).get("label_set", "")
  )  # a bad label-set file fails now, not after data
  if jax.process_index() == 0:
    paths.makedirs(workdir)  # gs://... stays remote: never made absolute against the cwd
  sync_every = min(config.log_every, preemption.SYNC_EVERY)  # log steps sync the host anyway
  with workdir_lock.WorkdirLock(workdir), preemption.StopOnSignal(sync_every) as stop:
    return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, stop: preemption.StopOnSignal
) -> dict[str, dict]:
  labels = list(terms.load_terms())

  # 2. mesh and batch sizes
  mesh = make_mesh()
  sizes = batch_sizes(
    config.batch_size, mesh, config.microbatches
  )  # eval_batch_size: check_config (1.)
  log.info(
    "mesh %s over %d device(s) (%s); %s",
    dict(mesh.shape),
    mesh.devices.size,
    jax.devices()[0].platform,
    sizes.describe(),
  )

  # 3. data
  splits = [config.train_split] + [s for s in config.eval_splits if s != config.train_split]
  sources = {
    s: pipeline.open_source(
      config.dataset,
      s,
      config.data_dir or None,
      source_dir=config.get("source_dir") or None,
      host_read=config.data.host_read,
      reader_threads=config.data.reader_threads,
      host_cache=config.data.host_cache,
    )
    for s in splits
  }
  train_source = sources[config.train_split]
  steps_per_epoch = len(train_source) // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(
      f"config.batch_size={config.batch_size} exceeds the {len(train_source)} records of split "
      f"{config.train_split!r}; lower config.batch_size"
    )
  num_steps = config.num_steps or config.num_epochs * steps_per_epoch
  log.info(
    "%s: %s; %d steps (%.1f epochs)",
    config.dataset,
    ", ".join(f"{s}={len(src)}" for s, src in sources.items()),
    num_steps,
    num_steps / steps_per_epoch,
  )
  plan = placement.plan_for(train_source, config, mesh)  # host or device: logged before any placing
  log.info("%s", plan.describe())

  # 4. text
  table, label_emb = embed_texts(
    config, (r for src in sources.values() for r in src.meta.reports), labels
  )
  if jax.process_index() == 0:
    _write_run_files(workdir, config, labels, label_emb)
  label_sets = prepare_label_sets(config, label_emb)
  report_rows = table.rows(train_source.meta.reports)
  table_on_device = jax.device_put(jnp.asarray(table.embeddings), replicated(mesh))

  # 5. model, optimizer, state (resumed if a checkpoint exists)
  model = step_lib.make_model(config)
  tx, schedule = step_lib.make_optimizer(config, num_steps)
  state = step_lib.init_state(config, model, tx, table.embeddings.shape[1], mesh)
  batches = placement.make_iterator(
    train_source, config, mesh, columns={"report_row": report_rows}, plan=plan
  )
  manager = checkpoints.make_manager(workdir, keep=config.keep_checkpoints)
  found = checkpoints.restore_newest_intact(
    manager,
    lambda s: checkpoints.restore(manager, s, state),
    f"move {checkpoints.checkpoint_dir(workdir)} aside to train from scratch, or restore it from a backup",
  )
  if found is not None:
    _, (state, data_state), damaged = found
    batches.set_state(data_state)
    log.info("resumed from step %d", int(state["step"]))
    if damaged:  # moved aside, so that this run can write those steps again
      checkpoints.move_aside(workdir, damaged)
      manager = checkpoints.make_manager(workdir, keep=config.keep_checkpoints)
  first_step = int(state["step"])
  _warn_of_deletions(manager, config, first_step, num_steps)

  # 6. the loop
  train_step = step_lib.make_train_step(config, model, tx, schedule, mesh)
  evaluate_now = functools.partial(
    evaluate,
    config=config,
    model=model,
    sources=sources,
    table=table,
    label_sets=label_sets,
    mesh=mesh,
    out_dir=paths.join(workdir, "eval"),
    results_csv=paths.join(workdir, "eval", "results.csv"),
    encoders=Encoders(model, mesh),  # compiled once for every evaluation of the run
  )
  keep_best = _BestKeeper(
    config, workdir, lambda best_dir: _write_run_files(best_dir, config, labels, label_emb)
  )
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0, resume_step=first_step)
  bar = tqdm.tqdm(
    total=num_steps,
    initial=first_step,
    desc="train",
    disable=jax.process_index() != 0,
    dynamic_ncols=True,
  )
  window_start, window_steps, windows = time.perf_counter(), 0, 0
  stop.armed = True
  for step in range(first_step + 1, num_steps + 1):
    state, metrics = train_step(state, next(batches), table_on_device)
    window_steps += 1
    if step % config.log_every == 0 or step == num_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(metrics["loss"]):
        raise NonFiniteLossError(
          f"loss is {metrics['loss']} at step {step} (learning rate "
          f"{metrics['learning_rate']:.3g}); lower optimizer.lr or set optimizer.grad_clip_norm"
        )
      elapsed = time.perf_counter() - window_start
      metrics.update(
        step_time=elapsed / window_steps,
        ecg_per_s=window_steps * config.batch_size / elapsed,
        epoch=step / steps_per_epoch,
      )
      memory = jax.local_devices()[0].memory_stats()  # GPU / TPU; None on CPU
      if memory and "peak_bytes_in_use" in memory:
        metrics["peak_bytes_in_use"] = float(memory["peak_bytes_in_use"])
      writer.write(step, metrics)
      windows += 1
      if windows == 2:  # the first window without compilation: the bandwidth its rate needs
        log.info("%s", plan.at_rate(metrics["ecg_per_s"]))
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", ecg_s=f"{metrics['ecg_per_s']:.0f}")
      window_start, window_steps = time.perf_counter(), 0
    bar.update(1)
    saved = step % config.checkpoint_every == 0 or step == num_steps
    if saved:
      checkpoints.save(manager, step, state, batches.get_state())
    if config.eval_every and step % config.eval_every == 0 and step != num_steps:
      results = _first_label_set(evaluate_now(state=state))
      writer.write(step, _headline(results))
      keep_best(results, state, batches.get_state())
    if stop.stop_requested(step):
      if not saved:
        checkpoints.save(manager, step, state, batches.get_state())
      bar.close()
      writer.close()
      log.warning("preempted: saved step %d; rerun the same command to resume", step)
      return Preempted(step)
  bar.close()
  # a signal during the final evaluation stops at once: the last checkpoint is written
  stop.armed = False

  # 7. evaluation; the OOD reference of the final checkpoint (evals/ood.py: what the predictor and export use)
  results = _first_label_set(evaluate_now(state=state))
  writer.write(num_steps, _headline(results))
  keep_best(results, state, batches.get_state())
  writer.close()
  if jax.process_index() == 0:
    ood.write_for_run(config, workdir, num_steps, sources, state)
  return results


def _warn_of_deletions(
  manager, config: ml_collections.ConfigDict, first_step: int, num_steps: int
) -> None:
  """Logs which checkpoints that this run did not write its saves will delete (only the newest keep_checkpoints
  of all stay)."""
  existing = sorted(manager.all_steps())
  new = [
    s
    for s in range(first_step + 1, num_steps + 1)
    if s % config.checkpoint_every == 0 or s == num_steps
  ]
  kept = set(sorted(set(existing) | set(new))[-config.keep_checkpoints :])
  doomed = [s for s in existing if s not in kept]
  if doomed:
    log.warning(
      "keep_checkpoints=%d: this run's saves will delete the existing checkpoint(s) of step(s) %s in %s; "
      "raise keep_checkpoints to keep them",
      config.keep_checkpoints,
      ", ".join(map(str, doomed)),
      manager.directory,
    )


BEST_DIR = (
  "best"  # WORKDIR/best: the best checkpoint by config.eval.best_metric, a workdir of its own
)


def read_best(workdir: str) -> dict | None:
  """WORKDIR/best/best.json ({metric, split, label_set, value, step}) or None when no best was kept."""
  path = paths.join(workdir, BEST_DIR, "best.json")
  return json.loads(paths.read_text(path)) if paths.exists(path) else None


def _kept_value(workdir: str, metric: str) -> float:
  """The value of `metric` of the kept best checkpoint (-inf: none, or kept by another metric), the same on
  every process: process 0 reads best.json and tells the others (their disks may not hold it)."""
  best = read_best(workdir) if jax.process_index() == 0 else None
  value = float(best["value"]) if best and best.get("metric") == metric else -np.inf
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    value = float(multihost_utils.broadcast_one_to_all(np.float64(value)))
  return value


class _BestKeeper:
  """With config.eval.best_metric set: when an evaluation's value of it on the first eval split beats the kept
  one (WORKDIR/best/best.json, which a resumed run reads back), saves the state as WORKDIR/best, a workdir of
  its own (checkpoints/<step>, config.json, labels.json, label_text_embeddings.npy: --mode eval / export
  --workdir WORKDIR/best use it). The newest keep_checkpoints checkpoints are unaffected. Every process decides
  alike (the metrics are computed on all of them) and saves together."""

  def __init__(self, config, workdir: str, write_run_files):
    self.metric = config.get("eval", {}).get("best_metric", "")
    self.split, self.workdir, self.write_run_files = config.eval_splits[0], workdir, write_run_files
    self.value = _kept_value(workdir, self.metric) if self.metric else -np.inf

  def __call__(self, results: dict[str, dict], state, data_state) -> None:
    if not self.metric:
      return
    value = results[self.split].get(self.metric)
    if value is None or not np.isfinite(value):
      log.warning("best checkpoint: %s of %s is %s; not compared", self.metric, self.split, value)
      return
    if value <= self.value:
      return
    step, best_dir = int(state["step"]), paths.join(self.workdir, BEST_DIR)
    checkpoints.save(checkpoints.make_manager(best_dir, keep=1), step, state, data_state)
    if jax.process_index() == 0:
      self.write_run_files(best_dir)
      record = {
        "metric": self.metric,
        "split": self.split,
        "label_set": results[self.split].get("label_set"),
        "value": float(value),
        "step": step,
      }
      paths.write_text(paths.join(best_dir, "best.json"), json.dumps(record, indent=1))
    self.value = value
    log.info(
      "best checkpoint: step %d, %s %s = %.4f, in %s",
      step,
      self.split,
      self.metric,
      value,
      best_dir,
    )


def _first_label_set(results: dict[str, dict[str, dict]]) -> dict[str, dict]:
  """{split: {label set: metrics}} -> {split: metrics of the first label set of config.eval.label_set}."""
  return {split: next(iter(by_set.values())) for split, by_set in results.items()}


def _headline(results: dict[str, dict]) -> dict[str, float]:
  keys = ("top1", "top5", "superset_top1", "macro_auroc", "ecg_to_report_r@1")
  return {
    f"eval/{split}/{k}": m[k] for split, m in results.items() for k in keys if m.get(k) is not None
  }


def _write_run_files(workdir: str, config, labels: list[terms.Term], label_emb: np.ndarray) -> None:
  """config.json, labels.json and label_text_embeddings.npy: what export and inference read."""
  paths.write_text(
    paths.join(workdir, "config.json"), config.to_json_best_effort(indent=1, ensure_ascii=False)
  )
  paths.write_text(
    paths.join(workdir, "labels.json"),
    json.dumps(
      [{"ja": t.ja, "en": t.en, "group_ja": t.group_ja, "group_en": t.group_en} for t in labels],
      ensure_ascii=False,
      indent=1,
    ),
  )
  paths.np_save(paths.join(workdir, "label_text_embeddings.npy"), label_emb.astype(np.float32))
