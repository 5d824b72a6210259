"""The model, optimizer, state and jit training step: everything a step needs, nothing else.

Kept apart from train.py (data, text, checkpoints, evaluation) so benchmarks and other drivers
import only JAX, Flax and optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ecg_contrastive.ecg import augment as augment_lib
from ecg_contrastive.ecg.signal import MV_PER_UNIT, NUM_LEADS, NUM_SAMPLES
from ecg_contrastive.losses import sigmoid_loss, softmax_loss
from ecg_contrastive.models import two_tower
from ecg_contrastive.models.two_tower import TwoTower
from ecg_contrastive.sharding import DATA_AXIS, data_sharding, replicated
from ecg_contrastive.tiled_losses import tiled_sigmoid_loss, tiled_softmax_loss


def ecg_millivolts(ecg: jax.Array) -> jax.Array:
  """int16 microvolts (B, T, 12), as stored and moved, -> float32 millivolts, on the device (float input: as is,
  already millivolts)."""
  if jnp.issubdtype(ecg.dtype, jnp.floating):
    return ecg
  return ecg.astype(jnp.float32) * MV_PER_UNIT


def augmented_millivolts(config, ecg: jax.Array, step: jax.Array, mesh) -> jax.Array:
  """The train step's input: int16 (B, T, 12) -> float32 mV with config.augment's augmentations drawn for this
  step (ecg/augment.py; key from config.seed and the step, so a resume draws the same); no augmentation: int16
  as is (the tower converts it, as before augmentation existed)."""
  setting = augment_lib.from_config(config)
  if setting is None:
    return ecg
  key = augment_lib.step_key(config.seed, step)
  out, _ = augment_lib.augment(key, ecg_millivolts(ecg), setting)
  return jax.lax.with_sharding_constraint(out, data_sharding(mesh))


def make_model(config) -> TwoTower:
  return two_tower.from_config(config)


def make_optimizer(config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up and cosine decay. Frozen parts (by parameter name) get no update:
  `txt_head` unless config.text_head_trainable, `logit_scale` unless config.learn_temperature.
  Weight decay applies to matrices and kernels only (not to BatchNorm, biases or the scale)."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    opt.lr,
    min(opt.warmup_steps, max(num_steps - 1, 1)),
    max(num_steps, 2),
    end_value=opt.lr * opt.final_lr_fraction,
  )
  adamw = optax.adamw(
    schedule,
    b1=opt.b1,
    b2=opt.b2,
    weight_decay=opt.weight_decay,
    mask=lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params),
  )
  if opt.grad_clip_norm:
    adamw = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw)

  def label(params):
    def one(path, _):
      top = path[0].key
      frozen = (top == "txt_head" and not config.text_head_trainable) or (
        top == "logit_scale" and not config.learn_temperature
      )
      return "frozen" if frozen else "train"

    return jax.tree_util.tree_map_with_path(one, params)

  return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, label), schedule


def init_state(config, model: TwoTower, tx, text_dim: int, mesh) -> dict:
  """Replicated {step, params, batch_stats, opt_state} on the mesh (initialised on the input contract's shape,
  ecg/signal.py's (NUM_SAMPLES, NUM_LEADS); the parameters do not depend on the length)."""
  ecg = jnp.zeros((2, NUM_SAMPLES, NUM_LEADS), jnp.float32)

  @jax.jit
  def init(rng):
    variables = model.init(rng, ecg, jnp.zeros((2, text_dim), jnp.float32), train=False)
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": variables["params"],
      "batch_stats": variables["batch_stats"],
      "opt_state": tx.init(variables["params"]),
    }

  return jax.jit(init, out_shardings=replicated(mesh))(jax.random.PRNGKey(config.seed))


