"""Checkpoints of a training workdir (orbax) and what inference needs from them.

Workdir layout written by training:
  config.json                    the run's ml_collections config (architecture under "model", training-only TwoTower
                                 settings under "train"; older: all under "model", see two_tower.split_config)
  labels.json                    zero-shot label set: [{"ja", "en", "group_ja", "group_en"}, ...]
  label_text_embeddings.npy      float32 (num_labels, text_dim): frozen-text-tower prompt embeddings
  checkpoints/<step>/            orbax CheckpointManager: item "state" = {step, params, batch_stats,
                                 opt_state}, item "data" = the input iterator state (JSON)
  checkpoints/<step>/files.json  {relative path: size in bytes} of every file of the step, written after the save:
                                 a truncated or missing file marks the checkpoint damaged
  damaged_checkpoints/<step>/    damaged checkpoints that a resumed training run moved aside (kept, never deleted)

A damaged checkpoint is skipped with one warning and the newest intact one is used (resume and inference alike).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ecg_contrastive import paths
from ecg_contrastive.errors import ENVIRONMENT_ERRNOS, UserError
from ecg_contrastive.models import two_tower
from ecg_contrastive.models.two_tower import TwoTower

log = logging.getLogger("ecg_contrastive")

MANIFEST = "files.json"


class CheckpointError(UserError, RuntimeError):
  """A checkpoint cannot be written or none can be read; the message is one line that says what to do."""


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  """WORKDIR/checkpoints; a local workdir is made absolute (orbax needs it), a gs:// one is kept as it is."""
  root = os.fspath(workdir)
  return epath.Path(root if paths.is_remote(root) else os.path.abspath(root)) / "checkpoints"


def make_manager(workdir: str | os.PathLike, keep: int = 3) -> ocp.CheckpointManager:
  """The workdir's orbax manager; it keeps the newest `keep` (>= 1) checkpoints and deletes older ones on save."""
  if not isinstance(keep, int) or keep < 1:
    raise CheckpointError(
      f"keep_checkpoints must be an integer >= 1, not {keep!r}: {keep!r} would delete every "
      f"checkpoint in {checkpoint_dir(workdir)}; set --config.keep_checkpoints=3"
    )
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict) -> None:
  """Saves `step` and then its file manifest; a failed write (disk full, ...) is a one-line CheckpointError and
  leaves the earlier checkpoints as they were (orbax writes to a temporary folder and renames it when complete)."""
  try:
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
      force=True,
    )
    manager.wait_until_finished()
    if jax.process_index() == 0:
      _write_manifest(manager.directory / str(step))
  except (
    Exception
  ) as e:  # orbax and tensorstore wrap the OSError in their own types: look for the errno
    reason = _write_failure(e)
    if reason is None:
      raise
    _remove_partial(manager.directory, step)
    raise CheckpointError(
      f"could not write checkpoint {manager.directory / str(step)} ({reason}): free space or "
      f"point --workdir elsewhere; the earlier checkpoints {_steps_text(manager)} are intact "
      "and a rerun resumes from the newest"
    ) from e


def _write_failure(e: BaseException) -> str | None:
  """'No space left on device' etc. when `e` (or its cause) is an operating-system write failure."""
  while e is not None:
    if isinstance(e, OSError):
      return os.strerror(e.errno) if e.errno else str(e)
    text = str(e)
    for code in ENVIRONMENT_ERRNOS:
      if os.strerror(code) in text:
        return os.strerror(code)
    e = e.__cause__ or e.__context__
  return None


def _remove_partial(directory: epath.Path, step: int) -> None:
  """Best effort: drops the unfinished temporary folder of `step` (never a finished checkpoint)."""
  if jax.process_index() != 0:
    return
  try:
    for path in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
      path.rmtree()
  except Exception:  # noqa: BLE001 - cleaning up after a failed write must not hide its error
    pass


def _steps_text(manager: ocp.CheckpointManager) -> str:
  manager.reload()
  steps = sorted(manager.all_steps())
  return "(steps " + ", ".join(map(str, steps)) + ")" if steps else "(none)"


