"""`mnist-mlp bench`: how fast the 784-100-100-10 network trains on each device, against what a user would pick instead.

For every device TensorFlow lists (the CPU; the Metal GPU on an M1; any other GPU) and each batch size, the
same SGD training is timed six ways: our fast path (many steps per compiled call; also with XLA on the CPU),
our step-at-a-time path, a tf.GradientTape loop, Keras `model.fit` of the same network, and a hand-written
NumPy loop. All start from the same initial weights and run the same steps on the same batches, so their
losses afterwards must agree: an implementation or device that computes something else (the Metal plugin
has given wrong results before) is reported as a mismatch, not just timed.

Timing excludes warm-up and tracing (one untimed repeat first), reads a result back before the clock stops,
and reports the median, min and max of `repeats` repeats, each from the initial weights. The arithmetic
rate counts the matmul FLOPs of the forward and backward passes and is set against a large matmul's rate
measured in the same run on the same device.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_mlp import native_stderr_silenced
from mnist_mlp.bench_runners import (
    FastPath,
    JaxScan,
    KerasFit,
    NumpyLoop,
    Runner,
    StepPath,
    TapeLoop,
    TrainEpochs,
    numpy_loss,
)
from mnist_mlp.bench_train import format_train_runs, load_average, measure_train_runs
from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import DATA_DIR_ENV, Split, load_mnist, tfds_cached
from mnist_mlp.device import CPU, STANDIN_ENV, STANDIN_GPU, Device, available_gpu, standin_mode
from mnist_mlp.errors import UserError
from mnist_mlp.gpu_check import choose_device
from mnist_mlp.model import MLP
from mnist_mlp.rundir import atomic_write
from mnist_mlp.training import Trainer

EPOCH_IMAGES = 60000  # seconds per epoch are quoted for MNIST's full training set
# Two loss checks against the CPU fast path, each tolerating a difference of rtol × max(loss, 1). After
# CHECK_STEPS steps a tight one: two correct implementations differ only by the order of float32 sums, relative
# differences of a few 1e-7 grown by the few steps to well under 1e-5, while a wrong one is off in the first
# digits. (The GPU's self-check, gpu_check.py, compares every tensor; this compares implementations.) Over an
# epoch SGD amplifies float32 roundings (about 1% at batch 50), so the check after the timed steps is loose:
# it catches a device that drifts off or returns garbage.
CHECK_STEPS, CHECK_RTOL = 10, 1e-4
FINAL_RTOL = 5e-2
EVAL_IMAGES = 10000  # images of the common loss check


def losses_agree(loss: float, reference: float, rtol: float) -> bool:
    """Whether a loss matches the reference's within rtol × max(loss, 1): float32 noise, not a wrong result."""
    return bool(np.isfinite(loss) and abs(loss - reference) <= rtol * max(abs(reference), 1.0))


# What a Mac user runs to time the Mac's paths, the CPU's without XLA among them (bench.mac_request).
MAC_COMMAND = "make bench 2>&1 | tee bench-mac.txt"
REFERENCE = "fast"  # the losses of all others are compared with this one's on the CPU


@dataclass(frozen=True)
class BenchOptions:
    """What to time: batch sizes, repeats and how many images each repeat trains on."""

    batch_sizes: tuple[int, ...] = (50, 128, 512, 2048)
    repeats: int = 5
    images_per_repeat: int = EPOCH_IMAGES  # one epoch of MNIST per repeat
    matmul_size: int = 2048
    train_runs: int = 5  # whole default `mnist-mlp train --quiet` runs, for the overhead and peak RSS (bench_train.py)
    quick: bool = False


QUICK = BenchOptions(images_per_repeat=6000, train_runs=1, quick=True)  # a tenth of an epoch per repeat


@dataclass
class Result:
    """One implementation on one device at one batch size: its times and the loss its weights reach."""

    device: str
    implementation: str
    label: str
    batch_size: int
    steps: int
    seconds: list[float]
    loss: float  # after the timed steps
    check_loss: float  # after the first CHECK_STEPS steps
    warmup_seconds: float = 0.0  # the untimed first repeat: tracing and compilation included
    images_per_second: dict[str, float] = field(default_factory=dict)
    seconds_per_epoch: float = 0.0
    gflops: float = 0.0
    matmul_fraction: float | None = None
    relative_to_fastest: float = 0.0
    reference_loss: float | None = None
    reference_check_loss: float | None = None
    loss_matches: bool | None = None
    check_weight_difference: float | None = None  # max |W − W_reference| after the check steps
    identical_to_reference: bool | None = None  # bit-identical weights after the timed steps


