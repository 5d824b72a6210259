#!/usr/bin/env bash
# Issue 18's GPU run (fused BatchNorm passes, config.train.conv_impl), in one call on the device machine (one H100
# or H200; about 8-9 minutes there, never run yet):
#   1. the Pallas kernel (models/fused_conv_pallas.py) compiled for the card, its forward and statistics
#      checked against the shifted-matmul jnp expression at the paper's stage shapes (bf16, as the step);
#   2. the training step of ResNet1d-18 on (5000, 12) at global batch 256 and 1024, side by side in one process:
#      ours with conv_impl "xla" (today's step), "shifted_matmul" and "pallas", PyTorch eager, torch.compile
#      (default) and torch.compile(mode="max-autotune"); each of ours profiled at 1024 (where the time goes);
#   3. the tables again and issue 18's targets: new / today >= 1.25x and new / best torch.compile >= 3x at 1024.
# Each row is written as soon as it is measured (a run cut by the time limit keeps its rows); a row that fails
# (a kernel that does not compile, out of memory) records its error and the others go on.
# Writes under $OUT (./bench_out when OUT is unset) 8 files, as the device tool brings back at most 8:
# gpu_run.log, step.json, profile_{xla,shifted_matmul,pallas}.txt, ours_{shifted_matmul,pallas}.hlo.txt.gz
# (the optimized HLO of the new steps at 1024: what each fusion reads and writes; today's is in
# bench/results/2026-11-26-h100) and perfetto_shifted_matmul.json.gz.
#
# Device-machine call (tool `run`):  command "bash bench/gpu_run.sh", carry [".whl"], timeout_s 600,
# after `bash bench/fetch_wheels.sh` here (ml_collections and matplotlib-fontja, which the image lacks).
# CPU test here with tiny sizes:     BENCH_TINY=1 bash bench/gpu_run.sh   (Pallas in interpret mode)
#
# Environment it sets, and why:
#   XLA_PYTHON_CLIENT_PREALLOCATE=false  JAX and PyTorch share the card in one process: JAX takes what
#       it needs instead of 75% up front; PyTorch hands its memory back after each of its runs.
#   JAX_COMPILATION_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0  the kernel check and the step
#       share compilations where they can.
#   No XLA_FLAGS: none is justified without a measurement on the card (set BENCH_XLA_FLAGS to try some).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-bench_out}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
[ -n "${BENCH_XLA_FLAGS:-}" ] && export XLA_FLAGS="${BENCH_XLA_FLAGS}"
IMPLS=xla,shifted_matmul,pallas

run() {
  if ! python3 -c "import ml_collections, matplotlib_fontja" 2> /dev/null \
      && compgen -G ".whl/*.whl" > /dev/null; then  # the image lacks them: install the carried wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
      || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"  # the repo root: the package and configs/ (not pip-installed there)

  if [ "${BENCH_TINY:-0}" = 1 ]; then  # CPU check of this script: tiny model, tiny sizes
    MODEL=tiny; BATCHES=8,16; BATCH=16; TIMING=(--warmup 1 --windows 2 --steps 2); TORCH=eager
    WIDTH=8; LENGTH=500; CHECK_LIMIT=300; END=1800
  else
    MODEL=paper; BATCHES=256,1024; BATCH=1024; TIMING=(--warmup 3 --windows 5 --steps 10)
    TORCH="${BENCH_TORCH:-eager,compile,max-autotune}"; WIDTH=64; LENGTH=2500; CHECK_LIMIT=90; END=575
  fi

  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi (CPU run)"
  python3 -c "import sys, jax, torch; print('python', sys.version.split()[0], '| jax', jax.__version__, jax.devices(), \
  '| torch', torch.__version__, 'cuda', torch.cuda.is_available())"

  echo "== Pallas kernel: compiled for $(python3 -c 'import jax; print(jax.default_backend())'), against the jnp expression"
  timeout "$CHECK_LIMIT" python3 - "$WIDTH" "$LENGTH" <<'EOF'
import sys, time
import jax, jax.numpy as jnp
from ecg_contrastive.models.fused_conv import fused_conv
width, length = int(sys.argv[1]), int(sys.argv[2])
# (steps in, channels in, out, k, stride, prologue): the block convs of stages 1, 2 and 4 (313 steps: no whole tile)
shapes = [(length, width, width, 3, 1, True), (length, width, 2 * width, 3, 2, False),
          (length, width, 2 * width, 1, 2, False), ((length + 7) // 8, 8 * width, 8 * width, 3, 1, True)]
for dtype in (jnp.bfloat16,):  # the step's dtype; float32 is tests/test_fused_conv.py's (interpret mode)
  for t, c, d, k, s, pro in shapes:
    keys = jax.random.split(jax.random.PRNGKey(t + c), 3)
    x = (jax.random.normal(keys[0], (8, t, c)) + 0.3).astype(dtype)
    w = jax.random.normal(keys[1], (k, c, d)) / (k * c) ** 0.5
    norm = (jnp.full(c, 0.3), jnp.full(c, 0.8), jnp.linspace(-0.2, 0.2, c)) if pro else None
    try:
      start = time.perf_counter()
      out = jax.block_until_ready(jax.jit(lambda x, w, n: fused_conv(x, w, n, stride=s, relu=pro, impl="pallas"))(x, w, norm))
      took = time.perf_counter() - start
      ref = jax.jit(lambda x, w, n: fused_conv(x, w, n, stride=s, relu=pro, impl="shifted_matmul"))(x, w, norm)
      err = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) / float(jnp.max(jnp.abs(b.astype(jnp.float32)))))
             for a, b in zip(out, ref)]
      print(f"{jnp.dtype(dtype).name} {t}x{c}->{d} k{k} s{s}{' +prologue' if pro else ''}: relative error "
            f"y {err[0]:.1e}, sum {err[1]:.1e}, sum sq {err[2]:.1e} (compile + run {took:.1f} s)")
    except Exception as e:  # noqa: BLE001  (the step rows below record it too)
      print(f"{jnp.dtype(dtype).name} {t}x{c}->{d} k{k} s{s}: FAILED {type(e).__name__}: {str(e)[:800]}")