def make_loss(config, mesh):
  """(z_ecg, z_txt, scale, bias, report_rows) -> (loss, accuracy), the config's loss across the mesh: dense
  (losses.py) with config.loss.tile 0, else tiled (tiled_losses.py; config.loss.ring: no all-gather)."""
  ids = (lambda rows: rows) if config.loss.duplicate_reports_positive else (lambda rows: None)
  tile = config.loss.get("tile", 0)  # 0: the dense (b, B) blocks; T > 0: (T, T) tiles, same results
  if tile:
    ring = bool(config.loss.get("ring", False))
    if config.loss.name == "sigmoid":
      return lambda e, t, scale, bias, rows: tiled_sigmoid_loss(
        e, t, scale, bias, mesh, ids(rows), tile=tile, ring=ring
      )
    return lambda e, t, scale, bias, rows: tiled_softmax_loss(
      e, t, scale, mesh, ids(rows), tile=tile, ring=ring
    )
  if config.loss.name == "sigmoid":
    return lambda e, t, scale, bias, rows: sigmoid_loss(e, t, scale, bias, mesh, ids(rows))
  return lambda e, t, scale, bias, rows: softmax_loss(e, t, scale, mesh, ids(rows))


def head_loss(model: TwoTower, loss_of, params, z_ecg, txt, rows):
  """(loss, (accuracy, scale)) of ECG embeddings z_ecg against the frozen reports' embeddings txt through the
  text head, at the model's scale and bias: the part of the step the plain and the cached gradient share."""
  z_txt = model.apply({"params": params}, txt, method=TwoTower.encode_text)
  scale = model.apply({"params": params}, method=TwoTower.scale)
  bias = model.apply({"params": params}, method=TwoTower.bias)
  loss, acc = loss_of(z_ecg, z_txt, scale, bias, rows)
  return loss, (acc, scale)


def make_train_step(config, model: TwoTower, tx, schedule, mesh):
  """jit(state, batch, table) -> (state, metrics). batch: 'ecg' int16 (B, T, 12), 'report_row' (B,).

  config.augment's augmentations (ecg/augment.py), if any is on, apply to the float batch before the ECG tower,
  drawn from config.seed and the state's step (a resumed run draws what the uninterrupted one did).

  With config.microbatches = k > 1 the gradient is that of the whole batch's contrastive loss (every
  ECG against all B reports) while the ECG tower holds the activations of only B / k ECGs at a time
  (gradient caching, arXiv 2101.06983): see `_cached_gradients`.
  """
  loss_of = make_loss(config, mesh)
  microbatches = config.microbatches

  def step(state, batch, table):
    rows = batch["report_row"]
    txt = table[rows]
    ecg = augmented_millivolts(config, batch["ecg"], state["step"], mesh)
    if microbatches > 1:
      loss, (acc, scale, batch_stats), grads = _cached_gradients(
        model, loss_of, state, ecg, txt, rows, microbatches, mesh
      )
    else:

      def loss_fn(params):
        z_ecg, updates = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]},
          ecg_millivolts(ecg),
          train=True,
          mutable=["batch_stats"],
          method=TwoTower.encode_ecg,
        )
        loss, (acc, scale) = head_loss(model, loss_of, params, z_ecg, txt, rows)
        return loss, (acc, scale, updates["batch_stats"])

      (loss, (acc, scale, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"]
      )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "step": state["step"] + 1,
      "params": optax.apply_updates(state["params"], updates),
      "batch_stats": batch_stats,
      "opt_state": opt_state,
    }
    metrics = {
      "loss": loss,
      "batch_accuracy": acc,
      "temperature": 1.0 / scale,
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": schedule(state["step"]),
    }
    if model.logit_bias is not None:  # the sigmoid loss's learnable bias, worth watching
      metrics["logit_bias"] = new_state["params"]["logit_bias"]
    return new_state, metrics

  rep = replicated(mesh)
  return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0)


