"""The benchmark command at tiny sizes: each subcommand's table and JSON have the right columns and
positive, finite figures; the FLOP count, the memory comparison and the target check give the right
numbers. Nothing here asserts a speed."""

import gzip
import json
import math

import jax
import pytest

from bench import results, step, targets, trace_summary
from bench.__main__ import main
from bench.rows import STEP_COLUMNS
from bench.workload import PRESETS

TINY_TIMING = ["--warmup", "1", "--windows", "2", "--steps", "1"]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """step and pipeline compile the same tiny step: the second one reads it from this on-disk cache."""
  saved = {
    k: getattr(jax.config, k)
    for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  }
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)


def positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def load(prefix) -> dict:
  with open(f"{prefix}.json", encoding="utf-8") as f:
    return json.load(f)


def test_paper_model_flops_match_perf_md():
  paper = PRESETS["paper"]
  assert paper.forward_flops_per_ecg() == pytest.approx(3.43e9, rel=2e-3)
  assert paper.train_flops_per_ecg() == pytest.approx(10.3e9, rel=2e-3)
  # width w costs w^2: the tiny model at width 8 over 500 samples is far cheaper
  assert PRESETS["tiny"].forward_flops_per_ecg() < paper.forward_flops_per_ecg() / 500


@pytest.mark.slow
def test_workload_config_is_the_project_config_of_its_model():
  """config.model is the workload's architecture as is; its compute dtype is a training setting (config.train); the
  project's one builder and the exported module's config see the same network."""
  from ecg_contrastive.export.to_torch import architecture_section
  from ecg_contrastive.models.resnet1d import stage_sizes
  from ecg_contrastive.models.two_tower import from_config

  for workload in PRESETS.values():
    config = workload.config(64)
    assert (
      config.model.to_dict() == workload.architecture() and config.train.dtype == workload.dtype
    )
    model = from_config(config)
    assert (model.depth, model.width, model.dtype) == (
      workload.depth,
      workload.width,
      workload.dtype,
    )
    assert architecture_section(workload.architecture())["stage_sizes"] == list(
      stage_sizes(workload.depth)
    )


def test_step_command_runs_ours_and_torch_side_by_side(tmp_path, capsys):
  prefix = str(tmp_path / "step")
  assert (
    main(
      [
        "step",
        "--model",
        "tiny",
        "--batch-sizes",
        "8",
        "--torch",
        "eager",
        "--buffers",
        "2",
        *TINY_TIMING,
        "--profile",
        str(tmp_path / "profile"),
        "--out",
        prefix,
      ]
    )
    == 0
  )
  data = load(prefix)
  keys = [c[0] for c in data["columns"]]
  assert keys == [c[0] for c in STEP_COLUMNS]
  assert keys[:4] == ["impl", "batch", "ecg_per_s", "step_ms"]
  assert {"tflops", "peak_gib", "vs_torch_compile"} <= set(keys)
  ours, eager = data["rows"]
  assert (ours["impl"], eager["impl"]) == ("jax (ours)", "torch eager")
  for row in (ours, eager):
    assert row["batch"] == 8 and row["windows"] == 2
    for key in ("ecg_per_s", "step_ms", "step_ms_min", "step_ms_max", "tflops", "loss"):
      assert positive(row[key]), (row["impl"], key, row[key])
    assert row["step_ms_min"] <= row["step_ms"] <= row["step_ms_max"]
    assert row["ecg_per_s"] == pytest.approx(8 / (row["step_ms"] / 1e3))
    assert row["tflops"] == pytest.approx(
      PRESETS["tiny"].train_flops_per_ecg() * row["ecg_per_s"] / 1e12
    )
  assert positive(ours["tflops_xla"]) and positive(ours["plan_gib"])
  assert ours["peak_gib"] is None  # CPU: the allocator reports no peak
  assert eager["vs_torch_eager"] == 1.0 and ours["vs_torch_eager"] == pytest.approx(
    ours["ecg_per_s"] / eager["ecg_per_s"]
  )
  assert ours["vs_torch_compile"] is None
  profile = ours["profile"]
  assert profile["steps"] == 1 and positive(profile["op_ms_per_step"]) and profile["top_ops"]
  assert any(
    positive(o["gb_per_s"]) for o in profile["top_ops"]
  )  # joined to the compiled step's HLO
  assert (tmp_path / "profile" / "profile_summary.txt").exists()
  meta = data["meta"]
  assert meta["subcommand"] == "step" and meta["platform"] == "cpu" and meta["versions"]["jax"]
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-4].startswith("| implementation") and out[-1].startswith(
    "|    torch eager |"
  )  # the table, last


