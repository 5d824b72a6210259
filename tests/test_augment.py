"""Training-time augmentation (ecg/augment.py): each one's effect measured on the waveform, off = identity, the
same key = the same draw, and the train step with augmentation on (evaluation untouched)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, paper
from ecg_contrastive import step as step_lib
from ecg_contrastive.config_check import ConfigError, check_augment
from ecg_contrastive.ecg import augment
from ecg_contrastive.ecg.signal import SAMPLE_RATE
from ecg_contrastive.evals.evaluate import make_ecg_encoder
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated

B, T, C = 8, 5000, 12
KEY = jax.random.PRNGKey(7)


def _ecg(seed: int = 0) -> np.ndarray:
  """(B, T, 12) float32 mV: a spiky 'QRS' train at ~1.2 Hz plus a 10 Hz tone, different per lead; nothing below
  0.5 Hz beyond its own mean and nothing at 50/60 Hz."""
  rng = np.random.default_rng(seed)
  t = np.arange(T) / SAMPLE_RATE
  beats = np.exp(-(((t[:, None] % 0.8) - 0.4) ** 2) / (2 * 0.01**2))  # (T, 1)
  lead = rng.uniform(0.3, 1.5, (B, 1, C))
  tone = 0.05 * np.sin(2 * np.pi * 10 * t)[None, :, None]
  return (lead * beats[None] + tone + 0.1).astype(np.float32)  # + 0.1 mV: no zero sample (ratios)


def _plain():
  """configs/default.py with every augmentation off (default.plain_training)."""
  config = default.get_config()
  default.plain_training(config)
  return config


def _only(name: str, **params) -> augment.Augment:
  """An Augment with only `name` on (p = 1 unless given), the others off."""
  config = _plain()
  config.augment[name].p = 1.0
  for k, v in params.items():
    config.augment[name][k] = v
  return augment.from_config(config)


_augment = jax.jit(augment.augment, static_argnums=2)


def _run(setting, ecg, key=KEY):
  out, present = _augment(key, jnp.asarray(ecg), setting)
  return np.asarray(out), np.asarray(present)


def _power(x: np.ndarray, low: float, high: float, window: bool = False) -> float:
  """Mean power of x (B, T, C) in the frequency band [low, high] Hz (rfft over time; window: Hann-windowed, so a
  tone's leakage into far bins is negligible instead of the rectangular window's 1 / distance^2)."""
  if window:
    x = x * np.hanning(x.shape[1])[None, :, None]
  spectrum = np.abs(np.fft.rfft(x, axis=1)) ** 2
  f = np.fft.rfftfreq(x.shape[1], 1 / SAMPLE_RATE)
  return float(spectrum[:, (f >= low) & (f <= high)].sum() / x.size)


def test_off_is_identity_bitwise():
  assert augment.from_config(paper.get_config()) is None  # the paper's config: all off
  assert augment.from_config(default.get_config("tiny")) is None
  demo = augment.from_config(default.get_config())  # the demo: on (README, "Robustness")
  assert demo is not None and default.get_config().model.lead_mask is True
  ecg = _ecg()
  out, present = _run(None, ecg)
  assert out.tobytes() == ecg.tobytes() and present.all()
  off_but_p = _only("noise", p=0.0)
  assert off_but_p is None


def test_gain_scales_by_the_set_factor():
  ecg = _ecg()
  out, _ = _run(_only("gain", low=1.5, high=1.5), ecg)
  np.testing.assert_allclose(out, 1.5 * ecg, rtol=1e-6)
  out, _ = _run(_only("gain", low=0.5, high=2.0), ecg)
  ratio = (
    out[:, 2000] / ecg[:, 2000]
  )  # (B, C): one factor per record, in range, the same for every lead
  np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, C)), rtol=1e-5)
  assert np.all((ratio > 0.5 - 1e-6) & (ratio < 2.0 + 1e-6)) and np.ptp(ratio[:, 0]) > 0.1
  out, _ = _run(_only("lead_gain", low=0.8, high=1.25), ecg)
  ratio = out / ecg  # (B, T, C): constant in time, its own per lead
  np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, T, 1)), rtol=1e-5)
  assert np.all((ratio > 0.8 - 1e-6) & (ratio < 1.25 + 1e-6)) and np.ptp(ratio[0, 0]) > 0.05


def test_wander_adds_power_below_half_a_hertz_only():
  ecg = _ecg()
  out, _ = _run(_only("wander", mv=0.6, max_hz=0.5), ecg)
  added = out - ecg
  low, rest = _power(added, 0.0, 0.75, True), _power(added, 5.0, SAMPLE_RATE / 2, True)
  assert low > 1e-3 and rest < 1e-6 * low  # 0.75: 0.5 Hz + the Hann window's main lobe (0.2 Hz)
  assert np.abs(added).max() <= 0.6 + 1e-5  # the sinusoids' amplitudes sum to at most mv
  assert _power(out, 0.05, 0.55) > 10 * _power(ecg, 0.05, 0.55)


def test_mains_adds_power_at_exactly_50_or_60_hz():
  ecg = _ecg()
  out, _ = _run(_only("mains", mv=0.1), ecg)
  added = out - ecg
  spectrum = (
    np.abs(np.fft.rfft(added, axis=1)) ** 2
  )  # (B, F, C); 10 s: 0.1 Hz bins, 50 and 60 Hz are bins
  f = np.fft.rfftfreq(T, 1 / SAMPLE_RATE)
  peak = f[spectrum.sum(axis=2).argmax(axis=1)]  # each record's strongest frequency
  assert (
    set(peak.tolist()) <= {50.0, 60.0} and len(set(peak.tolist())) == 2
  )  # both occur among 8 records
  at_peak = np.stack([spectrum[b, f == peak[b]] for b in range(B)]).sum()
  assert at_peak > 0.999 * spectrum.sum()
  amplitude = np.abs(added).max(axis=1)  # (B, C): mv times a per-lead factor in [0.5, 1]
  # (sampled at 500 Hz, a 50 Hz peak can fall between samples: cos(pi / 10) = 0.951 of it)
  assert np.all((amplitude > 0.05 * 0.95) & (amplitude < 0.1 + 1e-4))


def test_noise_adds_the_set_variance():
  ecg = _ecg()
  out, _ = _run(_only("noise", mv=0.05), ecg)
  added = out - ecg
  assert np.var(added) == pytest.approx(0.05**2, rel=0.02)
  assert abs(float(np.mean(added))) < 1e-3
  assert _power(added, 100, 250) / 150 == pytest.approx(
    _power(added, 0.1, 50) / 49.9, rel=0.1
  )  # white


def test_shift_moves_the_signal_by_the_drawn_amount_with_zero_fill():
  ecg = _ecg()
  out, _ = _run(_only("shift", max_s=0.2), ecg)
  most = int(0.2 * SAMPLE_RATE)
  found = []
  for b in range(B):
    shifted = {s: np.roll(ecg[b], s, axis=0) for s in range(-most, most + 1)}
    for s, x in shifted.items():  # zero fill where the roll wrapped around
      x[: max(s, 0)] = 0
      x[T + min(s, 0) :] = 0
    matches = [s for s, x in shifted.items() if np.array_equal(out[b], x)]
    assert len(matches) == 1, f"record {b}: shifted by {matches}"
    found.append(matches[0])
  assert len(set(found)) > 4  # drawn per record


def test_lead_dropout_zeroes_exactly_the_chosen_leads():
  ecg = _ecg()
  out, present = _run(_only("lead_dropout", lead_p=0.5), ecg)
  assert present.shape == (B, C) and present.any(axis=1).all()  # one lead is always kept
  assert 0.2 < 1 - present.mean() < 0.8
  for b in range(B):
    assert not out[b][:, ~present[b]].any()
    assert np.array_equal(
      out[b][:, present[b]], ecg[b][:, present[b]]
    )  # the others untouched, bitwise
  all_but_one = _run(_only("lead_dropout", lead_p=0.999), ecg)[1]
  np.testing.assert_array_equal(all_but_one.sum(axis=1), 1)


def test_probability_picks_records_and_same_key_same_result():
  ecg = _ecg()
  config = _plain()
  for name in augment.PARAMETERS:
    config.augment[name].p = 0.5
  setting = augment.from_config(config)
  first, present = _run(setting, ecg)
  again, present_again = _run(setting, ecg)
  assert first.tobytes() == again.tobytes() and np.array_equal(present, present_again)
  other = _run(setting, ecg, jax.random.PRNGKey(8))[0]
  assert not np.array_equal(first, other)
  only_noise = _only("noise", p=0.5)
  out = _run(only_noise, ecg)[0]
  untouched = [np.array_equal(out[b], ecg[b]) for b in range(B)]
  assert 0 < sum(untouched) < B  # p = 0.5: some records get it, some not
  k1 = augment.step_key(0, jnp.int32(5))
  assert np.array_equal(k1, augment.step_key(0, jnp.int32(5)))
  assert not np.array_equal(k1, augment.step_key(0, jnp.int32(6)))


def test_config_check_names_the_key():
  augment_all = default.get_config()
  check_augment(augment_all)
  cases = [
    (("noise", "p", 1.5), "config.augment.noise.p=1.5: use a probability in [0, 1]"),
    (("gain", "low", 2.0), "config.augment.gain.low=2.0 > high=1.4: set low <= high"),
    (
      ("wander", "max_hz", 8.0),
      "config.augment.wander.max_hz=8.0: use a frequency in (0.05, 5] Hz",
    ),
    (("mains", "mv", -1.0), "config.augment.mains.mv=-1.0: use millivolts in [0, 5]"),
  ]
  for (name, key, value), message in cases:
    config = default.get_config()
    config.augment[name][key] = value
    with pytest.raises(ConfigError, match=r"^" + __import__("re").escape(message)):
      check_augment(config)
  config = default.get_config()
  config.augment.unlock()
  config.augment.jitter = dict(p=0.1)
  with pytest.raises(
    ConfigError, match="config.augment.jitter: unknown augmentation; use one of shift"
  ):
    check_augment(config)
  del config.augment["jitter"]
  config.augment.noise.unlock()
  config.augment.noise.sigma = 0.1
  with pytest.raises(
    ConfigError, match=r"config.augment.noise.sigma: unknown parameter; noise has p, mv"
  ):
    check_augment(config)
  config = default.get_config()
  del config["augment"]
  with pytest.raises(ConfigError, match=r"^config.augment is missing"):
    check_augment(config)


@pytest.fixture(scope="module")
def step_setup():
  """A tiny model's state, one batch (1,000 samples: the tower takes any length) and the report table."""
  config = default.get_config("tiny")
  mesh = make_mesh()
  model = step_lib.make_model(config)
  tx, schedule = step_lib.make_optimizer(config, 10)
  state = step_lib.init_state(config, model, tx, 16, mesh)
  rng = np.random.default_rng(0)
  batch = {
    "ecg": (rng.standard_normal((32, 1000, 12)) * 300).astype(np.int16),
    "report_row": rng.integers(0, 12, 32).astype(np.int32),
  }
  table = jax.device_put(rng.standard_normal((12, 16)).astype(np.float32), replicated(mesh))
  return config, mesh, model, tx, schedule, state, jax.device_put(batch, data_sharding(mesh)), table