def _list_files(step_dir: epath.Path, prefix: str = "") -> dict[str, int]:
  """{relative path: size} of every file under `step_dir` but the manifest (iterdir: epath has no remote `**`)."""
  out = {}
  for path in step_dir.iterdir():
    if path.is_dir():
      out.update(_list_files(path, prefix + path.name + "/"))
    elif path.name != MANIFEST:
      out[prefix + path.name] = path.stat().length
  return out


def _write_manifest(step_dir: epath.Path) -> None:
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(_list_files(step_dir), sort_keys=True, indent=0))
  tmp.rename(step_dir / MANIFEST)


def find_damage(step_dir: epath.Path) -> str | None:
  """None when every file of the manifest is there with its size, else what is wrong (one line).

  A checkpoint without a manifest (written before manifests existed, or stopped between the orbax save and the
  manifest) is not judged here: restoring it tells.
  """
  manifest = step_dir / MANIFEST
  if not step_dir.exists():
    return "folder missing"
  if not manifest.exists():
    return None
  try:
    expected = json.loads(manifest.read_text())
  except (ValueError, OSError) as e:
    return f"{MANIFEST} unreadable: {type(e).__name__}"
  for name, size in sorted(expected.items()):
    path = step_dir / name
    if not path.exists():
      return f"{name} missing"
    found = path.stat().length
    if found != size:
      return f"{name} has {found} bytes, {size} expected"
  return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def restore_newest_intact(manager: ocp.CheckpointManager, restore_fn, what_to_do: str):
  """(step, restore_fn(step), damaged steps) for the newest step that is intact and restores, newest first.

  Each damaged step costs one warning line; None when there is no checkpoint at all; CheckpointError (naming
  the folder and `what_to_do`) when every checkpoint is damaged.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  damaged = []
  for step in steps:
    step_dir = manager.directory / str(step)
    problem = find_damage(step_dir)
    if problem is None:
      try:
        return step, restore_fn(step), damaged
      except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for unreadable files
        problem = _first_line(e)
    damaged.append(step)
    log.warning("checkpoint %s is damaged (%s); skipping it", step_dir, problem)
  raise CheckpointError(
    f"no intact checkpoint in {manager.directory}: steps {', '.join(map(str, damaged))} are all "
    f"damaged (see the warnings above); {what_to_do}"
  )


def move_aside(workdir: str | os.PathLike, steps: list[int]) -> None:
  """Moves damaged checkpoints to WORKDIR/damaged_checkpoints/<step> (kept for inspection; a resumed run then
  writes those steps anew). Process 0 moves; every process waits for it."""
  if not steps:
    return
  if jax.process_index() == 0:
    source = checkpoint_dir(workdir)
    target = source.parent / "damaged_checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    for step in steps:
      dest = target / str(step)
      suffix = 0
      while dest.exists():
        suffix += 1
        dest = target / f"{step}.{suffix}"
      (source / str(step)).rename(dest)
      log.warning("moved damaged checkpoint %s to %s", source / str(step), dest)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("ecg_contrastive: damaged checkpoints moved")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores (state with the shardings of `abstract_state`, data iterator state)."""
  out = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
    ),
  )
  return out["state"], out["data"]


@dataclasses.dataclass
class Inference:
  """A trained model ready for embedding ECGs and zero-shot scoring (host arrays)."""

  model: TwoTower
  variables: dict  # {"params": ..., "batch_stats": ...} as numpy arrays
  config: ml_collections.ConfigDict
  step: int
  labels: list[dict]  # [{"ja", "en", "group_ja", "group_en"}]
  label_text_embeddings: np.ndarray  # float32 (num_labels, text_dim)