@pytest.mark.slow
def test_plan_only_shows_gradient_caching_cuts_memory(tmp_path):
  prefix = str(tmp_path / "plan")
  hlo = tmp_path / "ours.hlo.txt.gz"
  assert (
    main(
      [
        "step",
        "--model",
        "tiny",
        "--batch-sizes",
        "32,64",
        "--microbatches",
        "1,3,4",
        "--plan-only",
        "--dump-hlo",
        str(hlo),
        "--out",
        prefix,
      ]
    )
    == 0
  )
  rows = load(prefix)["rows"]
  # 3 does not divide the 8 ECGs per device: skipped; PyTorch is not run for a plan
  assert [(r["impl"], r["batch"]) for r in rows] == [
    ("jax (ours)", 32),
    ("jax (ours), 4 micro-batches", 32),
    ("jax (ours)", 64),
    ("jax (ours), 4 micro-batches", 64),
  ]
  plain, cached = rows[2:]
  with gzip.open(hlo, "rt") as f:  # the optimized HLO of the plain step at the largest batch only
    text = f.read()
  assert (
    text.startswith("HloModule")
    and "ENTRY" in text
    and "s16[8,5000,12]" in text
    and "while" not in text
  )
  assert plain["ecg_per_s"] is None and positive(plain["plan_gib"]) and positive(cached["plan_gib"])
  assert (
    cached["plan_gib"] < 0.8 * plain["plan_gib"]
  )  # activations of 2 ECGs per device at a time, not 8
  assert cached["gflop_per_ecg_xla"] > 0


@pytest.mark.slow
def test_pipeline_command_feeds_our_step_through_the_input_pipeline(tmp_path, capsys):
  prefix = str(tmp_path / "pipeline")
  assert (
    main(
      [
        "pipeline",
        "--model",
        "tiny",
        "--batch-size",
        "8",
        "--dataset",
        "synthetic_ecg_ja/tiny",
        "--data-dir",
        str(tmp_path / "data"),
        "--prefetch",
        "2",
        *TINY_TIMING,
        "--out",
        prefix,
      ]
    )
    == 0
  )
  data = load(prefix)
  alone, resident, fed = data["rows"]
  assert [r["impl"] for r in data["rows"]] == [
    "input pipeline alone",
    "jax (ours), device-resident",
    "jax (ours), input pipeline",
  ]
  for row in data["rows"]:
    assert row["batch"] == 8 and row["records"] == 256  # the tiny train split
    for key in ("ecg_per_s", "step_ms", "fraction", "open_s"):
      assert positive(row[key]), (row["impl"], key, row[key])
  assert resident["fraction"] == 1.0 and fed["fraction"] == pytest.approx(
    fed["ecg_per_s"] / resident["ecg_per_s"]
  )
  assert positive(resident["loss"]) and positive(fed["loss"]) and positive(fed["tflops"])
  assert alone["loss"] is None and alone["tflops"] is None
  assert [c[0] for c in data["columns"]][-1] == "fraction"
  assert data["meta"]["workload"]["dataset"] == "synthetic_ecg_ja/tiny"
  assert (
    capsys.readouterr().out.strip().splitlines()[-1].startswith("|  jax (ours), input pipeline |")
  )


