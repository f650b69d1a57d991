"""The user's cache folder and what the project keeps there: the GPU self-check's verdicts (gpu_check.py) and the
training programs XLA compiled (device.prepare_xla_cpu), so that a run does not compile again what an earlier run
on this machine compiled. Everything here can be deleted at any time; it is only made again.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path

from mnist_mlp.versions import installed

CACHE_ENV = "MNIST_MLP_CACHE_DIR"
XLA_FOLDER = "xla"


def cache_dir() -> Path:
    """$MNIST_MLP_CACHE_DIR, else the user's cache folder: ~/Library/Caches on macOS, $XDG_CACHE_HOME else."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if platform.system() == "Darwin":
        return Path.home() / "Library" / "Caches" / "mnist_mlp"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist_mlp"


def xla_cache_key(xla_flags: str, threads: int) -> str:
    """What a compiled program depends on beyond its own graph (which XLA's file names already encode): the machine
    and its CPU (the program is machine code for it), TensorFlow's version (its XLA and file format), the XLA flags
    it was compiled under and the intra-op thread count (XLA splits loops for it, and results depend on it)."""
    return f"{platform.node()} {platform.machine()} {_cpu()} tf {installed('tensorflow')} {xla_flags} threads {threads}"


def xla_cache_dir(xla_flags: str, threads: int) -> Path:
    """The folder for programs compiled under xla_cache_key(...): cache_dir()/xla/<a digest of the key>."""
    digest = hashlib.sha256(xla_cache_key(xla_flags, threads).encode()).hexdigest()[:16]
    return cache_dir() / XLA_FOLDER / digest


def writable_folder(folder: Path) -> bool:
    """Make `folder` if needed; whether a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _cpu() -> str:
    """The CPU's model and instruction-set flags where Linux lists them (/proc/cpuinfo), else the platform's name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line.split(":", 1)[1].strip() for line in lines if line.startswith(("model name", "flags"))]
    return hashlib.sha256(" ".join(wanted[:2]).encode()).hexdigest()[:16]
