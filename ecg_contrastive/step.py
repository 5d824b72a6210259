"""The model, optimizer, state and jit training step: everything a step needs, nothing else.

Kept apart from train.py (data, text, checkpoints, evaluation) so benchmarks and other drivers
import only JAX, Flax and optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ecg_contrastive.data.signal import MV_PER_UNIT
from ecg_contrastive.losses import softmax_loss
from ecg_contrastive.models.two_tower import TwoTower
from ecg_contrastive.sharding import replicated


def ecg_millivolts(ecg: jax.Array) -> jax.Array:
  """int16 microvolts (B, T, 12), as stored and moved, -> float32 millivolts, on the device."""
  return ecg.astype(jnp.float32) * MV_PER_UNIT


def make_model(config) -> TwoTower:
  return TwoTower(**config.model.to_dict())


def make_optimizer(config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up and cosine decay. Frozen parts (by parameter name) get no update:
  `txt_head` unless config.text_head_trainable, `logit_scale` unless config.learn_temperature.
  Weight decay applies to matrices and kernels only (not to BatchNorm, biases or the scale)."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(0.0, opt.lr, min(opt.warmup_steps, max(num_steps - 1, 1)),
                                                max(num_steps, 2), end_value=opt.lr * opt.final_lr_fraction)
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                      mask=lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params))
  if opt.grad_clip_norm:
    adamw = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw)

  def label(params):
    def one(path, _):
      top = path[0].key
      frozen = (top == "txt_head" and not config.text_head_trainable) or (top == "logit_scale" and not config.learn_temperature)
      return "frozen" if frozen else "train"
    return jax.tree_util.tree_map_with_path(one, params)

  return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, label), schedule


def init_state(config, model: TwoTower, tx, text_dim: int, mesh) -> dict:
  """Replicated {step, params, batch_stats, opt_state} on the mesh."""
  ecg = jnp.zeros((2, config.ecg_length, config.ecg_leads), jnp.float32)

  @jax.jit
  def init(rng):
    variables = model.init(rng, ecg, jnp.zeros((2, text_dim), jnp.float32), train=False)
    return {"step": jnp.zeros((), jnp.int32), "params": variables["params"],
            "batch_stats": variables["batch_stats"], "opt_state": tx.init(variables["params"])}

  return jax.jit(init, out_shardings=replicated(mesh))(jax.random.PRNGKey(config.seed))


def make_train_step(config, model: TwoTower, tx, schedule, mesh):
  """jit(state, batch, table) -> (state, metrics). batch: 'ecg' int16 (B, T, 12), 'report_row' (B,)."""
  positives_by_report = config.loss.duplicate_reports_positive

  def step(state, batch, table):
    ecg = ecg_millivolts(batch["ecg"])
    rows = batch["report_row"]
    txt = table[rows]

    def loss_fn(params):
      (z_ecg, z_txt, scale), updates = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]}, ecg, txt, train=True, mutable=["batch_stats"])
      loss, acc = softmax_loss(z_ecg, z_txt, scale, mesh, rows if positives_by_report else None)
      return loss, (acc, scale, updates["batch_stats"])

    (loss, (acc, scale, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state}
    metrics = {"loss": loss, "batch_accuracy": acc, "temperature": 1.0 / scale,
               "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"])}
    return new_state, metrics

  rep = replicated(mesh)
  return jax.jit(step, out_shardings=(rep, rep), donate_argnums=0)