def test_placement_command_times_host_and_device_placement_side_by_side(tmp_path, capsys):
  prefix = str(tmp_path / "placement")
  args = ["placement", "--batch-size", "8", "--dataset", "synthetic_ecg_ja/tiny"]
  args += ["--data-dir", str(tmp_path / "data"), *TINY_TIMING, "--out", prefix]
  assert main(args) == 0
  data = load(prefix)
  host, device = data["rows"]
  assert [host["impl"], device["impl"]] == [
    "host placement, input alone",
    "device placement, input alone",
  ]
  for row in data["rows"]:
    assert row["batch"] == 8 and row["records"] == 256 and row["windows"] == 2
    for key in ("ecg_per_s", "gb_per_s", "step_ms", "vs_host", "load_average_start"):
      assert positive(row[key]), (row["impl"], key, row[key])
  assert host["vs_host"] == 1.0 and host["place_s"] is None and positive(device["place_s"])
  assert device["vs_host"] == pytest.approx(device["ecg_per_s"] / host["ecg_per_s"])
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| device placement, input")


@pytest.mark.slow
def test_memory_command_shows_per_device_loss_memory_below_full_batch(tmp_path):
  prefix = str(tmp_path / "memory")
  assert main(["memory", "--batch-sizes", "256,2048", "--embed-dim", "32", "--out", prefix]) == 0
  small, large = load(prefix)["rows"]
  for row in (small, large):
    assert row["devices"] == 8 and row["per_device"] == row["batch"] // 8
    assert row["logit_block_mib"] == row["per_device"] * row["batch"] * 4 / 2**20
    assert positive(row["temp_mib"]) and row["plan_mib"] >= row["temp_mib"]
    assert row["naive_temp_mib"] > row["temp_mib"]
  # ours holds (b, B) blocks: a few logit-sized f32 buffers per device at large B ...
  assert large["temp_mib"] < 8 * large["logit_block_mib"]
  # ... the naive loss several (B, B) ones: the gap grows with B, past the device count
  assert large["naive_over_ours"] > small["naive_over_ours"] and large["naive_over_ours"] > 4