# --- measuring -----------------------------------------------------------------------------------------


def flops_per_image(sizes: list[int]) -> int:
    """Matmul FLOPs per training image: forward (W^l)ᵀH, ∇W^l = H ∇Zᵀ, and ∇H = W ∇Z for all layers but the first."""
    products = [n_in * n_out for n_in, n_out in itertools.pairwise(sizes)]
    return 2 * (3 * sum(products) - products[0])


def time_runner(runner: Runner, steps: int, repeats: int) -> tuple[float, list[float], list[np.ndarray]]:
    """A warm-up repeat (tracing, compilation), then `repeats` timed ones, each from the initial weights.

    Returns the warm-up's seconds, the timed seconds and the weights after the last repeat.
    """
    with native_stderr_silenced():
        runner.reset()
        started = time.perf_counter()
        runner.run(steps)
        warmup = time.perf_counter() - started
    seconds = []
    for _ in range(repeats):
        runner.reset()
        started = time.perf_counter()
        runner.run(steps)
        seconds.append(time.perf_counter() - started)
    return warmup, seconds, [np.array(w) for w in runner.weights()]


def matmul_gflops(device: str, n: int, repeats: int, per_repeat: int = 4) -> float:
    """The median rate of an n×n float32 tf.matmul on `device`: what the hardware gives TensorFlow."""
    with tf.device(device):
        a = tf.random.stateless_uniform([n, n], seed=[1, 2])
        b = tf.random.stateless_uniform([n, n], seed=[3, 4])
        return _median_rate(lambda: float(tf.reduce_sum(tf.matmul(a, b)[0, :1])), 2 * n**3, repeats, per_repeat)


def numpy_matmul_gflops(n: int, repeats: int, per_repeat: int = 4) -> float:
    """The same for NumPy's BLAS: the yardstick of the NumPy loop."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    return _median_rate(lambda: a @ b, 2 * n**3, repeats, per_repeat)


def _median_rate(work: Callable[[], object], flops: int, repeats: int, per_repeat: int) -> float:
    work()  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(per_repeat):
            work()
        rates.append(flops * per_repeat / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


# --- one device and batch size -------------------------------------------------------------------------


def bench_config(batch_size: int) -> Config:
    """The default network and learning rate at `batch_size`, as plain SGD: λ = 0, since the peers
    (Keras SGD, the tape and NumPy loops) have no L1 term; the step costs the same either way."""
    return Config().replace(**{"train.batch_size": batch_size, "train.l1": 0.0})


def runners_for(trainer: Trainer, train: Split, order: np.ndarray, initial: list[np.ndarray]) -> list[Runner]:
    """Our paths, the GradientTape loop and Keras on the trainer's device (plus the XLA fast path on the CPU)."""
    device, config = trainer.device, trainer.config
    runners: list[Runner] = [FastPath(trainer, order, initial)]
    if device.kind == "cpu":
        xla = Trainer(config, train, Device(device.name, device.kind, jit_compile=True))
        runners.append(FastPath(xla, order, initial))
    runners += [StepPath(trainer, order, initial), TapeLoop(trainer, order, initial)]
    lr = config.train.learning_rate
    runners.append(KerasFit(device.name, trainer.model.sizes, train, order, trainer.batch_size, lr, initial))
    return runners


def measure(device: str, runner: Runner, batch: int, steps: int, repeats: int, yardstick: Split) -> tuple[Result, dict]:
    """Time one runner, then train CHECK_STEPS steps afresh; the common loss of both sets of weights it ends with."""
    warmup, seconds, weights = time_runner(runner, steps, repeats)
    return checked_result(device, runner, batch, steps, seconds, weights, yardstick, warmup)


