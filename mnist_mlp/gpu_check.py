"""The GPU's self-check, and the device a run trains on.

Before a run trusts a GPU (the Metal plugin has been reported to compute ReLU wrongly in graphs and to be
many times slower than the CPU for networks this small), it trains a few SGD steps on the GPU and on the
CPU from the same weights on the same batches and compares the results, then times a training step at
the run's batch size on both. `runtime.device: auto` takes the GPU only when it is correct and faster;
`gpu` takes it when correct and stops the run when not. The verdict is cached per machine, TensorFlow and
plugin version, GPU, layer sizes and batch size, so it costs its seconds once; `doctor` always re-checks.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from mnist_mlp.cache import cache_dir
from mnist_mlp.config import Config
from mnist_mlp.data import Split
from mnist_mlp.device import (
    CPU,
    Device,
    configure_runtime,
    cpu_device,
    gpu_device,
    metal_plugin_version,
    require_gpu,
    standin_mode,
)
from mnist_mlp.errors import GpuMismatch
from mnist_mlp.model import MLP, cross_entropy, forward, layer_sizes, one_hot_rows, to_rows
from mnist_mlp.rundir import atomic_write
from mnist_mlp.training import Trainer, learning_rate

# The loss of the weights after CHECK_STEPS steps, compared with the CPU's within CHECK_RTOL × max(loss, 1)
# (bench uses the same rule for every device and implementation). After a few steps, two correct devices
# differ only by the order of float32 sums: relative differences of a few 1e-7 (float32's epsilon is 1.2e-7),
# grown by the few steps to well under 1e-5. 1e-4 leaves room for that and still catches a wrong kernel,
# whose loss is off in the first or second digit.
CHECK_STEPS, CHECK_RTOL = 10, 1e-4
TIMED_IMAGES = 2048  # images per timed call: long enough to time, short enough for the check's ~2 s
TIMED_REPEATS = 5  # interleaved CPU/GPU calls; the median of each
FASTER_BY = 1.1  # auto wants the GPU this much faster: less is within the noise of a check this short
CACHE_FILE = "gpu_check.json"


def losses_agree(loss: float, reference: float, rtol: float) -> bool:
    """Whether a loss matches the reference's within rtol × max(loss, 1): float32 noise, not a wrong result."""
    return bool(np.isfinite(loss) and abs(loss - reference) <= rtol * max(abs(reference), 1.0))


@dataclass(frozen=True)
class Verdict:
    """What the check found for one GPU at one batch size."""

    gpu: str
    batch_size: int
    correct: bool
    difference: str  # what differed, one line ("" when correct)
    cpu_step_seconds: float  # median time of one training step
    gpu_step_seconds: float
    check_seconds: float  # what the whole check took
    checked_at: str
    cached: bool = False

    @property
    def speedup(self) -> float:
        """The GPU's speed over the CPU's (below 1: slower)."""
        return self.cpu_step_seconds / self.gpu_step_seconds

    @property
    def faster(self) -> bool:
        return self.correct and self.speedup >= FASTER_BY

    def summary(self) -> str:
        """E.g. "correct, 6.2x slower at batch 50, checked in 1.9 s" or "WRONG results, cached ..."."""
        ratio = self.speedup
        speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        when = f"cached {self.checked_at}" if self.cached else f"checked in {self.check_seconds:.1f} s"
        if not self.correct:
            return f"WRONG results, {when}"
        return f"correct, {speed} at batch {self.batch_size}, {when}"


def check_gpu(config: Config, gpu: str) -> Verdict:
    """Train CHECK_STEPS steps on the GPU and on the CPU from the same weights and batches, compare the
    losses; then time calls of the fast path at the config's batch size, alternating the devices."""
    started = time.perf_counter()
    batch = config.train.batch_size
    steps = max(CHECK_STEPS, TIMED_IMAGES // batch)
    data = _synthetic(batch * steps)
    trainers = [Trainer(config, data, device) for device in (cpu_device(config.runtime), Device(gpu, "gpu", False))]
    orders = [trainer.epoch_order(1) for trainer in trainers]
    lr = learning_rate(config.train, 1)
    for trainer, order in zip(trainers, orders, strict=True):
        trainer.run_steps(order, 0, CHECK_STEPS, lr, epoch=1)  # also traces: the timed calls below reuse the graph
    weights = [[v.numpy() for v in t.model.variables_in_order] for t in trainers]
    cpu_loss, gpu_loss = (_loss_on_cpu(config, w, data) for w in weights)
    difference = ""
    if not losses_agree(gpu_loss, cpu_loss, CHECK_RTOL):
        largest = max(float(np.abs(a - b).max()) for a, b in zip(*weights, strict=True))
        difference = (
            f"after {CHECK_STEPS} SGD steps at batch {batch} from the same weights, the loss is {gpu_loss:.6g} on "
            f"the GPU and {cpu_loss:.6g} on the CPU (allowed: {CHECK_RTOL:g} x max(loss, 1), float32 rounding); "
            f"largest weight difference {largest:.3g}"
        )
    seconds: list[list[float]] = [[], []]
    for _ in range(TIMED_REPEATS):
        for trainer, order, times in zip(trainers, orders, seconds, strict=True):
            call_started = time.perf_counter()
            trainer.run_steps(order, 0, steps, lr, epoch=1)  # returns a float: the device has finished
            times.append((time.perf_counter() - call_started) / steps)
    return Verdict(
        gpu=gpu,
        batch_size=batch,
        correct=not difference,
        difference=difference,
        cpu_step_seconds=statistics.median(seconds[0]),
        gpu_step_seconds=statistics.median(seconds[1]),
        check_seconds=time.perf_counter() - started,
        checked_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def _synthetic(n: int) -> Split:
    """Random images and labels: the check compares arithmetic, which needs no real digits."""
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))


