"""The GPU's self-check, its cache, and the device a run trains on.

Before a run trusts a GPU (the Metal plugin has been reported to compute ReLU wrongly in graphs, to make
CPU and GPU disagree on small Dense+ReLU models, and to be many times slower than the CPU for networks
this small), the check runs the run's own first steps on the GPU and on the CPU from the same weights
and compares every tensor:
  1. one step's forward and backward pass on the run's first batch: each H^l, the logits, ŷ, the batch
     loss, each ∇W^l and ∇W0^l;
  2. CHECK_STEPS steps of the compiled training loop with the run's config (optimizer, L1, shifts, the
     first epoch's rate), each from the same weights and optimizer slots on both devices: every weight,
     every slot and the batch loss after the step;
  3. one evaluation call on CHECK_IMAGES training images: the loss sums, the predictions, the
     confusion counts and the units that fired.
Each tensor may differ by float32 rounding and nothing more, bounded per entry from its formula and its
inputs (rounding.py derives the bounds); the first tensor that differs beyond that is the verdict's
problem. Steps start from the same state because SGD's chaos amplifies a rounding step after step (a 1e-7
change of the first weights moves an epoch's loss by percents), which would hide a wrong kernel under the
tolerance it would need. Then a call of the training loop is timed on both devices, alternating.

A GPU that raises an error during the check (a kernel it lacks, an internal error) fails it. The verdict
(ok, mismatch or failed, with the step times) is cached per OS, TensorFlow, plugin and project version,
GPU, layer sizes, batch size and the training settings the check ran, for CACHE_DAYS.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import tensorflow as tf

from mnist_mlp import __version__, rounding
from mnist_mlp.augment import epoch_shifts, shift_images
from mnist_mlp.cache import cache_dir
from mnist_mlp.config import Config
from mnist_mlp.data import N_CLASSES, Split
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
from mnist_mlp.errors import GpuFailure, GpuMismatch, describe_error
from mnist_mlp.model import N_PIXELS, layer_sizes, one_hot_rows, softmax, to_rows
from mnist_mlp.optimizers import make_optimizer
from mnist_mlp.rundir import atomic_write
from mnist_mlp.training import EVAL_CHUNK, Trainer, failures_of, learning_rate

# Bump when what the check compares changes: cached verdicts of another version are checked again.
CHECK_VERSION = 2
CHECK_STEPS = 10  # steps of the training loop compared, each from the same state
CHECK_IMAGES = 10000  # images of the evaluation compared: products of 2,000 rows (EVAL_CHUNK), as runs evaluate
TIMED_IMAGES = 2048  # images per timed call: long enough to time, short enough for a check of a few seconds
TIMED_REPEATS = 5  # interleaved CPU/GPU calls; the median of each
FASTER_BY = 1.1  # auto wants the GPU this much faster: less is within the noise of a check this short
CACHE_FILE = "gpu_check.json"
CACHE_DAYS = 30  # a verdict older than this is checked again (and dropped from the file)
OK, MISMATCH, FAILED = "ok", "mismatch", "failed"  # a verdict's status, as doctor --json's gpu_check says it


@dataclass(frozen=True)
class Verdict:
    """What the check found for one GPU at one batch size."""

    gpu: str
    batch_size: int
    status: str  # OK, MISMATCH or FAILED
    problem: str  # the first difference, or the error the GPU raised ("" when ok)
    cpu_step_seconds: float  # median time of one training step (nan when the check failed)
    gpu_step_seconds: float
    check_seconds: float  # what the whole check took
    checked_at: str  # ISO date and time
    cached: bool = False

    @property
    def correct(self) -> bool:
        return self.status == OK

    @property
    def speedup(self) -> float:
        """The GPU's speed over the CPU's (below 1: slower)."""
        return self.cpu_step_seconds / self.gpu_step_seconds

    @property
    def faster(self) -> bool:
        return self.correct and self.speedup >= FASTER_BY

    def summary(self) -> str:
        """E.g. "correct, 6.2x slower at batch 50, checked in 1.9 s" or "WRONG results, cached ..."."""
        when = f"cached {self.checked_at}" if self.cached else f"checked in {self.check_seconds:.1f} s"
        if self.status == MISMATCH:
            return f"WRONG results, {when}"
        if self.status == FAILED:
            return f"FAILED with an error, {when}"
        ratio = self.speedup
        speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        return f"correct, {speed} at batch {self.batch_size}, {when}"

    def failure(self) -> str:
        """What went wrong, for the one line that says so: "the GPU (/GPU:0) computes wrong results: ..."."""
        what = "computes wrong results" if self.status == MISMATCH else "raised an error in its self-check"
        return f"the GPU ({self.gpu}) {what}: {self.problem}"


def check_gpu(config: Config, gpu: str, data: Split | None = None) -> Verdict:
    """Compare the GPU with the CPU on the run's first steps (`data`: its training images; None: made-up
    digits), then time calls of the training loop on both. Never raises for the GPU's sake: an error it
    raises is a FAILED verdict."""
    started = time.perf_counter()
    batch = config.train.batch_size
    data = data if data is not None else learnable_digits(max(CHECK_IMAGES, CHECK_STEPS * batch))
    timings = [float("nan")] * 2
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel(logging.ERROR)  # not TensorFlow's warning that each check traces its own functions anew
    try:
        trainers = check_trainers(config, gpu, data)
        problem = compare(config, *trainers, data)
        status = MISMATCH if problem else OK
        if not problem:
            timings = time_steps(trainers, config)
    except GpuFailure as exc:  # a TensorFlow error on the GPU (training.failures_of)
        status, problem = FAILED, exc.error
    except Exception as exc:  # whatever else a GPU's runtime raises: a verdict, never a crash of the run
        status, problem = FAILED, describe_error(exc)
    finally:
        logger.setLevel(level)
    seconds = time.perf_counter() - started
    now = datetime.now().isoformat(timespec="seconds")
    return Verdict(gpu, batch, status, f"{problem} (batch {batch})" if problem else "", *timings, seconds, now)


def check_trainers(config: Config, gpu: str, data: Split) -> list[Trainer]:
    """The two trainers the check compares, on the same data from the same weights. The CPU's without XLA:
    a plain graph compiles in a fraction of XLA's time and is as much the CPU; the GPU as runs use it."""
    return [Trainer(config, data, device) for device in (Device(CPU, "cpu", False), Device(gpu, "gpu", False))]