def checked_result(
    device: str, runner: Runner, batch: int, steps: int, seconds: list, weights: list, yardstick: Split, warmup=0.0
) -> tuple[Result, dict]:
    """A Result from timings and the weights after the timed steps, with both losses of the check; and the weights."""
    runner.reset()
    runner.run(min(CHECK_STEPS, steps))
    check_weights = [np.array(w) for w in runner.weights()]
    losses = [numpy_loss(w, yardstick.images, yardstick.labels) for w in (weights, check_weights)]
    result = Result(device, runner.key, runner.label, batch, steps, seconds, *losses, warmup_seconds=warmup)
    return result, {"final": weights, "check": check_weights}


def time_interleaved(runners: list[Runner], steps: int, repeats: int) -> tuple[list[list[float]], list[list]]:
    """A warm-up of each, then `repeats` rounds in which each runner trains `steps` steps from its initial
    weights in turn, so a change in the machine's load falls on all alike. Returns the seconds and the
    weights after the last round, per runner."""
    with native_stderr_silenced():
        for runner in runners:
            runner.reset()
            runner.run(steps)
    seconds: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for runner, times in zip(runners, seconds, strict=True):
            runner.reset()
            started = time.perf_counter()
            runner.run(steps)
            times.append(time.perf_counter() - started)
    return seconds, [[np.array(w) for w in runner.weights()] for runner in runners]


# --- the whole bench -----------------------------------------------------------------------------------


def tf_devices() -> list[Device]:
    """The CPU, then the project's GPU if there is one (Metal on an M1, or the stand-in)."""
    gpu = available_gpu()
    return [Device(CPU, "cpu", jit_compile=False)] + ([Device(gpu, "gpu", jit_compile=False)] if gpu else [])


def short_name(device: str) -> str:
    return device.strip("/")


def run_bench(
    train: Split, options: BenchOptions, say: Callable[[str], None] = lambda _: None
) -> tuple[list[Result], dict]:
    """Time every implementation on every device and batch size; returns the results and the run's context."""
    devices = tf_devices()
    load_before = load_average()
    sizes = MLP(Config().model, 0).sizes
    yardstick = train.head(min(EVAL_IMAGES, len(train)))
    matmul = {short_name(d.name): matmul_gflops(d.name, options.matmul_size, options.repeats) for d in devices}
    matmul["numpy"] = numpy_matmul_gflops(options.matmul_size, options.repeats)
    say("large matmul: " + ", ".join(f"{name} {rate:.1f} GFLOP/s" for name, rate in matmul.items()))
    results = []
    for batch in options.batch_sizes:
        steps = min(options.images_per_repeat, len(train)) // batch
        if steps < 1:
            raise UserError(f"batch size {batch} is larger than the {len(train)} bench images")
        batch_results = bench_batch(devices, bench_config(batch), train, steps, options.repeats, yardstick, say)
        finish_batch(batch_results, matmul, flops_per_image(sizes))
        results += batch_results
    peers = peer_ratios(train, options, yardstick, say)
    context = {
        "peers": peers,
        "load_average": {"before": load_before, "after": load_average()},
        "matmul_gflops": matmul,
        "flops_per_image": flops_per_image(sizes),
        "architecture": "-".join(map(str, sizes)),
    }
    return results, context