def _step(step_setup, microbatches=1, **on):
  """The train step of step_setup's config with the augmentations `on` (name=p), as a function of nothing."""
  config, mesh, model, tx, schedule, state, batch, table = step_setup
  config = config.copy_and_resolve_references()
  config.optimizer.warmup_steps = 0  # the first step moves the parameters
  config.microbatches = microbatches
  for name, p in on.items():
    config.augment[name].p = p
  tx, schedule = step_lib.make_optimizer(config, 10)
  train_step = step_lib.make_train_step(config, model, tx, schedule, mesh)

  def run():
    fresh = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its state
    new_state, metrics = train_step(fresh, batch, table)
    return float(metrics["loss"]), jax.tree_util.tree_leaves(jax.device_get(new_state["params"]))

  return run


@pytest.mark.slow  # two compiles of the tiny train step: ~1 min on a loaded 2-core VM
def test_train_step_with_augmentation_runs_differs_and_repeats(step_setup):
  plain_loss, plain = _step(step_setup)()
  augmented = _step(step_setup, noise=1.0, shift=1.0, lead_dropout=0.5, wander=1.0)
  (loss, params), (loss_again, params_again) = augmented(), augmented()
  assert np.isfinite(loss) and loss != plain_loss
  assert loss == loss_again  # keyed by (seed, step): a resumed run draws the same
  assert all(np.array_equal(a, b) for a, b in zip(params, params_again))
  assert not any(np.array_equal(a, b) for a, b in zip(params, plain) if a.ndim > 1)


@pytest.mark.slow  # a compile of the cached-gradient step
def test_gradient_caching_with_augmentation_runs_and_repeats(step_setup):
  """config.microbatches > 1: the batch is augmented whole, then cut into micro-batches (float chunks)."""
  augmented = _step(step_setup, 2, noise=1.0, gain=1.0)
  (loss, params), (loss_again, params_again) = augmented(), augmented()
  assert np.isfinite(loss) and loss == loss_again
  assert all(np.array_equal(a, b) for a, b in zip(params, params_again))


@pytest.mark.slow  # the model's state and an encoder compile
def test_evaluation_never_augments(step_setup):
  """The evaluator's encoder takes no config: the same embeddings whatever config.augment says."""
  config, mesh, model, tx, schedule, state, batch, table = step_setup
  encode = make_ecg_encoder(model, mesh)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  index = mask = jnp.zeros((32,), jnp.int32)
  got = np.asarray(encode(variables, batch["ecg"], index, mask)[0])
  want = np.asarray(
    model.apply(
      variables, step_lib.ecg_millivolts(jnp.asarray(np.asarray(batch["ecg"]))), method="encode_ecg"
    )
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
