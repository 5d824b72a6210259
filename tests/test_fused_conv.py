"""config.train.conv_impl (issue 18): the fused convolutions equal the plain lax.conv + BatchNorm, forward and
backward, at every ResNet1d-18 stage's shapes, and a training run with the switch on follows the one with it off.

Tolerances (float32) are error bounds, not fitted numbers. A float32 sum of K terms errs by at most
gamma_K * sum|terms|, gamma_K = K u / (1 - K u), u = 2^-24 (Higham 4.2), whatever the order; the fused and the
plain result sum the same terms in different orders, so they differ by at most 2 gamma_K * sum|terms|, with the
sum of magnitudes computed by the same linear maps on absolute values (conv(|h|, |w|), and the conv's VJP on
|h|, |w| and |cotangent|). K: k C for an output of the conv, N + k D (N = batch x steps) for a statistic or a
weight gradient (a sum over N of values each already a k C or k D sum). A shifted tap, a missing tap or mask
errs by ~ the values themselves, 10^3 to 10^5 times these bounds.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ecg_contrastive import step as step_lib
from ecg_contrastive.config_check import ConfigError, check_config
from ecg_contrastive.models.fused_conv import IMPLS, fused_conv, output_length, prologue
from ecg_contrastive.models.fused_conv_pallas import conv_stats
from ecg_contrastive.models.resnet1d import ResNet1d
from ecg_contrastive.sharding import data_sharding, make_mesh, replicated

U = 2.0**-24

# (input steps, in channels, out channels, kernel, stride, prologue): every conv of a ResNet1d-18 block on the
# 2500 steps after the stem (5000 samples): stage 1 (2500 steps), the first block of stages 2-4 (conv1 and the 1x1
# shortcut at stride 2, conv2 with bn1 + ReLU as its prologue). 2500, 1250, 625 and 313 are no multiples of the
# Pallas kernel's 64-step tiles. Channels are the paper's divided by 4 (16..128), to keep CPU time low.
STAGES = {
  "stage1_conv1": (2500, 16, 16, 3, 1, False),
  "stage1_conv2": (2500, 16, 16, 3, 1, True),
  "stage2_conv1": (2500, 16, 32, 3, 2, False),
  "stage2_shortcut": (2500, 16, 32, 1, 2, False),
  "stage2_conv2": (1250, 32, 32, 3, 1, True),
  "stage3_conv1": (1250, 32, 64, 3, 2, False),
  "stage3_conv2": (625, 64, 64, 3, 1, True),
  "stage4_conv1": (625, 64, 128, 3, 2, False),
  "stage4_shortcut": (625, 64, 128, 1, 2, False),
  "stage4_conv2": (313, 128, 128, 3, 1, True),
}


def gamma(k: int) -> float:
  return k * U / (1 - k * U)


def _conv(h, w, stride):
  pad = w.shape[0] // 2
  return jax.lax.conv_general_dilated(
    h, w, (stride,), [(pad, pad)], dimension_numbers=("NWC", "WIO", "NWC")
  )


def _reference(x, w, norm, stride, relu):
  """lax.conv of the plain BatchNorm's output (the "xla" path's operations) and its output's sums."""
  h = prologue(x, norm, relu).astype(x.dtype) if norm is not None else x
  y = _conv(h, w.astype(x.dtype), stride)
  y32 = y.astype(jnp.float32)
  return y, jnp.sum(y32, (0, 1)), jnp.sum(y32 * y32, (0, 1))


def _case(shape, batch=2, seed=0):
  length, c, d, k, stride, with_prologue = shape
  keys = jax.random.split(jax.random.PRNGKey(seed), 8)
  x = jax.random.normal(keys[0], (batch, length, c)) * 2 + 0.5
  w = jax.random.normal(keys[1], (k, c, d)) / np.sqrt(k * c)
  norm = None
  if with_prologue:  # a BatchNorm's (shift, mult, bias): ReLU gates about half the steps
    norm = (
      jax.random.normal(keys[2], (c,)) * 0.3,
      jax.random.uniform(keys[3], (c,), minval=0.3, maxval=0.7),
      jax.random.normal(keys[4], (c,)) * 0.2,
    )
  t_out = output_length(length, k, stride)
  cotangents = (
    jax.random.normal(keys[5], (batch, t_out, d)),
    jax.random.normal(keys[6], (d,)),
    jax.random.normal(keys[7], (d,)) * 0.01,
  )
  return x, w, norm, cotangents