def microbatch_rows(global_batch: int, microbatches: int, devices: int) -> np.ndarray:
  """(k, B / k) global row indices of each micro-batch: B / (k n) rows from each device's block."""
  m = global_batch // (microbatches * devices)
  return (
    np.arange(global_batch)
    .reshape(devices, microbatches, m)
    .transpose(1, 0, 2)
    .reshape(microbatches, -1)
  )


def _cached_gradients(model: TwoTower, loss_of, state, ecg, txt, rows, k: int, mesh):
  """Exact gradient of the contrastive loss over the global batch, computed k micro-batches at a time.

  1. embed every micro-batch without keeping activations -> z (B, E) (in the batch's row order);
  2. loss over the whole batch, gradient w.r.t. z (and the text head, scale, bias);
  3. per micro-batch, re-run the ECG tower and pull its slice of dL/dz back into the parameters.
  Each device gives every micro-batch B / (k n) of its own rows (`microbatch_rows`), so nothing
  moves between devices but the (B, E) embeddings. BatchNorm uses each micro-batch's statistics
  (as it would with B / k ECGs per step) and the running averages get one update per step, with
  the mean of the micro-batch statistics. Which rows share a micro-batch therefore depends on the
  device layout (and on how processes order their rows): results differ slightly across topologies.
  Both passes over the micro-batches are loops (lax.map / lax.scan), which is what bounds memory:
  unrolled, XLA schedules the micro-batches side by side and the saving is gone (XLA:CPU plan of the
  paper step at B 32, k 4: 1.25 GiB unrolled, 0.40 GiB looped, 1.27 GiB for k 1). XLA:CPU runs
  convolutions inside loops slowly (tiny model, B 64, k 4: 7x the time of k 1), so on CPUs use
  caching only when memory demands it.
  Returns (loss, (accuracy, scale, new batch_stats), gradients).
  """
  n, B = mesh.devices.size, ecg.shape[0]
  m = B // (k * n)
  chunk_sharding = NamedSharding(mesh, P(None, DATA_AXIS))

  def to_chunks(
    x,
  ):  # (B, ...) -> (k, B / k, ...): rows microbatch_rows(B, k, n), no data crossing devices
    chunks = x.reshape(n, k, m, *x.shape[1:]).swapaxes(0, 1).reshape(k, n * m, *x.shape[1:])
    return jax.lax.with_sharding_constraint(chunks, chunk_sharding)

  def from_chunks(x):  # the inverse: (k, B / k, ...) -> (B, ...) in the batch's row order
    return x.reshape(k, n, m, *x.shape[2:]).swapaxes(0, 1).reshape(B, *x.shape[2:])

  chunks = to_chunks(ecg)
  variables = lambda params: {"params": params, "batch_stats": state["batch_stats"]}

  def embed(
    params, chunk
  ):  # (n m, T, C) int16 (or float mV, augmented) -> (n m, E), updated batch_stats
    chunk = jax.lax.with_sharding_constraint(chunk, data_sharding(mesh))
    z, updates = model.apply(
      variables(params),
      ecg_millivolts(chunk),
      train=True,
      mutable=["batch_stats"],
      method=TwoTower.encode_ecg,
    )
    return z, updates["batch_stats"]

  params = state["params"]
  z_chunks, stats = jax.lax.map(lambda chunk: embed(params, chunk), chunks)  # (k, n m, E)
  z = from_chunks(z_chunks)

  loss_fn = lambda z, params: head_loss(model, loss_of, params, z, txt, rows)
  (loss, (acc, scale)), (dz, grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
    z, params
  )
  dz_chunks = to_chunks(dz)

  def accumulate(grads, chunk_and_dz):
    chunk, dz_chunk = chunk_and_dz
    _, pull_back = jax.vjp(lambda p: embed(p, chunk)[0], params)
    return jax.tree_util.tree_map(jnp.add, grads, pull_back(dz_chunk)[0]), None

  grads, _ = jax.lax.scan(accumulate, grads, (chunks, dz_chunks))
  batch_stats = jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), stats)
  return loss, (acc, scale, batch_stats), grads
