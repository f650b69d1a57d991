# Two commands from a fresh clone: `make train` and `make test`. Each creates .venv and installs the
# project on first use; stamp files make the second call install nothing. `make train` (and `make install`)
# install what training needs, from requirements.lock; `make test` and `make lint` add the development
# tools, from requirements-dev.lock (the same pins plus pytest, ruff, playwright and JAX for the bench).
#
# uv (scripts/uv: the one on PATH, else installed into .tools/ with any python3) builds .venv with a
# CPython 3.10-3.12, the versions TensorFlow and tensorflow-metal have wheels for, whatever `python3`
# is: a 3.12 found on the machine, else a 3.10 or 3.11, else a 3.12 that uv downloads.
# `make PYTHON=/path/to/python3.12` picks the interpreter by hand. Packages come from the locks (pinned,
# hashed, one file for every platform each); `make lock` regenerates them from pyproject.toml.
# `make install POSTGRES=1` (or train, test, sweep ... POSTGRES=1) adds the PostgreSQL driver that a sweep
# study shared by several machines needs (the `postgres` extra, pinned in requirements-postgres.lock); the
# .venv keeps it from then on (.venv/.postgres).
PYTHON ?=
POSTGRES ?=
UV := scripts/uv
VENV := .venv
BIN := $(VENV)/bin
WITH_POSTGRES := $(or $(POSTGRES),$(wildcard $(VENV)/.postgres))
# Stamps: the runtime lock's packages and the project are installed; the dev lock's too (-postgres: and the driver).
STAMP := $(VENV)/.installed$(if $(WITH_POSTGRES),-postgres)
DEV_STAMP := $(VENV)/.installed-dev$(if $(WITH_POSTGRES),-postgres)
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
POSTGRES_LOCK := requirements-postgres.lock
EXTRA_LOCKS := $(if $(WITH_POSTGRES),$(POSTGRES_LOCK))
# Bytecode compiled at install time: the first run, and every run under PYTHONDONTWRITEBYTECODE=1 (common in
# containers and CI), would otherwise compile TensorFlow's thousands of modules on each start.
SYNC = $(UV) pip sync --python $(BIN)/python --require-hashes --compile-bytecode
CONFIG ?= configs/default.yaml
ARGS ?=
# uv trusts the machine's certificate store, as pip and curl do (a company proxy's CA, or CI's, lives there).
export UV_SYSTEM_CERTS ?= true

# uv looks for interpreters on PATH only; pyenv's versions are searched too, after PATH.
PYENV_BINS := $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.1[0-2].*/bin)
SEARCH_PATH := $(subst $() $(),:,$(strip $(PATH) $(PYENV_BINS)))
NO_PYTHON := error: no Python 3.10-3.12 found and uv could not download one (offline?): install one (e.g. brew install python@3.12) or run make PYTHON=/path/to/python3.12

.PHONY: install train test lint format bench sweep lock clean

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

# Exactly a lock's packages (sync also removes strays), then the project itself, built with the lock's setuptools.
# A venv that has the dev tools keeps them: the dev lock holds the runtime lock's pins, so it is synced again
# instead, and going from `make test` to `make train` and back installs nothing. A runtime-only venv gets the
# dev tools added by `make test` (the runtime packages stay as they are).
define sync
	@$(BIN)/python -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 13))' || { \
	  echo "error: $(VENV) holds Python $$($(BIN)/python -V 2>&1); TensorFlow needs 3.10-3.12: make clean && make install"; exit 2; }
	$(SYNC) $(1) $(EXTRA_LOCKS)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(if $(WITH_POSTGRES),touch $(VENV)/.postgres)
endef

$(STAMP): $(BIN)/python pyproject.toml $(LOCK) $(EXTRA_LOCKS)
	$(call sync,$(if $(wildcard $(VENV)/.installed-dev*),$(DEV_LOCK),$(LOCK)))
	touch $(STAMP) $(if $(wildcard $(VENV)/.installed-dev*),$(DEV_STAMP))

$(DEV_STAMP): $(BIN)/python pyproject.toml $(LOCK) $(DEV_LOCK) $(EXTRA_LOCKS)
	$(call sync,$(DEV_LOCK))
	touch $(STAMP) $(DEV_STAMP)

# Each lock covers Linux (x86_64, aarch64) and macOS arm64 on CPython 3.10-3.12, tensorflow-metal under its
# darwin/arm64 marker. The dev lock is resolved with the runtime lock as its constraints, so it holds the same
# pins plus the dev tools; the postgres lock holds the driver alone, pinned to agree with the runtime lock.
# Current pins are kept unless pyproject.toml asks otherwise; `make lock ARGS=--upgrade` moves everything to the
# newest allowed versions.
LOCK_COMPILE = $(UV) pip compile --universal --python-version 3.10 --generate-hashes \
  --custom-compile-command 'make lock' --quiet
lock:
	$(LOCK_COMPILE) pyproject.toml -o $(LOCK) $(ARGS)
	$(LOCK_COMPILE) pyproject.toml --extra dev -c $(LOCK) -o $(DEV_LOCK) $(ARGS)
	sed -n 's/^postgres = \[\(.*\)\]/\1/p' pyproject.toml | tr ',' '\n' | tr -d ' "' \
	  | $(LOCK_COMPILE) - -c $(LOCK) -o $(POSTGRES_LOCK) $(ARGS)

train: $(STAMP)
	$(BIN)/mnist-mlp train --config $(CONFIG) $(ARGS)

test: $(DEV_STAMP) lint
	$(BIN)/pytest -q $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check mnist_mlp tests
	$(BIN)/ruff format --check mnist_mlp tests

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix mnist_mlp tests
	$(BIN)/ruff format mnist_mlp tests

bench: $(DEV_STAMP)  # the dev lock holds JAX, the bench's fastest peer
	$(BIN)/mnist-mlp bench $(ARGS)

sweep: $(STAMP)
	$(BIN)/mnist-mlp sweep configs/sweep.yaml $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
