"""The user's cache folder, where the project keeps the GPU self-check's verdicts (gpu_check.py). Everything there can
be deleted at any time; it is only made again."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CACHE_ENV = "MNIST_MLP_CACHE_DIR"


def cache_dir() -> Path:
    """$MNIST_MLP_CACHE_DIR, else the user's cache folder: ~/Library/Caches on macOS, $XDG_CACHE_HOME else."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if platform.system() == "Darwin":
        return Path.home() / "Library" / "Caches" / "mnist_mlp"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist_mlp"