def _magnitudes(x, w, norm, stride, relu, cotangents, y):
  """Sums of |terms| of each result (module docstring): forward (y, y_sum, y_sq), then the gradients
  (x, w, norm)."""
  h = jnp.abs(prologue(x, norm, relu)) if norm is not None else jnp.abs(x)
  m_y = _conv(h, jnp.abs(w), stride)
  ay = jnp.abs(y)
  m_sum = jnp.sum(m_y + ay, (0, 1))
  m_sq = jnp.sum(2 * ay * m_y + ay * ay, (0, 1))
  dy, d_sum, d_sq = cotangents
  g = jnp.abs(dy) + jnp.abs(d_sum) + 2 * ay * jnp.abs(d_sq)
  _, vjp = jax.vjp(lambda h, w: _conv(h, w, stride), h, jnp.abs(w))
  m_dh, m_dw = vjp(g)
  if norm is None:
    return (m_y, m_sum, m_sq), (m_dh, m_dw, None)
  shift, mult, _ = norm
  m_bias = jnp.sum(m_dh, (0, 1))
  grads = (
    m_dh * jnp.abs(mult),
    m_dw,
    (jnp.abs(mult) * m_bias, jnp.sum(m_dh * jnp.abs(x - shift), (0, 1)), m_bias),
  )
  return (m_y, m_sum, m_sq), grads