def peer_ratios(train: Split, options: BenchOptions, yardstick: Split, say) -> dict:
    """The epoch `mnist-mlp train` runs with the default config as shipped (device and XLA as runtime `auto`
    picks them, L1 included) against the same epoch written with JAX, NumPy and Keras `fit`, each with the
    same L1 term, from the same weights on the same batches. Timed interleaved; medians of the repeats."""
    config = Config()
    split = train.head(min(options.images_per_repeat, len(train)))
    trainer = Trainer(config, split, choose_device(config, split))
    batch, lr, l1 = config.train.batch_size, config.train.learning_rate, config.train.l1
    steps = trainer.steps_per_epoch
    order = trainer.epoch_order(1).numpy()[: steps * batch]
    initial = [v.numpy() for v in trainer.model.variables_in_order]
    runners = [TrainEpochs(trainer, order, initial), *jax_runner(split, order, batch, lr, initial, l1)]
    if len(runners) == 1:
        say("JAX row skipped: jax is not installed (pip install -e '.[bench]')")
    runners.append(NumpyLoop(split, order, batch, lr, initial, l1))
    runners.append(KerasFit(trainer.device.name, trainer.model.sizes, split, order, batch, lr, initial, l1))
    load_before = load_average()
    seconds, final_weights = time_interleaved(runners, steps, options.repeats)
    device = short_name(trainer.device.name)
    rows, reference = [], None
    for runner, times, weights in zip(runners, seconds, final_weights, strict=True):
        result, checked = checked_result(device, runner, batch, steps, times, weights, yardstick)
        reference = reference or (result, checked)
        compare(result, checked, *reference)
        rows.append(result)
    ours = statistics.median(rows[0].seconds)
    peers = {
        "device": trainer.device.describe(),
        "batch_size": batch,
        "l1": l1,
        "images": steps * batch,
        "repeats": options.repeats,
        "load_average": {"before": load_before, "after": load_average()},
        "results": [asdict(r) for r in rows],
        "speedup": {r.implementation: statistics.median(r.seconds) / ours for r in rows[1:]},
    }
    say(format_peers(peers))
    return peers


def bench_batch(
    devices: list[Device], config: Config, train: Split, steps: int, repeats: int, yardstick: Split, say
) -> list[Result]:
    """Every implementation on every device at one batch size, all from the same weights on the same batches,
    each compared with the CPU fast path (the first one timed)."""
    batch = config.train.batch_size
    results, reference, order, initial = [], None, None, None
    for device in devices:
        trainer = Trainer(config, train, device)
        if order is None:  # the same batches and initial weights for every device and implementation
            order = trainer.epoch_order(1).numpy()[: steps * batch]
            initial = [v.numpy() for v in trainer.model.variables_in_order]
        runners = runners_for(trainer, train, order, initial)
        if device is devices[0]:
            runners.append(NumpyLoop(train, order, batch, config.train.learning_rate, initial))
            runners += jax_runner(train, order, batch, config.train.learning_rate, initial)
        for runner in runners:
            result, weights = measure(short_name(device.name), runner, batch, steps, repeats, yardstick)
            reference = reference or (result, weights)
            compare(result, weights, *reference)
            results.append(result)
            say(_progress_line(result))
    return results


def jax_runner(train: Split, order: np.ndarray, batch: int, lr: float, initial, l1: float = 0.0) -> list[Runner]:
    """The JAX peer, or nothing when JAX is not installed (the bench extra: pip install -e '.[bench]')."""
    try:
        return [JaxScan(train, order, batch, lr, initial, l1)]
    except ImportError:
        return []


def compare(result: Result, weights: dict, reference: Result, reference_weights: dict) -> None:
    """Record how far `result` is from the reference run: both loss checks, weight difference, bit identity."""
    result.reference_loss, result.reference_check_loss = reference.loss, reference.check_loss
    result.loss_matches = losses_agree(result.check_loss, reference.check_loss, CHECK_RTOL) and losses_agree(
        result.loss, reference.loss, FINAL_RTOL
    )
    early = zip(weights["check"], reference_weights["check"], strict=True)
    result.check_weight_difference = max(float(np.abs(a - b).max()) for a, b in early)
    final = zip(weights["final"], reference_weights["final"], strict=True)
    result.identical_to_reference = all(np.array_equal(a, b) for a, b in final)


def finish_batch(results: list[Result], matmul: dict[str, float], flops: int) -> None:
    """Fill in one batch size's rates, arithmetic rates and ratios to the fastest."""
    for r in results:
        images = r.steps * r.batch_size
        r.images_per_second = {
            "median": images / statistics.median(r.seconds),
            "min": images / max(r.seconds),
            "max": images / min(r.seconds),
        }
        r.seconds_per_epoch = EPOCH_IMAGES / r.images_per_second["median"]
        r.gflops = flops * r.images_per_second["median"] / 1e9
        yardstick = matmul.get("numpy" if r.implementation == "numpy" else r.device)
        r.matmul_fraction = r.gflops / yardstick if yardstick else None
    fastest = max(r.images_per_second["median"] for r in results)
    for r in results:
        r.relative_to_fastest = r.images_per_second["median"] / fastest


