# Two commands from a fresh clone: `make train` and `make test`. Each creates .venv and installs the
# project on first use; the stamp file makes the second call install nothing.
#
# uv (scripts/uv: the one on PATH, else installed into .tools/ with any python3) builds .venv with a
# CPython 3.10-3.12, the versions TensorFlow and tensorflow-metal have wheels for, whatever `python3`
# is: a 3.12 found on the machine, else a 3.10 or 3.11, else a 3.12 that uv downloads.
# `make PYTHON=/path/to/python3.12` picks the interpreter by hand. Packages come from requirements.lock
# (pinned, hashed, one file for every platform); `make lock` regenerates it from pyproject.toml.
PYTHON ?=
UV := scripts/uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
CONFIG ?= configs/default.yaml
ARGS ?=
# uv trusts the machine's certificate store, as pip and curl do (a company proxy's CA, or CI's, lives there).
export UV_SYSTEM_CERTS ?= true

# uv looks for interpreters on PATH only; pyenv's versions are searched too, after PATH.
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.1[0-2].*/bin)
SEARCH_PATH := $(subst $() $(),:,$(strip $(PATH) $(PYENV_BINS)))
NO_PYTHON := error: no Python 3.10-3.12 found and uv could not download one (offline?): install one (e.g. brew install python@3.12) or run make PYTHON=/path/to/python3.12

.PHONY: install train test lint format bench sweep serve lock clean

install: $(STAMP)

$(BIN)/python:
	@$(UV) --version >/dev/null  # installs uv into .tools/ where there is none, with its messages in view
ifdef PYTHON
	$(UV) venv --quiet --python '$(PYTHON)' $(VENV)
else
	@PATH='$(SEARCH_PATH)' $(UV) venv --quiet --no-python-downloads --python 3.12 $(VENV) 2>/dev/null \
	  || PATH='$(SEARCH_PATH)' $(UV) venv --quiet --no-python-downloads --python '>=3.10,<3.12' $(VENV) 2>/dev/null \
	  || $(UV) venv --quiet --python 3.12 $(VENV) 2>/dev/null \
	  || { echo "$(NO_PYTHON)"; exit 2; }
endif
	@$(BIN)/python -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 13))' || { \
	  echo "error: $(PYTHON) is Python $$($(BIN)/python -c 'import platform; print(platform.python_version())'); TensorFlow and tensorflow-metal need 3.10-3.12: make PYTHON=python3.12 ..."; \
	  rm -rf $(VENV); exit 2; }
	@echo "$(VENV): Python $$($(BIN)/python -c 'import platform; print(platform.python_version())') from $$(sed -n 's/^home = //p' $(VENV)/pyvenv.cfg)"

# Exactly the lock's packages (sync also removes strays), then the project itself, built with the lock's setuptools.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	@$(BIN)/python -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 13))' || { \
	  echo "error: $(VENV) holds Python $$($(BIN)/python -V 2>&1); TensorFlow needs 3.10-3.12: make clean && make install"; exit 2; }
	$(UV) pip sync --python $(BIN)/python --require-hashes $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The lock covers Linux (x86_64, aarch64) and macOS arm64 on CPython 3.10-3.12, tensorflow-metal under its
# darwin/arm64 marker, and the dev tools. Current pins are kept unless pyproject.toml asks otherwise;
# `make lock ARGS=--upgrade` moves everything to the newest allowed versions.
lock:
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version 3.10 --generate-hashes \
	  --custom-compile-command 'make lock' --quiet -o $(LOCK) $(ARGS)

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

# The newest finished run in runs/ (runs/latest), or DIR=runs/NAME; the URL is on the first line.
serve: $(STAMP)
	$(BIN)/mnist-mlp serve $(or $(DIR),latest) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