def _assert_within(name, got, want, magnitude, k):
  """|got - want| <= 2 gamma_k magnitude + 4 u |want| (the last few roundings of elementwise steps)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  bound = 2 * gamma(k) * np.asarray(magnitude, np.float64) + 4 * U * np.abs(want) + 1e-30
  excess = np.abs(got - want) / bound
  assert excess.max() <= 1.0, f"{name}: error {excess.max():.3g} x its float32 bound"


def _check_against_reference(shape, impl):
  length, c, d, k, stride, with_prologue = shape
  x, w, norm, cotangents = _case(shape)
  relu = with_prologue

  def fused(x, w, norm):
    return fused_conv(x, w, norm, stride=stride, relu=relu, impl=impl)

  out, vjp = jax.jit(lambda x, w, norm: jax.vjp(fused, x, w, norm))(x, w, norm)
  ref, vjp_ref = jax.vjp(lambda x, w, norm: _reference(x, w, norm, stride, relu), x, w, norm)
  grads, grads_ref = vjp(cotangents), vjp_ref(cotangents)
  (m_y, m_sum, m_sq), (m_dx, m_dw, m_norm) = _magnitudes(
    x, w, norm, stride, relu, cotangents, ref[0]
  )
  n = x.shape[0] * out[0].shape[1]
  assert out[0].shape == (x.shape[0], output_length(length, k, stride), d)
  _assert_within("y", out[0], ref[0], m_y, k * c)
  _assert_within("sum of y", out[1], ref[1], m_sum, n + k * c)
  _assert_within("sum of y^2", out[2], ref[2], m_sq, n + k * c)
  _assert_within("d x", grads[0], grads_ref[0], m_dx, k * d)
  _assert_within("d kernel", grads[1], grads_ref[1], m_dw, n + k * d)
  if norm is not None:
    for name, got, want, m in zip(("shift", "mult", "bias"), grads[2], grads_ref[2], m_norm):
      _assert_within(f"d {name}", got, want, m, n + k * d)
    assert (
      0.2 < float(jnp.mean(prologue(x, norm, True) > 0)) < 0.8
    )  # the ReLU gates a share of steps


@pytest.mark.parametrize("stage", list(STAGES))
def test_shifted_matmul_equals_lax_conv_at_every_stage(stage):
  _check_against_reference(STAGES[stage], "shifted_matmul")


@pytest.mark.parametrize("stage", ["stage1_conv2", "stage2_conv1", "stage4_shortcut"])
def test_pallas_kernel_equals_lax_conv(stage):
  """Interpret mode on CPU (the kernel's GPU compilation is bench/gpu_run.sh's first step)."""
  _check_against_reference(STAGES[stage], "pallas")


@pytest.mark.slow
@pytest.mark.parametrize(
  "stage", [s for s in STAGES if s not in ("stage1_conv2", "stage2_conv1", "stage4_shortcut")]
)
def test_pallas_kernel_equals_lax_conv_at_the_other_stages(stage):
  _check_against_reference(STAGES[stage], "pallas")


PAPER_STAGES = {  # the paper's widths (64..512) at the stage lengths
  name: (length, c * 4, d * 4, k, stride, p)
  for name, (length, c, d, k, stride, p) in STAGES.items()
}


def test_pallas_kernel_lowers_to_triton_for_cuda_at_the_paper_shapes():
  """Cross-lowered for CUDA on this CPU (no GPU needed): Pallas' Triton lowering accepts the kernel at every conv
  of the paper's ResNet1d-18 in bf16 (power-of-two blocks, masked loads, tl.dot) and emits a Triton custom
  call. Compiling that call to GPU code happens on the GPU only (bench/gpu_run.sh)."""
  for name, (length, c, d, k, stride, with_prologue) in PAPER_STAGES.items():
    x = jax.ShapeDtypeStruct((8, length, c), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((k, c, d), jnp.float32)
    v = jax.ShapeDtypeStruct((c,), jnp.float32)
    kernel = jax.jit(
      lambda x, w, n: conv_stats(x, w, n, stride, with_prologue, with_prologue, interpret=False)
    )
    text = kernel.trace(x, w, (v, v, v)).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1, name
    t_out = output_length(length, k, stride)
    assert f"tensor<8x{t_out}x{d}xbf16>" in text, name  # y, in the compute dtype


@pytest.mark.parametrize(
  "block_t,length",
  [
    (16, 37),
    pytest.param(32, 64, marks=pytest.mark.slow),
    pytest.param(64, 65, marks=pytest.mark.slow),
  ],
)
def test_pallas_tiles_cover_any_length(block_t, length):
  """Lengths below, at and above a whole number of tiles: the statistics count each output step once; 32
  channels in and out in two 16-channel chunks each (the kernel's input-channel loop and output-channel grid)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (3, length, 32)) + 1.0
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 32, 32))
  norm = (jnp.full(32, 0.5), jnp.linspace(0.5, 1.5, 32), jnp.linspace(-0.2, 0.2, 32))
  for stride in (1, 2):
    out = conv_stats(x, w, norm, stride, True, True, block_t=block_t, block_d=16, block_c=16)
    ref = _reference(x, w, norm, stride, True)
    cotangents = (ref[0], norm[0], norm[0])  # unused: only the forward's magnitudes are read
    m_y, m_sum, m_sq = _magnitudes(x, w, norm, stride, True, cotangents, ref[0])[0]
    n = 3 * ref[0].shape[1]
    _assert_within("y", out[0], ref[0], m_y, 96)
    _assert_within("sum of y", out[1], ref[1], m_sum, n + 96)
    _assert_within("sum of y^2", out[2], ref[2], m_sq, n + 96)


def test_bad_shapes_are_refused():
  x, w = jnp.zeros((1, 10, 4)), jnp.zeros((5, 4, 4))
  with pytest.raises(ValueError, match="kernel size 5, stride 1: only k = 1 or 3"):
    fused_conv(x, w)
  with pytest.raises(ValueError, match="relu=True needs a prologue"):
    fused_conv(x, w[:3], relu=True)


def _resnet(impl, dtype=jnp.float32):
  return ResNet1d(depth=18, width=8, dtype=dtype, conv_impl=impl)


