#!/usr/bin/env bash
# Run on every host of a Cloud TPU VM slice (JAX finds its peers itself).
#   gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \
#     "cd ecg_contrastive && bash launch/tpu_vm.sh --config configs/paper.py:synthetic_ecg_ja/large,/models/bert-ja --workdir gs-or-nfs-dir"
# Install once per host: pip install -r requirements.txt && pip install 'jax[tpu]==0.10.2'
set -euo pipefail
source "$(dirname "$0")/python.sh"
export HF_HUB_OFFLINE=1
"$PYTHON" -m ecg_contrastive.main --distributed "$@"