def test_show_reprints_tables_and_checks_targets(tmp_path, capsys):
  meta = {
    "date": "d",
    "command": "c",
    "platform": "gpu",
    "device": "H100",
    "num_devices": 1,
    "cpu": "x",
    "load_average_1m": 0.5,
    "python": "3.12",
    "versions": {"jax": "0.11"},
    "subcommand": "step",
  }
  rows = [
    {"impl": "jax (ours)", "batch": 1024, "ecg_per_s": 31_000.0, "vs_torch_compile": 2.5},
    {"impl": "torch compile", "batch": 1024, "ecg_per_s": 12_400.0, "vs_torch_compile": 1.0},
  ]
  columns = [("impl", "impl", ""), ("ecg_per_s", "ECG/s", ",.0f")]
  results.write_results(str(tmp_path / "step"), meta, rows, columns)
  pipe = [
    {"impl": "jax (ours), input pipeline", "batch": 1024, "ecg_per_s": 29_000.0, "fraction": 0.935}
  ]
  results.write_results(
    str(tmp_path / "pipeline"), dict(meta, subcommand="pipeline"), pipe, columns
  )
  assert main(["show", str(tmp_path / "step.json"), str(tmp_path / "pipeline.json")]) == 0
  out = capsys.readouterr().out
  cells = [
    [c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("|")
  ]
  assert ["jax (ours)", "31,000"] in cells and ["jax (ours), input pipeline", "29,000"] in cells
  assert out.strip().splitlines()[-3:] == [
    "ours at batch 1024: 31,000 ECG/s (target >= 30,000): met",
    "ours / torch.compile at batch 1024: 2.50x (target >= 3x): MISSED",
    "input pipeline / device-resident at batch 1024: 0.94 (target >= 0.90): met",
  ]


def test_a_failed_run_is_a_row_with_its_error_and_ratios_skip_it():
  failed = step.measured_row("torch compile", 1024, lambda: {"ecg_per_s": 1 / 0})
  assert failed["ecg_per_s"] is None and failed["error"].startswith("ZeroDivisionError")
  rows = [
    {"impl": "jax (ours)", "batch": 1024, "ecg_per_s": 30_000.0},
    {"impl": "torch eager", "batch": 1024, "ecg_per_s": 7_500.0},
    failed,
  ]
  step.add_speedups(rows)
  assert rows[0]["vs_torch_eager"] == 4.0 and rows[0]["vs_torch_compile"] is None
  assert failed["vs_torch_eager"] is None


def test_targets_without_a_measured_batch_1024_row():
  assert targets.check([{"impl": "jax (ours)", "batch": 8, "ecg_per_s": 1.0}]) == [
    "no row of ours at batch 1024: targets not checked"
  ]
  assert targets.check(
    [{"impl": "jax (ours)", "batch": 1024, "ecg_per_s": None, "error": "OOM"}]
  ) == ["ours at batch 1024 failed (OOM): targets not checked"]


def test_trace_summary_prefers_the_device_op_line_and_sorts_by_time():
  def x(pid, tid, ts, dur, name, op):
    return {
      "ph": "X",
      "pid": pid,
      "tid": tid,
      "ts": ts,
      "dur": dur,
      "name": name,
      "args": {"hlo_op": op},
    }

  trace = {
    "traceEvents": [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {
        "ph": "M",
        "pid": 2,
        "tid": 7,
        "name": "thread_name",
        "args": {"name": "Stream #13(Compute)"},
      },
      {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
      x(1, 1, 0, 999, "host-side op", "fusion.9"),  # host: ignored when a device exists
      x(
        2, 7, 0, 300, "sm90_xmma_fprop_implicit_gemm_bf16", "cudnn-conv.1"
      ),  # stream: the XLA Ops line wins
      x(2, 8, 0, 300, "cudnn-conv.1", "cudnn-conv.1"),
      x(2, 8, 300, 100, "wrapped_convert", "wrapped_convert"),
      x(2, 8, 500, 100, "input_reduce_fusion", "input_reduce_fusion.2"),
      x(2, 8, 1000, 300, "cudnn-conv.1", "cudnn-conv.1"),
      x(
        2, 7, 1300, 50, "sm90_xmma_dgrad_bf16", "custom-call.4"
      ),  # categorised by the kernel it ran
      x(2, 8, 1300, 50, "custom-call.4", "custom-call.4"),
    ]
  }
  s = trace_summary.summarize(trace, steps=2, wall_s=2e-3)
  assert s["wall_ms_per_step"] == pytest.approx(1.0)
  assert s["op_ms_per_step"] == pytest.approx(0.425) and s["busy_ms_per_step"] == pytest.approx(
    0.425
  )
  assert [o["op"] for o in s["top_ops"]] == [
    "cudnn-conv.1",
    "wrapped_convert",
    "input_reduce_fusion.2",
    "custom-call.4",
  ]
  top = s["top_ops"][0]
  assert top["calls_per_step"] == 1 and top["share"] == pytest.approx(0.6 / 0.85)
  assert top["kernel"] == "sm90_xmma_fprop_implicit_gemm_bf16"
  assert s["top_ops"][3]["category"] == "convolution"
  assert s["by_category"]["convolution"]["ms_per_step"] == pytest.approx(0.325)
  assert trace_summary.category("wrapped_convert") == "other"  # a convert is no convolution
  assert "reduction" in trace_summary.category("input_reduce_fusion.2")


def test_trace_summary_without_op_events_says_so():
  s = trace_summary.summarize({"traceEvents": []}, steps=4, wall_s=0.02)
  assert s["wall_ms_per_step"] == pytest.approx(5.0) and s["op_ms_per_step"] is None
  assert "no per-op events" in trace_summary.format_summary(s)


def test_trace_summary_splits_command_buffers_into_their_kernels():
  """The first H100 trace (XLA 0.11) had no "XLA Ops" line and ran fusions inside CUDA graphs: grouped by
  `hlo_op`, a command buffer holding one reduction and one elementwise fusion all counted as "reduction"."""

  def k(ts, dur, name, op):
    return {
      "ph": "X",
      "pid": 1,
      "tid": 14,
      "ts": ts,
      "dur": dur,
      "name": name,
      "args": {"hlo_op": op},
    }

  step = [
    k(0, 50, "Memset 3", "cudnn-conv.20"),
    k(50, 290, "sm90_xmma_fprop_implicit_gemm", "cudnn-conv.20"),
    k(340, 120, "input_reduce_fusion_49", "command_buffer_47"),
    k(460, 220, "loop_convert_fusion_25", "command_buffer_47"),
  ]
  trace = {
    "traceEvents": [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 1, "tid": 14, "name": "thread_name", "args": {"name": "Stream #14"}},
      *step,
      *[dict(e, ts=e["ts"] + 1000) for e in step],
    ]
  }
  s = trace_summary.summarize(trace, steps=2, wall_s=2e-3)
  assert [o["op"] for o in s["top_ops"]] == [
    "cudnn-conv.20",
    "loop_convert_fusion_25",
    "input_reduce_fusion_49",
  ]
  assert [o["calls_per_step"] for o in s["top_ops"]] == [
    1,
    1,
    1,
  ]  # the conv's memset is not a second call
  cats = {c: v["ms_per_step"] for c, v in s["by_category"].items()}
  assert cats == pytest.approx(
    {
      "convolution": 0.34,
      "elementwise fusion (BN apply, ReLU, residual, optimizer)": 0.22,
      "reduction fusion (BN statistics, BN backward sums)": 0.12,
    }
  )


def test_xla_flop_count_is_not_reported_on_gpus(monkeypatch):
  """XLA's cost analysis leaves out cuDNN's convolutions: on the H100 it counted 1% of the step's FLOPs."""
  from bench import xla_stats

  class Compiled:
    def cost_analysis(self):
      return {"flops": 1e9}

  assert xla_stats.compiled_flops(Compiled()) == 1e9
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla_stats.compiled_flops(Compiled()) is None


@pytest.mark.slow
def test_bn_backward_variants_run_side_by_side(tmp_path, capsys):
  """--bn-backward lean,autodiff: the A/B of the BatchNorm backward in one run, both steps on the same batches."""
  prefix = str(tmp_path / "ab")
  assert (
    main(
      [
        "step",
        "--model",
        "tiny",
        "--batch-sizes",
        "8",
        "--torch",
        "none",
        "--bn-backward",
        "lean,autodiff",
        "--buffers",
        "2",
        *TINY_TIMING,
        "--out",
        prefix,
      ]
    )
    == 0
  )
  lean, auto = load(prefix)["rows"]
  assert (lean["impl"], auto["impl"]) == ("jax (ours)", "jax (ours), autodiff BN backward")
  assert positive(lean["ecg_per_s"]) and positive(auto["ecg_per_s"])
  assert lean["loss"] == pytest.approx(
    auto["loss"], rel=1e-5
  )  # the same model on the same batch: the same loss
  with pytest.raises(SystemExit):
    main(["step", "--bn-backward", "fused"])
  assert "'fused': give one or more of lean, autodiff" in capsys.readouterr().err


def test_hlo_bytes_give_each_op_its_rate():
  """Operand + result bytes per instruction of an optimized HLO module (GPU style: a fusion inside a command
  buffer's computation, a cuDNN custom call with a tuple result), joined to the trace by name ('.' = '_')."""
  hlo = """HloModule jit_step
%command_buffer {
  %p.1 = bf16[1000,1000]{1,0} parameter(0)
  %p.2 = f32[1000]{0} parameter(1)
  ROOT %loop_convert_fusion.25 = bf16[1000,1000]{1,0} fusion(%p.1, %p.2), kind=kLoop, calls=%fused_computation.1
}
ENTRY %main {
  %x = bf16[1000,1000]{1,0} parameter(0)
  %cudnn-conv.20 = (bf16[1000,1000]{1,0}, u8[4096]{0}) custom-call(%x), custom_call_target="__cudnn$convForward"
}
"""
  sizes = trace_summary.hlo_bytes(hlo)
  assert sizes["loop_convert_fusion_25"] == 2_000_000 + 4_000 + 2_000_000
  assert sizes["cudnn-conv_20"] == 2_000_000 + 4096 + 2_000_000

  def k(ts, dur, name, op):
    return {
      "ph": "X",
      "pid": 1,
      "tid": 14,
      "ts": ts,
      "dur": dur,
      "name": name,
      "args": {"hlo_op": op},
    }

  trace = {
    "traceEvents": [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      k(0, 2.0, "sm90_xmma_fprop", "cudnn-conv.20"),
      k(2, 4.0, "loop_convert_fusion_25", "command_buffer_3"),
      k(6, 1.0, "input_reduce_fusion_9", "command_buffer_3"),
    ]
  }
  s = trace_summary.summarize(trace, steps=1, wall_s=1e-5, op_bytes=sizes)
  rates = {o["op"]: o["gb_per_s"] for o in s["top_ops"]}
  assert rates["loop_convert_fusion_25"] == pytest.approx(
    4_004_000 / 4.0 / 1e3
  )  # bytes / us / 1e3 = GB/s
  assert rates["cudnn-conv.20"] == pytest.approx(4_004_096 / 2.0 / 1e3)
  assert rates["input_reduce_fusion_9"] is None  # not in the HLO: no rate rather than a wrong one
  elementwise = s["by_category"]["elementwise fusion (BN apply, ReLU, residual, optimizer)"]
  assert elementwise["gb_per_s"] == pytest.approx(rates["loop_convert_fusion_25"])
  assert "1,001 GB/s" in trace_summary.format_summary(s)


def test_memory_command_with_tiles_compares_dense_and_tiled_loss(tmp_path):
  prefix = str(tmp_path / "tiled")
  argv = ["memory", "--tiles", "8", "--batch-sizes", "32,64", "--embed-dim", "8"]
  assert main(argv + ["--dense-max-batch", "32", "--time-batch", "16", "--out", prefix]) == 0
  rows = load(prefix)["rows"]
  impls = ["dense (b x B blocks)", "tiled T=8, all-gather", "tiled T=8, ring"]
  assert [(r["impl"], r["batch"]) for r in rows] == [
    (impl, batch) for batch in (32, 64, 16) for impl in impls
  ]
  plans, timed = rows[:6], rows[6:]
  for row in plans:
    if row["impl"].startswith("dense") and row["batch"] == 64:  # above --dense-max-batch
      assert "plan_mib" not in row and row["note"].startswith("not compiled")
    else:
      assert positive(row["plan_mib"]) and row["plan_mib"] >= row["temp_mib"]
      assert 0 < row["loss_plan_mib"] <= row["plan_mib"]  # the L2 normalisation only adds
  assert all(positive(r["ms"]) for r in timed)


def test_host_read_command_times_the_stream_and_the_cache(tmp_path, capsys):
  prefix = str(tmp_path / "host_read")
  args = ["host-read", "--dataset", "synthetic_ecg_ja/tiny", "--data-dir", str(tmp_path / "data")]
  args += ["--batch-size", "32", "--batches", "4", "--threads", "1,2", "--out", prefix]
  assert main(args) == 0
  data = load(prefix)
  assert [(r["read"], r["threads"], r["pass"]) for r in data["rows"]] == [
    ("cache (memmap)", None, "cold"),
    ("cache (memmap)", None, "warm"),
    ("stream", 1, "cold"),
    ("stream", 1, "warm"),
    ("stream", 2, "cold"),
    ("stream", 2, "warm"),
  ]
  for row in data["rows"]:
    assert row["rows"] == 128 and positive(row["ecg_per_s"]) and positive(row["cpu_us_per_ecg"])
    assert row["mb_per_s"] == pytest.approx(row["ecg_per_s"] * 0.12)
    assert (row["shard_mb_per_s"] is None) == (row["read"] != "stream")
  assert data["meta"]["workload"] == {
    "dataset": "synthetic_ecg_ja/tiny",
    "split": "train",
    "batch": 32,
  }
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith("|         stream |")
