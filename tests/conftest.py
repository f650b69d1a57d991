"""Shared fixtures: real MNIST when it can be had, and a small synthetic set for fast unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import DATA_DIR_ENV, Mnist, Split, read_idx_folder, split

REQUIRE_ENV = "MNIST_MLP_REQUIRE_DATA"


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
