"""Where training runs: the Metal GPU on an Apple M1 (through tensorflow-metal), any other GPU, or the CPU."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from mnist_mlp.config import RuntimeConfig
from mnist_mlp.errors import ConfigError


@dataclass(frozen=True)
class Device:
    name: str  # a TensorFlow device string, "/CPU:0" or "/GPU:0"
    kind: str  # "cpu" or "gpu"
    jit_compile: bool  # XLA for the compiled training calls

    def describe(self) -> str:
        xla = ", XLA" if self.jit_compile else ""
        return f"{self.kind.upper()} ({self.name}{xla})"


def configure_threads(threads: int) -> None:
    """Set TensorFlow's intra-op thread count (0 keeps its default); only possible before TF starts its runtime."""
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # the runtime is already up (e.g. TFDS ran first): it keeps what it has
            print(f"warning: runtime.threads={threads} not applied: TensorFlow had already started", file=sys.stderr)


def select_device(config: RuntimeConfig) -> Device:
    """Resolve runtime.device (auto | cpu | gpu) and runtime.jit_compile (auto | true | false)."""
    configure_threads(config.threads)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if config.device == "gpu" and not has_gpu:
        raise ConfigError("runtime.device is gpu but TensorFlow lists no GPU (on a Mac: pip install tensorflow-metal)")
    kind = "gpu" if config.device == "gpu" or (config.device == "auto" and has_gpu) else "cpu"
    if kind == "gpu" and config.jit_compile is True:
        raise ConfigError("runtime.jit_compile is true but XLA is not supported on the GPU path (Metal has no XLA)")
    # auto: off. On the CPU XLA measured 0.93-1.15x at batch 50 (README, Speed), its ~0.5 s compilation eats
    # that in a default run, and it breaks bit-identity with the step path; Metal has no XLA at all.
    jit = False if config.jit_compile == "auto" else config.jit_compile
    return Device(name=f"/{kind.upper()}:0", kind=kind, jit_compile=jit)


def available_memory() -> int | None:
    """Bytes of memory a run can use: Linux's MemAvailable (within a cgroup's limit), else the physical
    memory (macOS, whose GPU shares it); None when neither can be read."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    available = int(fields.get("MemAvailable", fields.get("MemTotal", "0 kB")).split()[0]) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    return min(available, int(limit)) if limit.isdigit() else available
