"""Shared fixtures: real MNIST when it can be had, a small synthetic set for fast unit tests, and saved runs
(untrained, and trained on real MNIST) for the commands that load one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp import cli
from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import DATA_DIR_ENV, Mnist, Split, read_idx_folder, split
from mnist_mlp.rundir import CheckpointState, RunDir

REQUIRE_ENV = "MNIST_MLP_REQUIRE_DATA"
REPO = Path(__file__).resolve().parents[1]
# What a child process keeps of the caller's environment: where programs, home and temporary files are, and the
# locale its text is decoded with. Nothing else, so settings in the user's shell (TF_CPP_MIN_LOG_LEVEL,
# CUDA_VISIBLE_DEVICES, MNIST_MLP_*, PYTHON*) cannot change what a test sees.
CHILD_ENV_KEPT = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE")


def child_env(**extra: str) -> dict[str, str]:
    """The minimal environment for a child `python -m mnist_mlp` (or `-c`) running this checkout's code, plus extra."""
    env = {name: os.environ[name] for name in CHILD_ENV_KEPT if name in os.environ}
    return env | {"PYTHONPATH": str(REPO)} | extra


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """child_env() with a scratch HOME and cache, so a child's cached GPU verdict stays out of the user's."""
    return child_env(HOME=str(home), MNIST_MLP_CACHE_DIR=str(home / "cache"), **extra)


def run_cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """`python -m mnist_mlp ARGS` in a child process with cli_env(home, **extra)."""
    command = [sys.executable, "-m", "mnist_mlp", *args]
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(home, **extra), timeout=300)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder of real MNIST IDX files; skips with the reason when absent (fails when it is required)."""
    folder = os.environ.get(DATA_DIR_ENV)
    if folder and Path(folder).is_dir():
        return Path(folder)
    reason = f"real MNIST not available: set {DATA_DIR_ENV} to a folder with the four IDX files"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_splits(mnist_dir: Path) -> tuple[Split, Split]:
    """Real MNIST train and test splits, read and verified once per session."""
    return read_idx_folder(mnist_dir)


@pytest.fixture(scope="session")
def mnist(mnist_splits: tuple[Split, Split]) -> Mnist:
    train, test = mnist_splits
    return split(train, test, DataConfig(), source="test fixture")


def synthetic_mnist(n_train: int = 200, n_test: int = 100, n_validation: int = 0, seed: int = 0) -> Mnist:
    """Random digits-shaped data: enough to exercise training code without the real files."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> Split:
        return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))

    return Mnist(make(n_train), make(n_validation) if n_validation else None, make(n_test), source="synthetic")


@pytest.fixture
def tiny_config() -> Config:
    """A config that trains in well under a second on synthetic data, on the CPU."""
    return (
        Config()
        .replace(**{"model.hidden": [16, 12], "train.epochs": 2, "train.batch_size": 20, "train.steps_per_call": 3})
        .replace(**{"runtime.device": "cpu"})
    )


# The nine plots of a finished run.
ALL_PLOTS = ["loss.png", "accuracy.png", "per_digit_error.png", "confusion_matrix.png", "misclassified.png",
             "summary.png", "weights.png", "sparsity.png", "activations.png"]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny 3-epoch run on synthetic data with a validation split, plotted by the PlotWriter listener (in-process)."""
    from mnist_mlp.plot_worker import PlotWriter
    from mnist_mlp.run import train_and_evaluate

    mnist = synthetic_mnist(n_train=200, n_test=120, n_validation=40)
    config = Config().replace(
        **{"model.hidden": [16, 12], "train.epochs": 3, "train.batch_size": 20, "train.steps_per_call": 3}
    )
    run = RunDir.create(tmp_path_factory.mktemp("plots") / "run", "t")
    result = train_and_evaluate(config.replace(**{"runtime.device": "cpu"}), run, [PlotWriter()], mnist=mnist)
    return run, result, mnist


@pytest.fixture(scope="session")
def random_run(tmp_path_factory) -> Path:
    """config.yaml, a last checkpoint and a SavedModel of one untrained 784-100-100-10 model (no data needed)."""
    from mnist_mlp.export import export_saved_model
    from mnist_mlp.model import MLP

    config = Config()
    model = MLP(config.model, config.seed)
    run = RunDir.create(tmp_path_factory.mktemp("random") / "run", "random")
    run.write_config(config)
    run.save_checkpoint(model, CheckpointState(1, 0, 0.0, 0.0), best=True)
    export_saved_model(model, run.saved_model)
    return run.path


@pytest.fixture(scope="session")
def trained_run(mnist_dir: Path, tmp_path_factory) -> Path:
    """`mnist-mlp train` for two epochs of the default config (97% test accuracy), which also exports."""
    out = tmp_path_factory.mktemp("trained") / "run"
    status = cli.main(
        ["train", "--out", str(out), "--quiet", "--set", "train.epochs=2", "--set", f"data.dir={mnist_dir}"]
    )
    assert status == 0
    assert (RunDir(out).saved_model / "saved_model.pb").is_file()  # every finished run is exported
    return out


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`: to show a command changed nothing."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