def learnable_digits(n: int) -> Split:
    """Made-up images whose labels follow from them (the argmax of ten fixed random projections), for a check
    without MNIST at hand: unlike random labels, a network learns them, so its steps do what training does."""
    rng = np.random.default_rng(0)
    images = (rng.random((n, 28, 28)) < 0.2) * rng.integers(0, 256, (n, 28, 28))
    labels = np.argmax(images.reshape(n, -1) @ rng.normal(size=(28 * 28, N_CLASSES)), axis=1)
    return Split(images.astype(np.uint8), labels.astype(np.uint8))


# --- the comparison --------------------------------------------------------------------------------------


def compare(config: Config, cpu: Trainer, gpu: Trainer, data: Split) -> str:
    """The first tensor on which the GPU differs from the CPU by more than float32 rounding, "" when none."""
    orders = [trainer.epoch_order(1) for trainer in (cpu, gpu)]
    first_batch = orders[0][: config.train.batch_size].numpy()
    probes = [Probe(trainer) for trainer in (cpu, gpu)]
    return (
        compare_step_tensors(probes, data.images[first_batch], data.labels[first_batch])
        or compare_steps(config, cpu, gpu, orders)
        or compare_evaluation(probes, data.head(CHECK_IMAGES))
    )


class Probe:
    """A step's tensors before its update, as the trainer's device computes them in a compiled call (the
    training step's own ops, less the update): H^1 … H^{L−1}, the logits, ŷ, the batch loss, then
    ∇W^1 … ∇W^L, ∇W0^1 … ∇W0^L. One trace serves any number of images."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        spec = [tf.TensorSpec([None, N_PIXELS], tf.uint8), tf.TensorSpec([None], tf.uint8)]
        self.tensors = tf.function(self._tensors, input_signature=spec, autograph=False)

    def _tensors(self, images: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
        with tf.device(self.trainer.device.name):
            H, logits, loss, grads = self.trainer.forward_backward(to_rows(images), one_hot_rows(labels))
            return [*H[1:], logits, softmax(logits), loss, *grads]

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        with failures_of(self.trainer.device), tf.device(self.trainer.device.name):
            found = self.tensors(tf.constant(images.reshape(len(images), -1)), tf.constant(labels))
            return [t.numpy() for t in found]


def forward_bounds(trainer: Trainer, images: np.ndarray, labels: np.ndarray) -> tuple:
    """rounding's forward and output bounds of the trainer's weights on these images."""
    W, W0 = weights_of(trainer)
    fwd = rounding.forward(W, W0, pixels(images))
    return fwd, rounding.output(fwd, labels.astype(np.int64))


def compare_step_tensors(
    probes: list[Probe], images: np.ndarray, labels: np.ndarray, chunk: tuple | None = None
) -> str:
    """1 (and the first part of 3, chunk=its forward_bounds: the forward pass only): one step's tensors from
    the same weights."""
    found = [probe(images, labels) for probe in probes]
    cpu = probes[0].trainer
    fwd, out = chunk or forward_bounds(cpu, images, labels)
    where = " on the evaluation chunk" if chunk else ""
    allowed = {
        **{f"H^{layer}{where}": fwd.A_H[layer] for layer in range(1, len(fwd.H))},
        f"the logits{where}": fwd.A_Z[-1],
        f"ŷ{where}": out.A_y_hat,
        f"the batch loss{where}": rounding.loss_sum_bound(out) / len(labels),
    }
    if not chunk:
        cfg = cpu.config.train
        W, W0 = weights_of(cpu)
        grads = rounding.gradients(W, W0, fwd, out, np.eye(N_CLASSES)[labels], cfg.l1, cfg.l1_biases)
        allowed |= {f"∇W^{layer}": a for layer, a in enumerate(grads.A_W, 1)}
        allowed |= {f"∇W0^{layer}": a for layer, a in enumerate(grads.A_W0, 1)}
    return first_difference(zip(allowed, found[1], found[0], allowed.values(), strict=False))


def compare_steps(config: Config, cpu: Trainer, gpu: Trainer, orders: list[tf.Tensor]) -> str:
    """2: CHECK_STEPS steps of the compiled training loop, each from the CPU's state copied to the GPU."""
    lr = learning_rate(config.train, 1)
    steps = min(CHECK_STEPS, cpu.steps_per_epoch)
    for step in range(steps):
        for mine, theirs in zip(state_of(gpu), state_of(cpu), strict=True):
            mine.assign(theirs)
        before = [v.numpy() for v in state_of(cpu)]
        losses = [
            trainer.run_steps(order, step, 1, lr, epoch=1) for trainer, order in zip((cpu, gpu), orders, strict=True)
        ]
        images, labels = batch_of(cpu, orders[0], step)
        allowed = step_bounds(config, cpu, before, images, labels, lr)
        names = [*state_names(cpu), "the batch loss"]
        found = [
            [*(v.numpy() for v in state_of(trainer)), loss] for trainer, loss in zip((cpu, gpu), losses, strict=True)
        ]
        at = f"after step {step + 1} of {steps}"
        problem = first_difference(
            (f"{name} {at}", g, c, a) for name, g, c, a in zip(names, found[1], found[0], allowed, strict=True)
        )
        if problem:
            return problem
    return ""