ECG = jax.random.normal(
  jax.random.PRNGKey(4), (4, 1000, 12)
)  # 500 steps after the stem: no whole 64-step tiles


def _train_forward(impl, variables, dtype=jnp.float32):
  """(features, updated batch_stats), gradients of sum(features * weights) w.r.t. (params, ecg), and the vjp
  (what it keeps for the backward pass), in one jit."""
  model = _resnet(impl, dtype)

  def run(variables, ecg):
    def forward(params, ecg):
      return model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        ecg,
        True,
        mutable=["batch_stats"],
      )

    (features, stats), vjp = jax.vjp(forward, variables["params"], ecg)
    weights = jnp.linspace(-1.0, 1.0, features.shape[-1]) * jnp.ones_like(features)
    grads = vjp((weights, jax.tree.map(jnp.zeros_like, stats)))
    return (features, stats), grads, vjp

  return jax.jit(run)(variables, ECG)


def _init(impl, dtype=jnp.float32):
  return jax.jit(_resnet(impl, dtype).init)(jax.random.PRNGKey(5), ECG[:1])


def test_every_impl_has_the_same_parameters():
  """Same names, shapes and initial values: checkpoints and the export do not depend on conv_impl."""
  trees = [_init(impl) for impl in IMPLS]
  for tree in trees[1:]:
    assert jax.tree.structure(tree) == jax.tree.structure(trees[0])
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(trees[0])):
      np.testing.assert_array_equal(a, b)
  kernel = trees[0]["params"]["stage2_block1"]["conv1"]["kernel"]
  assert kernel.shape == (3, 8, 16)  # (k, in, out), as flax.linen.Conv's


@pytest.mark.parametrize("impl", ["shifted_matmul", pytest.param("pallas", marks=pytest.mark.slow)])
def test_resnet18_train_step_values_equal_xla(impl):
  """ResNet1d-18 in training mode: features, running statistics and gradients (parameters and input).

  Tolerance: each of the 20 layers sums at most K = 2,000 terms (the statistics over 4 x 500 steps), within
  2 gamma_K of the plain path relative to the largest value of its output; the network's result adds up at most
  20 such relative errors: rtol 20 x 2 gamma_2000 = 4.8e-3 of each tensor's largest magnitude (measured: 3.2e-6
  shifted_matmul, 3.3e-6 pallas).
  """
  variables = _init("xla")
  ref, ref_grads, _ = _train_forward("xla", variables)
  out, grads, _ = _train_forward(impl, variables)
  tol = 20 * 2 * gamma(2000)
  for name, a, b in [("features/stats", out, ref), ("gradients", grads, ref_grads)]:
    for got, want in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      scale = float(jnp.max(jnp.abs(want)))
      assert float(jnp.max(jnp.abs(got - want))) <= tol * scale, name
  assert float(jnp.max(jnp.abs(ref_grads[1]))) > 0  # the input's gradient is not trivially zero
  evaluated = [
    jax.jit(_resnet(i).apply)(variables, ECG) for i in ("xla", impl)
  ]  # running statistics
  np.testing.assert_allclose(evaluated[1], evaluated[0], atol=tol * float(jnp.max(evaluated[0])))


def test_bf16_fused_backward_keeps_no_float32_activations():
  """Under bf16 the fused blocks keep, for the backward pass, only compute-dtype maps (x and y of each conv),
  as the lean BatchNorm does, and no more of them than the plain path; the features agree within bf16
  rounding (8 bits: 20 layers x 2 x 2^-8 = 0.16 of the largest feature, measured ~1e-2)."""
  variables = _init("xla", jnp.bfloat16)
  kept = {}
  for impl in ("xla", "shifted_matmul"):
    (features, _), _, vjp = _train_forward(impl, variables, jnp.bfloat16)
    maps = [
      a for a in jax.tree.leaves(vjp) if a.ndim == 3 and a.shape[0] == 4
    ]  # (B, T, C) activations
    kept[impl] = (features, [str(a.dtype) for a in maps])
  assert "float32" not in kept["shifted_matmul"][1], kept["shifted_matmul"][1]
  assert len(kept["shifted_matmul"][1]) <= len(kept["xla"][1])
  scale = float(jnp.max(jnp.abs(kept["xla"][0])))
  assert float(jnp.max(jnp.abs(kept["shifted_matmul"][0] - kept["xla"][0]))) <= 0.16 * scale


