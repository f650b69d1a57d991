"""Where training runs: the Metal GPU on an Apple M1 (through tensorflow-metal), any other GPU, or the CPU.

`available_gpu()` names the project's GPU. With MNIST_MLP_STANDIN_GPU set it is a stand-in (standin.py): the
CPU split into two logical devices, the second ("/CPU:1") treated as the GPU everywhere, so the GPU path
(self-check, auto, doctor, bench, train) runs on machines without one. A testing aid, nothing more.
Whether a GPU is trusted, and when `auto` picks it, is gpu_check.py's business.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from mnist_mlp import native_stderr_silenced
from mnist_mlp.cache import writable_folder, xla_cache_dir
from mnist_mlp.config import RuntimeConfig
from mnist_mlp.errors import ConfigError
from mnist_mlp.standin import STANDIN_ENV, STANDIN_GPU, split_cpu, standin_mode
from mnist_mlp.versions import METAL_PLUGIN, installed

CPU = "/CPU:0"


@dataclass(frozen=True)
class Device:
    name: str  # a TensorFlow device string: "/CPU:0", "/GPU:0", or the stand-in's "/CPU:1"
    kind: str  # "cpu" or "gpu"
    jit_compile: bool  # XLA for the compiled training calls
    reason: str = ""  # why this device, for the run's first line

    def describe(self) -> str:
        xla = ", XLA" if self.jit_compile else ""
        standin = ", stand-in" if self.name == STANDIN_GPU else ""
        why = f"; {self.reason}" if self.reason else ""
        return f"{self.kind.upper()} ({self.name}{standin}{xla}{why})"


split_cpu()  # before anything starts TensorFlow's runtime (standin.py); a no-op without the stand-in


@functools.cache
def available_gpu() -> str | None:
    """The device the project uses as its GPU: the stand-in when asked for, else the first GPU TensorFlow
    lists (Metal on an M1), else None."""
    if standin_mode():
        split_cpu()
        if STANDIN_GPU.lstrip("/") not in {d.name.split("device:")[-1] for d in tf.config.list_logical_devices()}:
            raise ConfigError(f"{STANDIN_ENV} is set, but TensorFlow had started before the CPU could be split")
        return STANDIN_GPU
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name.replace("/device:", "/") if gpus else None


def metal_plugin_version() -> str | None:
    """The installed tensorflow-metal's version (the Metal GPU plugin), None when absent."""
    return installed(METAL_PLUGIN)


def configure_threads(threads: int) -> None:
    """Set TensorFlow's intra-op thread count (0 keeps its default); only possible before TF starts its runtime."""
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # the runtime is already up (e.g. TFDS ran first): it keeps what it has
            print(f"warning: runtime.threads={threads} not applied: TensorFlow had already started", file=sys.stderr)


def configure_runtime(config: RuntimeConfig) -> None:
    """What must be settled before TensorFlow starts its runtime, which it then starts: the intra-op thread count
    (runtime.threads) and, for XLA, the folder where it keeps the programs it compiles (xla_cache_flags)."""
    cache = xla_cache_flags(config.threads) if _jit(config) else None
    with _environment("TF_XLA_FLAGS", cache):  # TensorFlow reads it once, at its first look at its settings
        configure_threads(config.threads)
        tf.config.list_logical_devices()


# XLA's CPU runtime: the whole compiled loop as one LLVM function ("legacy") rather than a sequence of thunks,
# TF 2.19's default, which pays a dispatch per op. Only with it does XLA beat the plain graph here
# (docs/performance.md).
XLA_CPU_RUNTIME_FLAG = "--xla_cpu_use_thunk_runtime=false"
# TensorFlow's flag for a folder of compiled XLA programs, which later processes load instead of compiling again.
XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"
_xla_flags_read = False


def xla_flags() -> str:
    """The XLA_FLAGS that XLA compiles under once prepare_xla_cpu has run: the user's, with XLA_CPU_RUNTIME_FLAG
    unless they choose the runtime themselves."""
    user = os.environ.get("XLA_FLAGS", "")
    return user if "xla_cpu_use_thunk_runtime" in user else f"{user} {XLA_CPU_RUNTIME_FLAG}".strip()


def prepare_xla_cpu() -> None:
    """Have TensorFlow's XLA read XLA_CPU_RUNTIME_FLAG, unless the user's XLA_FLAGS say otherwise.

    XLA reads $XLA_FLAGS once, at a process's first XLA compilation; so the flag is set for a trivial
    compilation and the environment restored after it (subprocesses, and JAX in the bench, see it unchanged).
    Call before the first XLA compilation; later calls, and calls after one, change nothing.
    """
    global _xla_flags_read
    if _xla_flags_read:
        return
    _xla_flags_read = True
    user = os.environ.get("XLA_FLAGS")
    if user and "xla_cpu_use_thunk_runtime" in user:
        return
    with _environment("XLA_FLAGS", xla_flags()), native_stderr_silenced(), tf.device(CPU):  # XLA's C++ log lines
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(0.0))


def xla_cache_flags(threads: int) -> str | None:
    """$TF_XLA_FLAGS that keep the programs XLA compiles in the user's cache folder (cache.xla_cache_dir, one folder
    per machine, TensorFlow, XLA flags and thread count), where later runs load them instead of compiling again: a
    run's first epoch then takes about as long as the others. None (no cache) when the folder cannot be written (XLA
    would fail every call then) or when the user's TF_XLA_FLAGS name a folder of their own. Takes effect only if set
    before TensorFlow first looks at its settings (configure_runtime)."""
    user = os.environ.get("TF_XLA_FLAGS", "")
    folder = xla_cache_dir(xla_flags(), threads)
    if XLA_CACHE_FLAG in user or not writable_folder(folder):
        return None
    return f"{user} {XLA_CACHE_FLAG}={folder}".strip()


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """$name set to `value` for the duration (None: left as it is), then restored."""
    before = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def cpu_device(config: RuntimeConfig, reason: str = "") -> Device:
    return Device(CPU, "cpu", _jit(config), reason)


def gpu_device(config: RuntimeConfig, name: str, reason: str = "") -> Device:
    if config.jit_compile is True:
        raise ConfigError("runtime.jit_compile is true but XLA is not supported on the GPU path (Metal has no XLA)")
    return Device(name, "gpu", False, reason)


def _jit(config: RuntimeConfig) -> bool:
    # auto: on for the CPU on Linux, where an epoch at batch 50 took about 0.75x the plain graph's time (with
    # XLA's CPU runtime as prepare_xla_cpu sets it; docs/performance.md). Off on macOS, where it was never measured,
    # and on the GPU (gpu_device): Metal has no XLA.
    return sys.platform == "linux" if config.jit_compile == "auto" else config.jit_compile


def require_gpu(config: RuntimeConfig) -> str | None:
    """The GPU's name; None when there is none, which is an error when runtime.device is gpu."""
    gpu = available_gpu()
    if config.device == "gpu" and gpu is None:
        raise ConfigError("runtime.device is gpu but TensorFlow lists no GPU (on a Mac: pip install tensorflow-metal)")
    return gpu


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