EOF
  echo "kernel check: exit $?"
  STEP_LIMIT=$((END - SECONDS))  # what is left of the call, less ~25 s for the tables

  echo "== step: ours ($IMPLS) vs PyTorch ($TORCH), batch $BATCHES (${STEP_LIMIT} s at most)"
  timeout "$STEP_LIMIT" python3 -m bench step --model "$MODEL" --batch-sizes "$BATCHES" --torch "$TORCH" \
    --conv-impl "$IMPLS" "${TIMING[@]}" --profile "$WORK/profile" --dump-hlo "$WORK/ours.hlo.txt.gz" --out "$OUT_DIR/step"
  echo "step: exit $?"; rm -f "$OUT_DIR/step.csv"
  for impl in ${IMPLS//,/ }; do
    cp "$WORK/profile/$impl/profile_summary.txt" "$OUT_DIR/profile_$impl.txt" 2>/dev/null
    [ "$impl" != xla ] && cp "$WORK/ours_$impl.hlo.txt.gz" "$OUT_DIR/" 2>/dev/null
  done
  TRACE="$(ls -t "$WORK"/profile/shifted_matmul/plugins/profile/*/perfetto_trace.json.gz 2>/dev/null | head -1)"
  [ -n "$TRACE" ] && cp "$TRACE" "$OUT_DIR/perfetto_shifted_matmul.json.gz"

  echo "== results"
  for impl in ${IMPLS//,/ }; do
    [ -f "$OUT_DIR/profile_$impl.txt" ] && { echo; echo "profile of ours ($impl conv) at batch $BATCH:"; cat "$OUT_DIR/profile_$impl.txt"; }
  done
  [ -f "$OUT_DIR/step.json" ] || { echo "no results were written"; exit 1; }
  python3 -m bench show "$OUT_DIR/step.json"
  echo; echo "issue 18 targets at batch $BATCH:"
  python3 - "$OUT_DIR/step.json" "$BATCH" <<'EOF'
import json, sys
rows, batch = json.load(open(sys.argv[1]))["rows"], int(sys.argv[2])
speed = {r["impl"]: r.get("ecg_per_s") for r in rows if r["batch"] == batch}
today = speed.get("jax (ours)")
compiled = max([v for k, v in speed.items() if k.startswith("torch compile") or k == "torch max-autotune" if v] or [0])
for impl in ("shifted_matmul", "pallas"):
  new = speed.get(f"jax (ours), {impl} conv")
  if not new or not today:
    print(f"{impl}: not measured (see the log)"); continue
  line = f"{impl}: {new:,.0f} ECG/s; / today ({today:,.0f}) = {new / today:.2f}x (target >= 1.25x: {'met' if new / today >= 1.25 else 'MISSED'})"
  if compiled:
    line += f"; / best torch.compile ({compiled:,.0f}) = {new / compiled:.2f}x (target >= 3x: {'met' if new / compiled >= 3 else 'MISSED'})"
  print(line)
EOF
}

run 2>&1 | tee "$OUT_DIR/gpu_run.log"
