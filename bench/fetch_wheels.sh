#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that bench/gpu_run.sh needs and the device image lacks,
# for its Python 3.12 on x86-64, at the versions requirements.txt pins or this machine has.
#   step benchmark (ecg_contrastive.train's imports): ml_collections, matplotlib-fontja
#   pipeline benchmark (TFDS builder, array_record shards, the builders' record reader): the rest
# About 14 MB in all. tests/test_bench_wheels.py imports the benchmark's modules with every requirement
# that is neither here nor in IMAGE blocked, as on the device machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the device image already has (KINDS.md; jax 0.11 with CUDA there), and requirements the benchmark never imports.
IMAGE=(jax flax optax orbax-checkpoint torch safetensors scipy numpy matplotlib etils protobuf absl-py tqdm wrapt
       psutil requests pandas aiohttp fsspec transformers tokenizers)
NOT_IMPORTED=(fugashi unidic-lite tensorboardX)  # the Japanese tokenizer (text precompute), TensorBoard logging

STEP=(ml-collections==1.1.0 matplotlib-fontja==1.1.0)
PIPELINE=(tensorflow-datasets==4.9.10 array-record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1
          importlib-resources==7.1.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
          termcolor==3.3.0 toml==0.10.2 wfdb==4.3.1)  # wfdb: ecg/reader.py (soundfile only for FLAC)
SDIST_ONLY=(promise==2.3)  # no wheel on PyPI: built here (pure Python)

if [ "${1:-}" = --names ]; then  # for tests/test_bench_wheels.py
  printf "%s\n" "${IMAGE[@]}" "${NOT_IMPORTED[@]}" "${STEP[@]%%==*}" "${PIPELINE[@]%%==*}" "${SDIST_ONLY[@]%%==*}"; exit
fi
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${STEP[@]}" "${PIPELINE[@]}"
python3 -m pip wheel -q --no-deps -w .whl "${SDIST_ONLY[@]}"
ls -la .whl && du -sh .whl
