# Two commands from a fresh clone: `make train` and `make test`. Each creates .venv and installs the
# project on first use; the stamp file makes the second call install nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml
ARGS ?=

.PHONY: install train test lint format bench sweep clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 13))' || { \
	  echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); TensorFlow (and tensorflow-metal) need 3.10-3.12: make PYTHON=python3.12 ..."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/mnist-mlp train --config $(CONFIG) $(ARGS)

test: $(STAMP) lint
	$(BIN)/pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mnist_mlp tests
	$(BIN)/ruff format --check mnist_mlp tests

format: $(STAMP)
	$(BIN)/ruff check --fix mnist_mlp tests
	$(BIN)/ruff format mnist_mlp tests

bench: $(STAMP)
	$(BIN)/mnist-mlp bench $(ARGS)

sweep: $(STAMP)
	$(BIN)/mnist-mlp sweep configs/sweep.yaml $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
