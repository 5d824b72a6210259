#!/usr/bin/env bash
# Issue 6's GPU run, in one call on the device machine (one H100; about 6 minutes there):
#   1. the training step of ResNet1d-18 on (5000, 12) at global batch 256 and 1024: ours (JAX), ours with
#      BatchNorm's plain autodiff backward (config.train.bn_backward=autodiff: the A/B of the lean one) and
#      the PyTorch step of the same architecture (eager and torch.compile), side by side in one process,
#      plus a profile of ours at 1024 (where the time goes);
#   2. ours at 1024 fed by the real input pipeline (int16 on the wire) next to device-resident batches;
#   3. if time is left (under ~6.5 minutes spent): ours at a batch 2x larger, plain and with gradient
#      caching over 4 micro-batches (config.microbatches), for what caching costs;
#   4. the tables again, last, with the issue's targets.
# Writes under $OUT (./bench_out when OUT is unset) 7 files, as the device tool brings back at most 8:
# gpu_run.log, step.json, pipeline.json, big.json, profile_summary.txt, perfetto_trace.json.gz and
# ours.hlo.txt.gz (the optimized HLO of ours at 1024: what each fusion of the profile reads and writes).
# Each phase's CSV is deleted once the phase ends ("bench show X.json" prints its table again).
#
# Device-machine call (tool `run`):  command "bash bench/gpu_run.sh", carry [".whl"], timeout_s 600,
# after `bash bench/fetch_wheels.sh` here (the ~14 MB of wheels the image lacks: ml_collections,
# matplotlib-fontja for the step; TFDS, array_record and their needs for the pipeline run).
# CPU test here with tiny sizes:     BENCH_TINY=1 bash bench/gpu_run.sh
#
# Environment it sets, and why:
#   XLA_PYTHON_CLIENT_PREALLOCATE=false  JAX and PyTorch share the card in one process: JAX takes what
#       it needs (at batch 1024 perhaps ~45 GB: XLA's CPU plan of this step is ~45 MB per ECG) instead of
#       75% up front; PyTorch hands its memory back after each of its runs. A run that fails (out of
#       memory, say) is recorded as a row with its error and the others go on.
#   JAX_COMPILATION_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0  the pipeline run compiles
#       the very step the step run compiled; the on-disk cache saves that second compilation.
#   ECG_CONTRASTIVE_WORKERS=$(nproc)  the pipeline run first generates synthetic_ecg_ja/demo (20,000
#       records, 2.4 GB) with one worker process per core.
#   No XLA_FLAGS: none is justified without a measurement on the card (set BENCH_XLA_FLAGS to try some).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-bench_out}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

export PYTHONUNBUFFERED=1
export ECG_CONTRASTIVE_WORKERS="${ECG_CONTRASTIVE_WORKERS:-$(nproc)}"  # dataset generation: one worker per core
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
[ -n "${BENCH_XLA_FLAGS:-}" ] && export XLA_FLAGS="${BENCH_XLA_FLAGS}"

run() {
  if ! python3 -c "import ml_collections, matplotlib_fontja, tensorflow_datasets, array_record, wfdb" 2> /dev/null \
      && compgen -G ".whl/*.whl" > /dev/null; then  # the image lacks them: install the carried wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
      || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"  # the repo root: the package and configs/ (not pip-installed there)

  if [ "${BENCH_TINY:-0}" = 1 ]; then  # CPU check of this script: tiny model, tiny sizes
    MODEL=tiny; BATCHES=8,16; BATCH=16; TIMING=(--warmup 1 --windows 2 --steps 2); TORCH=eager
    DATASET=synthetic_ecg_ja/tiny; STEP_LIMIT=900; PIPE_LIMIT=600; BIG=32; BIG_BY=400
  else
    MODEL=paper; BATCHES=256,1024; BATCH=1024; TIMING=(--warmup 3 --windows 5 --steps 10); TORCH=eager,compile
    DATASET="${BENCH_DATASET:-synthetic_ecg_ja/demo}"; STEP_LIMIT=360; PIPE_LIMIT=200; BIG=2048; BIG_BY=390
  fi

  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi (CPU run)"
  python3 -c "import sys, jax, torch; print('python', sys.version.split()[0], '| jax', jax.__version__, jax.devices(), \
  '| torch', torch.__version__, 'cuda', torch.cuda.is_available())"

  echo "== step: ours vs PyTorch eager / torch.compile, batch $BATCHES"
  timeout "$STEP_LIMIT" python3 -m bench step --model "$MODEL" --batch-sizes "$BATCHES" --torch "$TORCH" \
    --bn-backward lean,autodiff "${TIMING[@]}" --profile "$WORK/profile" --dump-hlo "$OUT_DIR/ours.hlo.txt.gz" --out "$OUT_DIR/step"
  echo "step: exit $?"; rm -f "$OUT_DIR/step.csv"
  cp "$WORK/profile/profile_summary.txt" "$OUT_DIR/" 2>/dev/null
  TRACE="$(ls -t "$WORK"/profile/plugins/profile/*/perfetto_trace.json.gz 2>/dev/null | head -1)"
  [ -n "$TRACE" ] && cp "$TRACE" "$OUT_DIR/perfetto_trace.json.gz"

  echo "== pipeline: ours at batch $BATCH through the input pipeline ($DATASET)"
  timeout "$PIPE_LIMIT" python3 -m bench pipeline --model "$MODEL" --batch-size "$BATCH" \
    --dataset "$DATASET" --data-dir "$WORK/data" "${TIMING[@]}" --out "$OUT_DIR/pipeline"
  echo "pipeline: exit $?"; rm -f "$OUT_DIR/pipeline.csv"

  if [ "$SECONDS" -lt "$BIG_BY" ]; then
    echo "== large batch: ours at $BIG, plain and with gradient caching over 4 micro-batches"
    timeout $((570 - SECONDS)) python3 -m bench step --model "$MODEL" --batch-sizes "$BIG" \
      --microbatches 1,4 --torch none --warmup 2 --windows 3 --steps 3 --out "$OUT_DIR/big"
    echo "large batch: exit $?"; rm -f "$OUT_DIR/big.csv"
  else
    echo "== large batch: skipped ($SECONDS s spent)"
  fi

  echo "== results"
  RESULTS=()
  for f in "$OUT_DIR/step.json" "$OUT_DIR/pipeline.json" "$OUT_DIR/big.json"; do [ -f "$f" ] && RESULTS+=("$f"); done
  [ -f "$OUT_DIR/profile_summary.txt" ] && { echo; echo "profile of ours at batch $BATCH:"; cat "$OUT_DIR/profile_summary.txt"; }
  if [ "${#RESULTS[@]}" -gt 0 ]; then
    python3 -m bench show "${RESULTS[@]}"
  else
    echo "no results were written"; exit 1
  fi
}

run 2>&1 | tee "$OUT_DIR/gpu_run.log"
