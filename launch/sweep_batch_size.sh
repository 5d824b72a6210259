#!/usr/bin/env bash
# Batch-size sweep: one workdir per global batch size, the learning rate scaled linearly from 256.
#   launch/sweep_batch_size.sh runs/sweep "256 512 1024 2048" --config configs/paper.py:synthetic_ecg_ja/large,
# Each run writes metrics.jsonl (ECG/s, loss) and eval/test.json (top-1/top-5); the summary is
# printed at the end from those files. Set LAUNCH to e.g. "sbatch launch/slurm_gpu.sbatch" on a cluster.
set -euo pipefail
root=${1:?usage: sweep_batch_size.sh ROOT "SIZES" MAIN_ARGS...}; sizes=${2:?}; shift 2
base_lr=${BASE_LR:-1e-3}
for b in $sizes; do
  lr=$(python -c "print($base_lr * $b / 256)")
  ${LAUNCH:-python -m ecg_contrastive.main} "$@" --workdir "$root/b$b" --config.batch_size="$b" --config.optimizer.lr="$lr"
done
python - "$root" $sizes <<'PY'
import json, os, sys, statistics
root, sizes = sys.argv[1], sys.argv[2:]
print(f"{'batch':>6} {'ECG/s':>9} {'top1':>7} {'top5':>7}")
for b in sizes:
  d = os.path.join(root, f"b{b}")
  rates = [json.loads(l).get("ecg_per_s") for l in open(os.path.join(d, "metrics.jsonl"))]
  rates = [r for r in rates if r]
  ev = json.load(open(os.path.join(d, "eval", "test.json"))) if os.path.exists(os.path.join(d, "eval", "test.json")) else {}
  print(f"{b:>6} {statistics.median(rates) if rates else float('nan'):>9.0f} {ev.get('top1', float('nan')):>7.3f} {ev.get('top5', float('nan')):>7.3f}")
PY
