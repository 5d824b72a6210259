#!/usr/bin/env bash
# Batch-size sweep: one workdir per global batch size, the learning rate scaled linearly from 256.
#   launch/sweep_batch_size.sh runs/sweep "256 512 1024 2048" --config configs/paper.py:synthetic_ecg_ja/large,
# Each run writes metrics.jsonl (ECG/s, loss) and eval/test.json (top-1/top-5); the summary is
# printed at the end from those files. Set LAUNCH to e.g. "sbatch launch/slurm_gpu.sbatch" on a cluster.
# ECGS_PER_MICROBATCH=N: batches larger than N run with gradient caching over batch / N micro-batches
# (config.microbatches; the exact full-batch gradient with the activation memory of N ECGs).
set -euo pipefail
source "$(dirname "$0")/python.sh"
root=${1:?usage: sweep_batch_size.sh ROOT "SIZES" MAIN_ARGS...}; sizes=${2:?}; shift 2
base_lr=${BASE_LR:-1e-3}
for b in $sizes; do
  lr=$("$PYTHON" -c "print($base_lr * $b / 256)")
  k=1
  if [ -n "${ECGS_PER_MICROBATCH:-}" ] && [ "$b" -gt "$ECGS_PER_MICROBATCH" ]; then
    if [ $((b % ECGS_PER_MICROBATCH)) -ne 0 ]; then
      echo "batch $b is not a multiple of ECGS_PER_MICROBATCH=$ECGS_PER_MICROBATCH" >&2; exit 2
    fi
    k=$((b / ECGS_PER_MICROBATCH))
  fi
  ${LAUNCH:-"$PYTHON" -m ecg_contrastive.main} "$@" --workdir "$root/b$b" --config.batch_size="$b" --config.optimizer.lr="$lr" \
      --config.microbatches="$k"
done
"$PYTHON" - "$root" $sizes <<'PY'
import json, os, sys, statistics
root, sizes = sys.argv[1], sys.argv[2:]
print(f"{'batch':>6} {'micro':>5} {'ECG/s':>9} {'top1':>7} {'top5':>7}")
for b in sizes:
  d = os.path.join(root, f"b{b}")
  if not os.path.exists(os.path.join(d, "metrics.jsonl")):  # e.g. submitted with LAUNCH=sbatch, not run yet
    print(f"{b:>6} {'':>5} {'pending: no ' + os.path.join(d, 'metrics.jsonl')}")
    continue
  config = json.load(open(os.path.join(d, "config.json")))
  rates = [json.loads(l).get("ecg_per_s") for l in open(os.path.join(d, "metrics.jsonl"))]
  rates = [r for r in rates if r]
  ev = json.load(open(os.path.join(d, "eval", "test.json"))) if os.path.exists(os.path.join(d, "eval", "test.json")) else {}
  print(f"{b:>6} {config.get('microbatches', 1):>5} {statistics.median(rates) if rates else float('nan'):>9.0f} "
        f"{ev.get('top1', float('nan')):>7.3f} {ev.get('top5', float('nan')):>7.3f}")
PY
