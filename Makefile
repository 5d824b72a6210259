# Quick start:  make demo   (set up a venv, build the synthetic data, train + evaluate the demo)
#               make test   (install the test extras, run the test suite)
#               make lint   (ruff: format check and lint, configured in pyproject.toml)
# PY: the interpreter the venv is made from (Python >= 3.11). TORCH_INDEX: where `make test` takes PyTorch from,
# e.g. https://download.pytorch.org/whl/cpu for the CPU build (PyPI's Linux torch is a CUDA build of several GB).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo
CONFIG ?= configs/default.py
TORCH_INDEX ?=

$(BIN)/.core-installed: requirements.txt pyproject.toml
	@$(PY) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v >= (3, 11) else f"error: $(PY) is Python {v[0]}.{v[1]}; ecg_contrastive needs Python >= 3.11 (jax 0.10, flax, orbax, numpy 2.4): make PY=python3.11 ...")'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(BIN)/.dev-installed: $(BIN)/.core-installed requirements-dev.txt
	$(if $(TORCH_INDEX),$(BIN)/pip install -q torch==2.13.0 --index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

.PHONY: setup setup-dev demo test test-fast lint export
setup: $(BIN)/.core-installed
setup-dev: $(BIN)/.dev-installed

demo: $(BIN)/.core-installed
	$(BIN)/python -m ecg_contrastive.main --config $(CONFIG) --workdir $(WORKDIR)

export: $(BIN)/.core-installed
	$(BIN)/python -m ecg_contrastive.main --mode export --workdir $(WORKDIR)

# test: two workers (pytest-xdist), one test file each at a time, the heaviest files first (tests/conftest.py:
# HEAVY_FILES_FIRST; --no-loadscope-reorder keeps that order); the slowest 15 tests listed
test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# test-fast: the loop while developing, 455 of 563 tests (serial; add -n 2 for two workers: 2 min 11 s on the 2-core VM).
test-fast: $(BIN)/.dev-installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/.dev-installed  # checks only; `$(BIN)/ruff format .` and `$(BIN)/ruff check --fix .` change files
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