# Run-config keys added after runs were already saved, with the value that reproduces what those runs did: an
# older workdir evaluates, exports and predicts as it trained (config_check requires every key of a new config).
ADDED_LATER = {"text.template": "", "text.layer": -1, "model.lead_mask": False}


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json (local or gs://); a missing or damaged one is a one-line error."""
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(
      f"{path} not found: {workdir!r} is not a training workdir "
      "(run `python -m ecg_contrastive.main --workdir ...` first)"
    )
  config = _read_json(path, "rerun training with this --workdir to rewrite it")
  for (
    key,
    value,
  ) in ADDED_LATER.items():  # a run saved before the key existed was made with this value
    section, name = key.split(".")
    if isinstance(config.get(section), dict):
      config[section].setdefault(name, value)
  return ml_collections.ConfigDict(config)


def _read_json(path: str, what_to_do: str) -> Any:
  try:
    return json.loads(paths.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is damaged (not JSON: {e}); {what_to_do}") from e


def _restore_chosen(
  manager: ocp.CheckpointManager, step: int | None, restore_fn
) -> tuple[int, Any]:
  """(step, restore_fn(step)) of `step`, or of the newest intact checkpoint when None; one-line errors when
  there is none, no such step, or it is damaged."""
  directory = manager.directory
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(
      f"no checkpoint in {directory}: train first, or pass the workdir of a run that saved one"
    )
  if step is None:
    step, state, _ = restore_newest_intact(
      manager,
      restore_fn,
      "rerun training with this --workdir to write a new one, or restore the folder from a backup",
    )
  elif step not in steps:
    raise CheckpointError(
      f"no checkpoint for step {step} in {directory}; available: {sorted(steps)}"
    )
  else:
    problem = find_damage(directory / str(step))
    try:
      state = restore_fn(step) if problem is None else None
    except Exception as e:  # noqa: BLE001
      problem = _first_line(e)
    if problem is not None:
      raise CheckpointError(
        f"checkpoint {directory / str(step)} is damaged ({problem}); pass another --step of "
        f"{sorted(steps)} or omit --step to use the newest intact one"
      )
  return int(step), state


def restore_inference(workdir: str, step: int | None = None) -> Inference:
  """Loads params + BatchNorm statistics of `step` (default: latest) from a training workdir."""
  config = read_config(workdir)
  manager = make_manager(workdir)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def restore_fn(s: int) -> dict:  # onto this host, whatever the mesh it was saved from
    saved = ocp.PyTreeCheckpointHandler().metadata(manager.directory / str(s) / "state")
    wanted = {
      k: jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved[k]
      )
      for k in ("params", "batch_stats")
    }
    return _restore_variables(manager, s, wanted)

  step, state = _restore_chosen(manager, step, restore_fn)
  variables = {k: _to_numpy(v) for k, v in state.items()}
  rewrite = (
    "rerun training with this --workdir (it rewrites the file and resumes from the last checkpoint)"
  )
  labels, label_emb = (
    _run_file(workdir, "labels.json", rewrite),
    _run_file(workdir, "label_text_embeddings.npy", rewrite),
  )
  if label_emb.ndim != 2 or len(label_emb) != len(labels):
    raise CheckpointError(
      f"{paths.join(workdir, 'label_text_embeddings.npy')} holds {label_emb.shape} embeddings for "
      f"{len(labels)} labels in labels.json; {rewrite}"
    )
  return Inference(two_tower.from_config(config), variables, config, int(step), labels, label_emb)


def restore_variables(
  workdir: str, abstract_variables: dict, step: int | None = None
) -> tuple[int, dict]:
  """(step, {"params", "batch_stats"}) of `step` (default: the newest intact one), placed with the shardings of
  `abstract_variables` (jax.ShapeDtypeStruct leaves, any mesh): the optimizer state and the data iterator state
  of the checkpoint are not read, so any dataset and mesh size can use it."""
  manager = make_manager(workdir)
  wanted = {k: abstract_variables[k] for k in ("params", "batch_stats")}
  return _restore_chosen(manager, step, lambda s: _restore_variables(manager, s, wanted))


def _restore_variables(manager: ocp.CheckpointManager, step: int, wanted: dict) -> dict:
  """The subtrees of `wanted` (params, batch_stats) of the state of `step`, with its shardings (a partial
  restore: the optimizer state is not read)."""
  return ocp.PyTreeCheckpointer().restore(
    manager.directory / str(step) / "state",
    args=ocp.args.PyTreeRestore(
      wanted,
      restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
      partial_restore=True,
    ),
  )


def _run_file(workdir: str, name: str, what_to_do: str) -> Any:
  """labels.json or label_text_embeddings.npy of a workdir; missing or damaged: a one-line CheckpointError."""
  path = paths.join(workdir, name)
  if not paths.exists(path):
    raise CheckpointError(f"{path} is missing; {what_to_do}")
  if name.endswith(".json"):
    return _read_json(path, what_to_do)
  try:
    return paths.np_load(path)
  except (ValueError, OSError, EOFError) as e:
    raise CheckpointError(f"{path} is damaged ({e}); {what_to_do}") from e


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
