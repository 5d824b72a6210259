#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that bench/gpu_run.sh needs and the device image lacks,
# for its Python 3.12 on x86-64, at the versions requirements.txt pins or this machine has.
#   step benchmark (ecg_contrastive.train's imports): ml_collections, matplotlib-fontja
#   pipeline benchmark (TFDS builder, array_record shards): the rest
# The image already has jax, flax, optax, orbax-checkpoint, torch, safetensors, scipy, matplotlib, etils,
# protobuf, absl-py, tqdm, wrapt, psutil, requests (KINDS.md). About 13 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=(ml-collections==1.1.0 matplotlib-fontja==1.1.0)
PIPELINE=(tensorflow-datasets==4.9.10 array-record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1
          importlib-resources==7.1.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
          termcolor==3.3.0 toml==0.10.2)
SDIST_ONLY=(promise==2.3)  # no wheel on PyPI: built here (pure Python)

rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${STEP[@]}" "${PIPELINE[@]}"
python3 -m pip wheel -q --no-deps -w .whl "${SDIST_ONLY[@]}"
ls -la .whl && du -sh .whl