def mismatches(results: list[Result]) -> list[str]:
    """One line per implementation/device whose loss differs from the CPU fast path's."""
    return [
        f"{r.device} {r.label} at batch {r.batch_size}: loss {r.check_loss:.6f} after {min(CHECK_STEPS, r.steps)} "
        f"steps and {r.loss:.6f} after {r.steps}; the CPU fast path's: {r.reference_check_loss:.6f} and "
        f"{r.reference_loss:.6f} (tolerances {CHECK_RTOL:g} and {FINAL_RTOL:g} x max(loss, 1))"
        for r in results
        if not r.loss_matches
    ]


def summary(results: list[Result], cpu: str = "CPU:0", batch: int = 50) -> dict:
    """The headline ratios on the CPU at batch 50 (else the smallest batch timed): our fast path against
    Keras and NumPy, its share of the matmul rate, and what XLA adds."""
    batch = batch if any(r.batch_size == batch for r in results) else min(r.batch_size for r in results)
    found = {r.implementation: r for r in results if r.device == cpu and r.batch_size == batch}
    if REFERENCE not in found:
        return {}

    def rate(key: str) -> float | None:
        return found[key].images_per_second["median"] if key in found else None

    fast, xla, keras_, numpy_ = rate("fast"), rate("fast-xla"), rate("keras"), rate("numpy")
    return {
        "device": cpu,
        "batch_size": batch,
        "fast_over_keras": fast / keras_ if keras_ else None,
        "fast_over_numpy": fast / numpy_ if numpy_ else None,
        "fast_matmul_fraction": found[REFERENCE].matmul_fraction,
        "xla_over_fast": xla / fast if xla else None,
        "xla_over_keras": xla / keras_ if xla and keras_ else None,
        "xla_over_numpy": xla / numpy_ if xla and numpy_ else None,
        "xla_matmul_fraction": found["fast-xla"].matmul_fraction if xla else None,
    }


# --- the environment, the files and the table ----------------------------------------------------------


def environment(devices: list[Device]) -> dict:
    """What the figures depend on: versions, devices, threads, oneDNN, machine."""
    details = {}
    for physical in tf.config.list_physical_devices():
        try:
            details[physical.name] = tf.config.experimental.get_device_details(physical)
        except Exception:  # some plugins (Metal) answer for GPUs only, or not at all
            details[physical.name] = {}
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "devices": [{"name": short_name(d.name), "kind": d.kind} for d in devices],
        "device_details": details,
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),  # 0: TF's default, all cores
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "cpu_count": os.cpu_count(),
            **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS") if k in os.environ},
        },
        "numpy_blas": _numpy_blas(),
        "onednn": {"enabled": _onednn_enabled(), "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
        "machine": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "processor": _processor_name(),
        },
    }


def _numpy_blas() -> dict:
    """NumPy's BLAS and the thread variables it reads: the NumPy loop's speed depends on them."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        found = {"name": blas.get("name"), "version": blas.get("version")}
    except (TypeError, KeyError):  # NumPy < 1.25 has no dict mode
        found = {}
    threads = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return found | {k: os.environ[k] for k in threads if k in os.environ}


def _onednn_enabled() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def _processor_name() -> str:
    if platform.system() == "Darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bench_data() -> tuple[Split, str, bool]:
    """Real MNIST's training images when at hand ($MNIST_MLP_DATA_DIR, or TFDS's prepared copy), else synthetic.

    Returns (split, source, synthetic). Nothing is downloaded: timings do not need real digits, and the
    loss comparison works on any data.
    """
    if os.environ.get(DATA_DIR_ENV) or tfds_cached():
        mnist = load_mnist(DataConfig())
        return mnist.train, mnist.source, False
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (EPOCH_IMAGES, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, EPOCH_IMAGES).astype(np.uint8)
    return Split(images, labels), f"synthetic random images (no MNIST: set {DATA_DIR_ENV})", True


def bench_document(results: list[Result], context: dict, options: BenchOptions, data: dict, env: dict) -> dict:
    """Everything bench.json holds."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": asdict(options),
        "data": data,
        "environment": env,
        **context,
        "loss_checks": {"check_steps": CHECK_STEPS, "check_rtol": CHECK_RTOL, "final_rtol": FINAL_RTOL},
        "results": [asdict(r) for r in results],
        "mismatches": mismatches(results + [Result(**r) for r in context["peers"]["results"]]),
        "summary": summary(results, env["devices"][0]["name"]),
    }