def _tiny_run(impl, steps=4):
  """Losses of `steps` training steps of the tiny config's model and optimizer, on the 8 CPU devices, with
  config.train.conv_impl = impl."""
  config = default.get_config("tiny")
  config.train.conv_impl = impl
  config.optimizer.warmup_steps = 1
  mesh = make_mesh()
  model = step_lib.make_model(config)
  tx, schedule = step_lib.make_optimizer(config, 20)
  state = step_lib.init_state(config, model, tx, 16, mesh)
  train_step = step_lib.make_train_step(config, model, tx, schedule, mesh)
  rng = np.random.default_rng(0)
  table = jax.device_put(rng.standard_normal((12, 16)).astype(np.float32), replicated(mesh))
  losses = []
  for _ in range(steps):
    batch = {
      "ecg": (rng.standard_normal((config.batch_size, 1000, 12)) * 300).astype(np.int16),
      "report_row": rng.integers(0, 12, config.batch_size).astype(np.int32),
    }
    state, metrics = train_step(state, jax.device_put(batch, data_sharding(mesh)), table)
    losses.append(float(metrics["loss"]))
  return losses


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["shifted_matmul", "pallas"])
def test_tiny_training_run_follows_the_xla_one(impl):
  """Same loss trajectory, switch on vs off: AdamW's first steps move each weight by ~lr whatever the gradient's
  size, so rounding differences (~1e-5 relative in the gradients, above) stay ~1e-5 relative in the loss; 1e-3
  allows for growth over 4 steps while a wrong gradient (or statistics) changes the loss at the 1e-2 level."""
  losses = {i: _tiny_run(i) for i in ("xla", impl)}
  assert len(set(losses["xla"])) == 4  # the loss moves
  np.testing.assert_allclose(losses[impl], losses["xla"], rtol=1e-3)  # measured: 3e-7 (both impls)


def test_config_check_names_the_choices():
  config = default.get_config("tiny")
  config.train["conv_impl"] = "cudnn"
  with pytest.raises(
    ConfigError, match=r"config.train.conv_impl='cudnn': use one of \('xla', 'shifted_matmul'"
  ):
    check_config(config)
  config.train["conv_impl"] = "pallas"
  check_config(config)


@pytest.mark.slow
def test_export_is_the_same_with_the_switch_on(tmp_path):
  """The same checkpoint exported from a workdir trained with conv_impl="shifted_matmul" and from one without:
  the same files, byte for byte (parity verified for both, its measured errors aside)."""
  from ecg_contrastive.export import to_torch
  from tests.export_helpers import TINY_TRAIN, make_workdir

  folders = {}
  for impl in ("xla", "shifted_matmul"):
    shutil.rmtree(tmp_path / "run", ignore_errors=True)  # one workdir path: the files name it
    workdir = make_workdir(str(tmp_path / "run"), train=dict(TINY_TRAIN, conv_impl=impl))
    folders[impl] = to_torch.export(workdir, str(tmp_path / f"out_{impl}"), verify=True)
  names = sorted(os.listdir(folders["xla"]))
  assert names == sorted(os.listdir(folders["shifted_matmul"])) and "model.safetensors" in names
  for name in names:
    a, b = (open(os.path.join(folders[i], name), "rb").read() for i in ("xla", "shifted_matmul"))
    if name == "config.json":
      a, b = (json.loads(x) for x in (a, b))
      for config in (a, b):
        assert config["verified_parity"] is not None
        config.pop("verified_parity")  # measured errors: the JAX side may round differently
    assert a == b, name