def state_of(trainer: Trainer) -> list[tf.Variable]:
    """What a step changes: the weights (W^1 … W^L, W0^1 … W0^L), then the optimizer's slots."""
    return [*trainer.params, *trainer.optimizer.variables]


def state_names(trainer: Trainer) -> list[str]:
    layers = range(1, len(trainer.model.W) + 1)
    slots = [f"the optimizer's {v.name.split(':')[0]}" for v in trainer.optimizer.variables]
    return [*(f"W^{layer}" for layer in layers), *(f"W0^{layer}" for layer in layers), *slots]


def batch_of(trainer: Trainer, order: tf.Tensor, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images [B, 784] and labels of `step` in epoch 1, shifted as the training loop shifts them."""
    B = trainer.batch_size
    batch = order[step * B : (step + 1) * B]
    with tf.device(CPU):
        images = tf.gather(trainer.images, batch)
        k = trainer.config.train.augment_shift
        if k:
            shifts = epoch_shifts(k, trainer.config.seed, tf.constant(1), trainer.steps_per_epoch * B)
            images = shift_images(images, shifts[0, step * B : (step + 1) * B], shifts[1, step * B : (step + 1) * B])
        return images.numpy(), tf.gather(trainer.labels, batch).numpy()


def step_bounds(
    config: Config, trainer: Trainer, before: list[np.ndarray], images: np.ndarray, labels: np.ndarray, lr: float
) -> list:
    """The rounding bound of each variable after one step from `before`, and of the step's batch loss."""
    cfg = config.train
    layers = len(trainer.model.W)
    W, W0 = before[:layers], before[layers : 2 * layers]
    X, Y, labels = pixels(images), np.eye(N_CLASSES)[labels], labels.astype(np.int64)
    fwd = rounding.forward(W, W0, X)
    out = rounding.output(fwd, labels)
    grads = rounding.gradients(W, W0, fwd, out, Y, cfg.l1, cfg.l1_biases)
    g, A_g = [*grads.W, *grads.W0], [*grads.A_W, *grads.A_W0]
    after, low, high = exact_update(
        config, before, [[x + d * a for x, a in zip(g, A_g, strict=True)] for d in (0, -1, 1)], lr
    )
    # Adam computes its step size α_t in float32 (the others take α as it is); its last slot is its step count t.
    rate_error = (
        rounding.adam_rate_error(cfg.beta1, cfg.beta2, float(before[-1]) + 1) if cfg.optimizer == "adam" else 0.0
    )
    bounds = [rounding.update_bound(*four, rate_error) for four in zip(before, after, low, high, strict=True)]
    if cfg.loss_after_update:  # the batch's loss again, on the updated weights
        fwd = rounding.forward(
            after[:layers], after[layers : 2 * layers], X, bounds[:layers], bounds[layers : 2 * layers]
        )
        out = rounding.output(fwd, labels)
    return [*bounds, rounding.loss_sum_bound(out) / len(labels)]


def exact_update(config: Config, before: list[np.ndarray], grad_sets: list[list], lr: float) -> list[list[np.ndarray]]:
    """The optimizer's own update (optimizers.py) run in float64 on the CPU from the state `before` (weights,
    then slots), once for each list of gradients in `grad_sets`: the weights and slots after each, exact for
    our purpose. The updates are elementwise, so the sets run as one, stacked along a first axis."""
    k, n = len(grad_sets), len(grad_sets[0])
    with tf.device(CPU):
        params = [tf.Variable(np.stack([value] * k).astype(np.float64)) for value in before[:n]]
        optimizer = make_optimizer(config.train, params)
        for slot, value in zip(optimizer.variables, before[n:], strict=True):
            slot.assign(np.broadcast_to(value, slot.shape).astype(np.float64))  # Adam's step count stays a scalar
        grads = [tf.constant(np.stack([grads[i] for grads in grad_sets])) for i in range(n)]
        optimizer.apply_gradients(zip(grads, params, strict=True), tf.constant(lr, tf.float64))
        after = [v.numpy() for v in (*params, *optimizer.variables)]
    return [[value[j] if value.ndim else value for value in after] for j in range(k)]


def compare_evaluation(probes: list[Probe], chunk: Split) -> str:
    """3: CHECK_IMAGES images from the same weights: their forward pass (where a kernel's fault at a large batch
    shows), then one evaluation call: each chunk's loss sum, predictions, confusion counts, active units."""
    cpu, gpu = (probe.trainer for probe in probes)
    for mine, theirs in zip(state_of(gpu), state_of(cpu), strict=True):
        mine.assign(theirs)
    fwd, out = forward_bounds(cpu, chunk.images, chunk.labels)
    problem = compare_step_tensors(probes, chunk.images, chunk.labels, chunk=(fwd, out))
    if problem:
        return problem
    (cpu_loss, _, cpu_pred, cpu_active), (gpu_loss, gpu_confusion, gpu_pred, gpu_active) = (
        evaluation_of(trainer, chunk) for trainer in (cpu, gpu)
    )
    labels = chunk.labels.astype(np.int64)
    chunks = [slice(start, start + EVAL_CHUNK) for start in range(0, len(chunk), EVAL_CHUNK)]
    allowed = np.array([rounding.loss_sum_bound(out, rows) for rows in chunks])
    problem = first_difference([("the evaluation's loss sums", gpu_loss, cpu_loss, allowed)])
    if problem:
        return problem
    # A prediction may differ only where the top two logits are within the devices' rounding of each other.
    z, A_z = fwd.logits, fwd.A_Z[-1]
    top_two = np.sort(z, axis=1)[:, -2:]
    near_tie = top_two[:, 1] - top_two[:, 0] <= 2 * A_z.max(axis=1)
    wrong = np.flatnonzero((gpu_pred != cpu_pred) & ~near_tie)
    if wrong.size:
        i = wrong[0]
        return (
            f"the evaluation's predictions differ on {wrong.size} of {len(chunk)} images beyond near-ties "
            f"(image {i}: {gpu_pred[i]} on the GPU, {cpu_pred[i]} on the CPU)"
        )
    counted = np.bincount(labels * N_CLASSES + gpu_pred, minlength=N_CLASSES**2).reshape(N_CLASSES, N_CLASSES)
    if not np.array_equal(gpu_confusion, counted):
        true, predicted = np.argwhere(gpu_confusion != counted)[0]
        return (
            f"the evaluation's confusion counts differ from its own predictions (digit {true} predicted as "
            f"{predicted}: {gpu_confusion[true, predicted]} counted, {counted[true, predicted]} predicted)"
        )
    for layer, (mine, theirs, Z, A_Z) in enumerate(
        zip(gpu_active, cpu_active, fwd.Z[:-1], fwd.A_Z[:-1], strict=True), 1
    ):
        # A unit fired on one device and not the other only if its pre-activation never left its bound of 0.
        undecided = ~(Z > A_Z).any(axis=0) & ~(Z < -A_Z).all(axis=0)
        differ = np.flatnonzero((mine != theirs) & ~undecided)
        if differ.size:
            return f"the evaluation's active units of H^{layer} differ ({differ.size} units, e.g. unit {differ[0]})"
    return ""


def evaluation_of(trainer: Trainer, chunk: Split) -> tuple:
    """The evaluation call's own results on `chunk` (one chunk): loss sums, confusion, predictions, active units."""
    with failures_of(trainer.device):
        loss_sums, confusion, predictions, active = trainer.evaluate_split(*trainer.to_device(chunk))
        return loss_sums.numpy(), confusion.numpy(), predictions.numpy(), [a.numpy() for a in active]


def weights_of(trainer: Trainer) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [w.numpy() for w in trainer.model.W], [b.numpy() for b in trainer.model.W0]


def pixels(images: np.ndarray) -> np.ndarray:
    """Xᵀ as to_rows computes it in float32 (q · (1/255)), as float64 rows."""
    flat = images.reshape(len(images), -1)
    return (flat.astype(np.float32) * np.float32(1.0 / 255.0)).astype(np.float64)


def first_difference(tensors) -> str:
    """The first of (name, GPU value, CPU value, rounding bound A) whose values differ by more than 2A (each
    device off the exact value by up to A) somewhere: "∇W^1 differs by 3.1e-02 where rounding allows 4.0e-06";
    "" when none. NaN or infinity on one device only always differs."""
    for name, gpu, cpu, A in tensors:
        gpu, cpu = np.asarray(gpu, np.float64), np.asarray(cpu, np.float64)
        same = (gpu == cpu) | (np.isnan(gpu) & np.isnan(cpu))
        difference = np.where(same, 0.0, np.abs(gpu - cpu))
        excess = np.where(same, 0.0, np.nan_to_num(difference / np.maximum(2 * np.asarray(A), 1e-300), nan=np.inf))
        worst = np.unravel_index(np.argmax(excess), excess.shape)
        if excess[worst] > 1:
            if not np.isfinite(gpu[worst]) or not np.isfinite(cpu[worst]):
                return f"{name} is {gpu[worst]:.6g} on the GPU and {cpu[worst]:.6g} on the CPU"
            allowed = 2 * np.broadcast_to(A, excess.shape)[worst]
            return f"{name} differs by {difference[worst]:.2g} where float32 rounding allows {allowed:.2g}"
    return ""


def time_steps(trainers: list[Trainer], config: Config) -> list[float]:
    """The median time of one training step on each device, from calls of TIMED_IMAGES images, alternating."""
    batch = config.train.batch_size
    steps = max(1, min(TIMED_IMAGES // batch, trainers[0].steps_per_epoch))
    lr = learning_rate(config.train, 1)
    orders = [trainer.epoch_order(1) for trainer in trainers]  # the calls are traced already (compare_steps)
    seconds: list[list[float]] = [[], []]
    for _ in range(TIMED_REPEATS):
        for trainer, order, times in zip(trainers, orders, seconds, strict=True):
            call_started = time.perf_counter()
            trainer.run_steps(order, 0, steps, lr, epoch=1)  # returns a float: the device has finished
            times.append((time.perf_counter() - call_started) / steps)
    return [statistics.median(times) for times in seconds]


# --- the cache -------------------------------------------------------------------------------------------


def cache_key(config: Config, gpu: str) -> str:
    """What a verdict depends on: the OS (Metal ships with macOS), TensorFlow, the plugin, this project and
    this check, which GPU, the layer sizes, the batch size, and the training settings whose ops it ran."""
    system = (
        f"macOS {platform.mac_ver()[0]}"
        if platform.system() == "Darwin"
        else f"{platform.system()} {platform.release()}"
    )
    cfg, sizes = config.train, "-".join(map(str, layer_sizes(config.model)))
    optimizer = {
        "sgd": "sgd",
        "momentum": f"momentum {cfg.momentum}",
        "nesterov": f"nesterov {cfg.momentum}",
        "adam": f"adam {cfg.beta1} {cfg.beta2} {cfg.epsilon}",
    }[cfg.optimizer]
    return (
        f"{system} {platform.machine()} tf {tf.__version__} metal {metal_plugin_version()} mnist-mlp {__version__} "
        f"check {CHECK_VERSION} {gpu} {standin_mode() or ''} {sizes} batch {cfg.batch_size} {optimizer} "
        f"l1 {cfg.l1}{' biases' if cfg.l1_biases else ''} shift {cfg.augment_shift} "
        f"loss-after-update {cfg.loss_after_update}"
    )


def read_cache(path: Path) -> dict[str, dict]:
    """The cached verdicts by key, those older than CACHE_DAYS left out; an unreadable or malformed file
    counts as empty (the check runs again)."""
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(verdicts, dict):
        return {}
    oldest = (datetime.now() - timedelta(days=CACHE_DAYS)).isoformat(timespec="seconds")
    return {key: v for key, v in verdicts.items() if isinstance(v, dict) and str(v.get("checked_at", "")) >= oldest}


def verdict_for(config: Config, gpu: str, data: Split | None = None, recheck: bool = False) -> Verdict:
    """The cached verdict for this machine and config, else (or when asked to recheck) a fresh one, cached."""
    path, key = cache_dir() / CACHE_FILE, cache_key(config, gpu)
    with one_check_at_a_time(path):
        verdicts = read_cache(path)
        if not recheck:
            try:
                return Verdict(**{**verdicts[key], "cached": True})
            except (KeyError, TypeError):
                pass
        verdict = check_gpu(config, gpu, data)
        remember(verdict, key, verdicts, path)
        return verdict


@contextlib.contextmanager
def one_check_at_a_time(path: Path) -> Iterator[None]:
    """An exclusive OS lock beside the cache file while a verdict is read, made and written: processes that start
    together (a sweep's workers, parallel runs) check one after another, each check's timing undisturbed by the
    others, and the later ones find the first's verdict. No lock where the cache folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel lets go when the process ends, however it ends
        yield
    finally:
        os.close(fd)


def remember(verdict: Verdict, key: str, verdicts: dict, path: Path) -> None:
    """Write `verdicts` with `verdict` under `key` to the cache file; a cache that cannot be written is a warning."""
    verdicts[key] = {k: v for k, v in asdict(verdict).items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(verdicts, indent=1) + "\n")
    except OSError as exc:
        print(f"warning: GPU check not cached ({path}: {exc.strerror}); it runs again next time", file=sys.stderr)


def cpu_after(failure: GpuFailure, config: Config, doing: str) -> Device:
    """The CPU, for `runtime.device: auto` after the GPU raised an error while `doing` (training, evaluating):
    one warning line, and the failure cached like a failed check, so that the next run goes to the CPU at once."""
    print(f"warning: {failure} while {doing}; going on on the CPU", file=sys.stderr)
    path, nan = cache_dir() / CACHE_FILE, float("nan")
    now = datetime.now().isoformat(timespec="seconds")
    problem = f"{failure.error} (while {doing}, batch {config.train.batch_size})"
    verdict = Verdict(failure.gpu, config.train.batch_size, FAILED, problem, nan, nan, 0.0, now)
    remember(verdict, cache_key(config, failure.gpu), read_cache(path), path)
    return cpu_device(config.runtime, f"the GPU failed while {doing}: {failure.error}")


# --- the choice ------------------------------------------------------------------------------------------


def choose_device(config: Config, data: Split | None = None) -> Device:
    """The device a run trains on, and why (Device.reason). runtime.device: cpu takes the CPU unchecked;
    gpu takes the GPU once it passed the check (GpuMismatch when not); auto takes it only when it passed
    and is faster, else the CPU (with a warning line after a failed check). `data`: the run's training
    images, which the check trains its first steps on."""
    runtime = config.runtime
    configure_runtime(runtime)  # thread count, XLA's cache: before TensorFlow starts its runtime
    gpu = require_gpu(runtime)
    if runtime.device == "cpu":
        return cpu_device(runtime, "runtime.device=cpu")
    if gpu is None:
        return cpu_device(runtime, "no GPU")
    if runtime.device == "auto" and runtime.jit_compile is True:
        return cpu_device(runtime, "runtime.jit_compile=true: XLA runs on the CPU only")
    verdict = verdict_for(config, gpu, data)
    if not verdict.correct:
        if runtime.device == "gpu":
            raise GpuMismatch(f"{verdict.failure()}; train with runtime.device=auto or cpu, which use the CPU")
        print(f"warning: {verdict.failure()}; training on the CPU", file=sys.stderr)
        return cpu_device(runtime, f"GPU checked: {verdict.summary()}")
    if runtime.device == "gpu":
        forced = "" if verdict.faster else "; runtime.device=gpu forces it"
        return gpu_device(runtime, gpu, f"checked: {verdict.summary()}{forced}")
    if verdict.faster:
        return gpu_device(runtime, gpu, f"checked: {verdict.summary()}")
    return cpu_device(runtime, f"GPU checked: {verdict.summary()}")