def format_table(results: list[Result]) -> str:
    """The results as one plain-text table, grouped by batch size, fastest first."""
    header = (
        f"{'batch':>5}  {'device':<6} {'implementation':<24} {'images/s':>9} {'(min-max)':>17} "
        f"{'s/epoch':>8} {'vs best':>7} {'GFLOP/s':>8} {'%matmul':>7}  {'loss':>8}  check"
    )
    lines = [header, "-" * len(header)]
    for batch in sorted({r.batch_size for r in results}):
        rows = sorted((r for r in results if r.batch_size == batch), key=lambda r: -r.images_per_second["median"])
        for r in rows:
            ips = r.images_per_second
            fraction = f"{r.matmul_fraction:.0%}" if r.matmul_fraction is not None else "-"
            check = "ok" if r.loss_matches else "MISMATCH"
            if r.identical_to_reference and r.implementation != REFERENCE:
                check += " (bit-identical)"
            spread = f"({ips['min']:,.0f}-{ips['max']:,.0f})"
            lines.append(
                f"{batch:>5}  {r.device:<6} {r.label:<24} {ips['median']:>9,.0f} {spread:>17} "
                f"{r.seconds_per_epoch:>8.3f} {r.relative_to_fastest:>7.2f} {r.gflops:>8.1f} {fraction:>7}  "
                f"{r.loss:>8.5f}  {check}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def report(document: dict) -> str:
    """What `mnist-mlp bench` prints: the table, then the summary lines."""
    return format_table([Result(**r) for r in document["results"]]) + "\n\n" + format_summary(document)


def format_summary(document: dict) -> str:
    """The closing lines: matmul rates, headline ratios, data, load and any mismatch."""
    rates = document["matmul_gflops"]
    lines = ["large matmul: " + ", ".join(f"{name} {rate:.1f} GFLOP/s" for name, rate in rates.items())]
    s = document["summary"]
    peers = {"keras": "Keras model.fit", "numpy": "the NumPy loop"}
    for label, prefix in (("fast path", "fast"), ("fast path + XLA", "xla")):
        if not s or s[f"{prefix}_matmul_fraction"] is None:
            continue
        ratios = [
            f"{s[f'{prefix}_over_{peer}']:.2f}x {name}" for peer, name in peers.items() if s[f"{prefix}_over_{peer}"]
        ]
        share = f"{s[f'{prefix}_matmul_fraction']:.0%} of the large-matmul rate"
        lines.append(f"{s['device']}, batch {s['batch_size']}: {label} " + ", ".join([*ratios, share]))
    if s and s["xla_over_fast"]:
        lines.append(
            f"{s['device']}, batch {s['batch_size']}: XLA makes the fast path {s['xla_over_fast']:.2f}x as fast"
        )
    lines.append(format_peers(document["peers"]))
    load = document["load_average"]
    runs = document["train_runs"]
    lines.append(f"train runs skipped: {runs['skipped']}" if "skipped" in runs else format_train_runs(runs))
    lines.append(f"data: {document['data']['source']}; load average before/after: {load['before']} / {load['after']}")
    lines += [f"MISMATCH: {line}" for line in document["mismatches"]]
    return "\n".join(lines)


def format_peers(peers: dict) -> str:
    """The headline: how many times as fast the default `mnist-mlp train` epoch is as each peer, with timings."""
    rows = [Result(**r) for r in peers["results"]]
    ours = rows[0]
    lines = [
        f"the epoch `mnist-mlp train` runs with the default config ({peers['device']}, batch {peers['batch_size']}, "
        f"L1 {peers['l1']:g}, {peers['images']:,} images): {statistics.median(ours.seconds):.3f} s "
        f"(median of {peers['repeats']}, interleaved with its peers; load average {peers['load_average']['before']})"
    ]
    for r in rows[1:]:
        check = "loss ok" if r.loss_matches else "loss MISMATCH"
        lines.append(
            f"  {peers['speedup'][r.implementation]:.2f}x {r.label} ({statistics.median(r.seconds):.3f} s, {check})"
        )
    return "\n".join(lines)


def plot(results: list[Result], path: Path, title: str) -> None:
    """bench.png: images/s by batch size, one line per device and implementation."""
    from mnist_mlp.plots import new_figure, save_figure  # matplotlib only when a bench is written

    fig = new_figure(8, 5)
    ax = fig.subplots()
    for device, key in dict.fromkeys((r.device, r.implementation) for r in results):
        rows = sorted((r for r in results if (r.device, r.implementation) == (device, key)), key=lambda r: r.batch_size)
        ax.plot(
            [r.batch_size for r in rows],
            [r.images_per_second["median"] for r in rows],
            marker="o" if device.startswith("CPU") else "s",
            linestyle="-" if device.startswith("CPU") else "--",
            label=f"{device} {rows[0].label}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({r.batch_size for r in results}), [str(b) for b in sorted({r.batch_size for r in results})])
    ax.set_xlabel("batch size")
    ax.set_ylabel("training images / s (median)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def prepare_out(out: Path | None, overwrite: bool) -> Path:
    """The output folder (default runs/bench-<time>), checked before the minutes of timing; made only when
    the results are written. Refuses to replace an earlier bench unless asked."""
    out = out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if (out / "bench.json").exists() and not overwrite:
        raise UserError(f"{out}: already holds a bench.json; pass --overwrite to replace it, or another --out")
    return out


def bench(
    options: BenchOptions,
    out: Path,
    train: Split | None = None,
    source: str = "",
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> dict:
    """Run the bench, write bench.json and bench.png into `out`, and return the document."""
    say(mac_request())
    synthetic, real_mnist = False, train is None
    if train is None:
        train, source, synthetic = bench_data()
        real_mnist = not synthetic
    say(f"bench data: {source} ({len(train):,} images); {options.repeats} timed repeats of "
        f"{min(options.images_per_repeat, len(train)):,} images per implementation and batch size")  # fmt: skip
    devices = tf_devices()
    if standin_mode():
        say(f"GPU rows: {short_name(STANDIN_GPU)}, the stand-in GPU ({STANDIN_ENV}={os.environ[STANDIN_ENV]})")
    results, context = run_bench(train, options, say)
    context["train_runs"] = train_runs(options, real_mnist, say)
    env = environment(devices)
    data = {"source": source, "synthetic": synthetic, "images": len(train)}
    document = bench_document(results, context, options, data, env)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "bench.json", json.dumps(document, indent=2) + "\n")
    title = f"{env['machine']['processor']}, TF {env['tensorflow']}" + (" (quick)" if options.quick else "")
    plot(results, out / "bench.png", title)
    return document


def mac_request() -> str:
    """The bench's first line: the measurement the project lacks, and the one command that gives it."""
    if sys.platform == "darwin":
        return (
            "macOS: please paste this command's whole output into an issue (or attach bench.json): the CPU path on a "
            "Mac runs without XLA and has never been timed, and this bench times it (docs/performance.md)"
        )
    return (
        "wanted from a Mac user: the CPU path on macOS runs without XLA and has never been timed; on an Apple-silicon "
        f"Mac, `{MAC_COMMAND}` and paste the file into an issue (docs/performance.md)"
    )


def train_runs(options: BenchOptions, real_mnist: bool, say: Callable[[str], None]) -> dict:
    """Whole default training runs (bench_train.py), or why there are none: they need the MNIST a user's run reads."""
    if not options.train_runs:
        return {"skipped": "no train runs asked for"}
    if not real_mnist:
        return {"skipped": f"no MNIST here (set {DATA_DIR_ENV}): a default run would download it"}
    say(f"{options.train_runs} default training runs, each after TensorFlow's import in a fresh process:")
    return measure_train_runs(options.train_runs, say=say)


def _progress_line(r: Result) -> str:
    median = statistics.median(r.seconds)
    return (f"  batch {r.batch_size:>4} {r.device:<6} {r.label:<24} {r.steps * r.batch_size / median:>10,.0f} images/s "
            f"(median of {len(r.seconds)}), loss {r.loss:.5f}")  # fmt: skip
