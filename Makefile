# Quick start:  make demo   (set up a venv, build the synthetic data, train + evaluate the demo)
#               make test   (install the test extras, run the test suite)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo
CONFIG ?= configs/default.py

$(BIN)/.core-installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(BIN)/.dev-installed: $(BIN)/.core-installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

.PHONY: setup demo test export
setup: $(BIN)/.core-installed

demo: $(BIN)/.core-installed
	$(BIN)/python -m ecg_contrastive.main --config $(CONFIG) --workdir $(WORKDIR)

export: $(BIN)/.core-installed
	$(BIN)/python -m ecg_contrastive.main --mode export --workdir $(WORKDIR)

test: $(BIN)/.dev-installed
	$(BIN)/python -m pytest -q
