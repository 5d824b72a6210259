#!/usr/bin/env bash
# Batch-size study: a thin wrapper around `python -m ecg_contrastive.sweep` (all flags are its flags).
#   launch/sweep_batch_size.sh --config configs/default.py --root runs/bs --batch-sizes 256,1024,4096 --epochs 4
# One run per batch size on the same ECG budget, lr by --lr-rule, gradient caching above --microbatch-ecgs,
# --launch local|slurm|tpu; writes ROOT/results.csv and ROOT/batch_size.png. See --help.
set -euo pipefail
source "$(dirname "$0")/python.sh"
exec "$PYTHON" -m ecg_contrastive.sweep "$@"
