"""Training-time ECG augmentation on the device: pure JAX functions of (key, float mV batch) -> batch.

Applied by the train step (step.py) to the float millivolt batch before the ECG tower, keyed by
fold_in(PRNGKey(config.seed), step), so a resumed run draws the same augmentations as an uninterrupted one.
Never applied at evaluation or prediction. Each augmentation is drawn per record with its probability `p`;
`config.augment` (configs/default.py) holds every probability and range, all off by default (the paper has none).

In the order applied, on (B, T, 12) float32 millivolts at 500 Hz (any T):
  shift        time shift by s samples, s uniform in [-max_s, max_s] seconds, with zero fill (not a roll: a roll
               would glue the record's end to its start; zero fill is what a short record gets at prediction)
  gain         the whole record times a factor, log-uniform in [low, high]
  lead_gain    each lead times its own factor, log-uniform in [low, high]
  wander       baseline wander: per lead, `components` sinusoids of frequency uniform in [0.05, max_hz] Hz,
               random phase, amplitudes uniform in [0, mv] scaled so their sum never exceeds mv
  mains        power-line interference: one sinusoid at 50 or 60 Hz (chosen per record), amplitude mv, random
               phase, the same in every lead scaled by a per-lead factor in [0.5, 1]
  noise        broadband white Gaussian noise of standard deviation mv
  lead_dropout each lead zeroed with probability lead_p (at least one lead kept); the presence mask says which
Off (p = 0 everywhere) is the identity, bitwise: nothing is traced.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ecg_contrastive.ecg.signal import SAMPLE_RATE

MAINS_HZ = (50.0, 60.0)
WANDER_MIN_HZ = 0.05
MAINS_LEAD_SCALE = (0.5, 1.0)

# name -> its parameters (values: config.augment in configs/default.py, their one home); the order is the order
# applied, and each augmentation's key is fold_in(key, its index), so adding one never changes the others' draws
PARAMETERS = {
  "shift": ("p", "max_s"),
  "gain": ("p", "low", "high"),
  "lead_gain": ("p", "low", "high"),
  "wander": ("p", "mv", "max_hz", "components"),
  "mains": ("p", "mv"),
  "noise": ("p", "mv"),
  "lead_dropout": ("p", "lead_p"),
}


@dataclasses.dataclass(frozen=True)
class Augment:
  """The augmentations of a config, as plain numbers (hashable: jit traces one step per setting)."""

  settings: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]

  def get(self, name: str) -> dict[str, float]:
    return dict(dict(self.settings)[name])

  @property
  def active(self) -> tuple[str, ...]:
    return tuple(name for name, params in self.settings if dict(params)["p"] > 0)


def from_config(config: Any) -> Augment | None:
  """config.augment -> Augment, or None when every p is 0 (or there is no config.augment: an older config).
  Values are assumed checked (config_check.check_augment)."""
  section = config.get("augment") if hasattr(config, "get") else None
  if not section:
    return None
  section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  settings = tuple(
    (name, tuple((k, float(section[name][k])) for k in PARAMETERS[name])) for name in PARAMETERS
  )
  augment = Augment(settings)
  return augment if augment.active else None


def _chosen(key: jax.Array, p: float, batch: int) -> jax.Array:
  """(B,) bool: which records get an augmentation of probability p."""
  return jax.random.bernoulli(key, p, (batch,))


def _log_uniform(key: jax.Array, shape: tuple[int, ...], low: float, high: float) -> jax.Array:
  return jnp.exp(jax.random.uniform(key, shape, minval=math.log(low), maxval=math.log(high)))


def shift(ecg: jax.Array, samples: jax.Array) -> jax.Array:
  """(B, T, C), (B,) int -> out[b, t] = ecg[b, t - samples[b]], zero where t - samples[b] is outside [0, T)."""
  t = jnp.arange(ecg.shape[1])[None, :] - samples[:, None]  # (B, T) source index
  inside = (t >= 0) & (t < ecg.shape[1])
  moved = jnp.take_along_axis(ecg, jnp.clip(t, 0, ecg.shape[1] - 1)[:, :, None], axis=1)
  return jnp.where(inside[:, :, None], moved, 0.0)


def sinusoids(length: int, freq_hz: jax.Array, phase: jax.Array, amplitude: jax.Array) -> jax.Array:
  """Sum over axis 1 of amplitude * sin(2 pi f t + phase); freq, phase, amplitude (B, K, C) -> (B, T, C).
  A loop over the K (few) components: no (B, K, T, C) array, whatever XLA fuses."""
  t = (jnp.arange(length, dtype=jnp.float32) / SAMPLE_RATE)[None, :, None]
  out = jnp.zeros((freq_hz.shape[0], length, freq_hz.shape[2]), jnp.float32)
  for k in range(freq_hz.shape[1]):
    f, p, a = (x[:, k : k + 1, :] for x in (freq_hz, phase, amplitude))  # (B, 1, C)
    out = out + a * jnp.sin(2 * jnp.pi * f * t + p)
  return out


def augment(key: jax.Array, ecg: jax.Array, config: Augment | None) -> tuple[jax.Array, jax.Array]:
  """(B, T, C) float mV -> (augmented (B, T, C), lead presence (B, C) bool: False where lead dropout zeroed it).

  config None (or every p 0): the input itself and all True.
  """
  batch, length, leads = ecg.shape
  present = jnp.ones((batch, leads), bool)
  if config is None:
    return ecg, present
  dtype = ecg.dtype
  for index, name in enumerate(PARAMETERS):
    c = config.get(name)
    if c["p"] <= 0:
      continue
    k_apply, k_draw, k_more = jax.random.split(jax.random.fold_in(key, index), 3)
    on = _chosen(k_apply, c["p"], batch)  # (B,)
    if name == "shift":
      most = int(round(c["max_s"] * SAMPLE_RATE))
      s = jax.random.randint(k_draw, (batch,), -most, most + 1)
      new = shift(ecg, jnp.where(on, s, 0))
    elif name in ("gain", "lead_gain"):
      shape = (batch, 1, 1) if name == "gain" else (batch, 1, leads)
      factor = _log_uniform(k_draw, shape, c["low"], c["high"])
      new = ecg * factor.astype(dtype)
    elif name == "wander":
      k = int(c["components"])
      keys = jax.random.split(k_draw, 3)
      freq = jax.random.uniform(
        keys[0], (batch, k, leads), minval=WANDER_MIN_HZ, maxval=c["max_hz"]
      )
      phase = jax.random.uniform(keys[1], (batch, k, leads), maxval=2 * jnp.pi)
      amplitude = jax.random.uniform(keys[2], (batch, k, leads), maxval=c["mv"] / k)
      new = ecg + sinusoids(length, freq, phase, amplitude).astype(dtype)
    elif name == "mains":
      keys = jax.random.split(k_draw, 3)
      freq = jnp.where(jax.random.bernoulli(keys[0], 0.5, (batch, 1, 1)), *MAINS_HZ)
      phase = jax.random.uniform(keys[1], (batch, 1, 1), maxval=2 * jnp.pi)
      lead_scale = jax.random.uniform(keys[2], (batch, 1, leads), minval=MAINS_LEAD_SCALE[0])
      freq, phase = (
        jnp.broadcast_to(freq, (batch, 1, leads)),
        jnp.broadcast_to(phase, (batch, 1, leads)),
      )
      new = ecg + sinusoids(length, freq, phase, c["mv"] * lead_scale).astype(dtype)
    elif name == "noise":
      new = ecg + (c["mv"] * jax.random.normal(k_draw, ecg.shape, jnp.float32)).astype(dtype)
    else:  # lead_dropout
      drop = jax.random.bernoulli(k_draw, c["lead_p"], (batch, leads))
      keep_one = jax.nn.one_hot(jax.random.randint(k_more, (batch,), 0, leads), leads, dtype=bool)
      keep = (~drop | keep_one) | ~on[:, None]
      present = present & keep
      ecg = jnp.where(keep[:, None, :], ecg, 0.0).astype(dtype)
      continue
    ecg = jnp.where(on[:, None, None], new, ecg)
  return ecg, present


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The augmentation key of a training step: the same for the same (seed, step), so a resume repeats it."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0xA06), step)