def _loss_on_cpu(config: Config, weights: list[np.ndarray], data: Split) -> float:
    """The mean cross-entropy of `weights` (W1, W0_1, ...) on `data`, computed on the CPU by a fresh model."""
    with tf.device(CPU):
        model = MLP(config.model, config.seed)
        for variable, value in zip(model.variables_in_order, weights, strict=True):
            variable.assign(value)
        _, logits = forward(model, to_rows(data.images))
        return float(cross_entropy(logits, one_hot_rows(data.labels)))


# --- the cache -------------------------------------------------------------------------------------------


def cache_key(config: Config, gpu: str) -> str:
    """What a verdict depends on: machine, TensorFlow, plugin, which GPU, layer sizes, batch size."""
    sizes = "-".join(map(str, layer_sizes(config.model)))
    return (
        f"{platform.node()} {platform.machine()} tf {tf.__version__} metal {metal_plugin_version()} "
        f"{gpu} {standin_mode() or ''} {sizes} batch {config.train.batch_size}"
    )


def read_cache(path: Path) -> dict[str, dict]:
    """The cached verdicts by key; an unreadable or malformed file counts as empty (the check runs again)."""
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def verdict_for(config: Config, gpu: str, recheck: bool = False) -> Verdict:
    """The cached verdict for this machine and config, else (or when asked to recheck) a fresh one, cached."""
    path = cache_dir() / CACHE_FILE
    verdicts, key = read_cache(path), cache_key(config, gpu)
    if not recheck:
        try:
            return Verdict(**{**verdicts[key], "cached": True})
        except (KeyError, TypeError):
            pass
    verdict = check_gpu(config, gpu)
    verdicts[key] = {k: v for k, v in asdict(verdict).items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(verdicts, indent=1) + "\n")
    except OSError as exc:
        print(f"warning: GPU check not cached ({path}: {exc.strerror}); it runs again next time", file=sys.stderr)
    return verdict


# --- the choice ------------------------------------------------------------------------------------------


def choose_device(config: Config) -> Device:
    """The device a run trains on, and why (Device.reason). runtime.device: cpu takes the CPU unchecked;
    gpu takes the GPU once it passed the check (GpuMismatch when not); auto takes it only when it passed
    and is faster, else the CPU (with a warning line after a mismatch)."""
    runtime = config.runtime
    configure_runtime(runtime)  # thread count, XLA's cache: before TensorFlow starts its runtime
    gpu = require_gpu(runtime)
    if runtime.device == "cpu":
        return cpu_device(runtime, "runtime.device=cpu")
    if gpu is None:
        return cpu_device(runtime, "no GPU")
    if runtime.device == "auto" and runtime.jit_compile is True:
        return cpu_device(runtime, "runtime.jit_compile=true: XLA runs on the CPU only")
    verdict = verdict_for(config, gpu)
    if not verdict.correct:
        if runtime.device == "gpu":
            raise GpuMismatch(f"the GPU ({gpu}) failed its self-check: {verdict.difference}; train with "
                              "runtime.device=auto or cpu, which use the CPU")  # fmt: skip
        print(f"warning: the GPU ({gpu}) failed its self-check, training on the CPU: {verdict.difference}",
              file=sys.stderr)  # fmt: skip
        return cpu_device(runtime, f"GPU checked: {verdict.summary()}")
    if runtime.device == "gpu":
        forced = "" if verdict.faster else "; runtime.device=gpu forces it"
        return gpu_device(runtime, gpu, f"checked: {verdict.summary()}{forced}")
    if verdict.faster:
        return gpu_device(runtime, gpu, f"checked: {verdict.summary()}")
    return cpu_device(runtime, f"GPU checked: {verdict.summary()}")
