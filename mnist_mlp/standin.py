"""The stand-in GPU: a testing aid for the GPU path on machines without a GPU, with the faults a GPU can have.

With MNIST_MLP_STANDIN_GPU=MODE the CPU is split into two logical TensorFlow devices and the second,
"/CPU:1", is the project's GPU everywhere (device choice, the self-check, `auto`, doctor, bench, train).
MODE says how it computes: `ok` correctly (up to a summation order), every other mode with one kind of
fault, reported of Metal or plausible for any GPU. The faults are TensorFlow's own ops with an error
added: while the stand-in is on, `tf.matmul`, `tf.nn.relu` and `tf.reduce_sum` are wrapped, and the
wrapper changes what an op computes only when TensorFlow placed it on the stand-in, so the CPU's
results, and every other caller, stay exact. The self-check (gpu_check.py) must catch every fault, and
must never flag `ok` (tests/test_gpu_check.py). The stand-in must be asked for before TensorFlow starts
(the CPU is split before its runtime is up), so it is an environment variable, not a config key; the
mode is read again whenever an op is built, so a test can try every mode in one process.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import tensorflow as tf

from mnist_mlp.errors import ConfigError

STANDIN_ENV = "MNIST_MLP_STANDIN_GPU"
STANDIN_GPU = "/CPU:1"
BIG_BATCH = 512  # `bigbatch` goes wrong from this many rows on
# The contraction length that marks the first layer's product (H^0)ᵀ W^1; model.N_PIXELS, which this module cannot
# import: data -> standin -> model -> data would be an import circle.
N_PIXELS = 28 * 28

# Each mode, and what the stand-in computes wrongly in it.
MODES = {
    "ok": "correct, with relative noise of up to 1e-6 on every matmul's output (another summation order)",
    "relu": "ReLU computed as the identity (reported of Metal in compiled graphs)",
    "scale": "the first layer's product (H^0)ᵀ W^1 off by a factor 1 + 1e-2",
    "drift": "relative noise of up to 1e-3 on the first layer's product (H^0)ᵀ W^1",
    "bigbatch": f"every product with {BIG_BATCH} rows or more off by a factor 1 + 1e-3",
    "nan": "NaN from every sum to a scalar (the loss sums), nothing else",
    "evalonly": "training right; the evaluation's confusion counts off by one",
    "raise": "the first layer's product raises a TensorFlow error, as a missing kernel would",
}
ALIASES = {"wrong": "relu"}  # the name the first stand-in fault had


def standin_mode() -> str | None:
    """MNIST_MLP_STANDIN_GPU's mode (aliases resolved), None when unset; anything else is an error."""
    mode = os.environ.get(STANDIN_ENV) or None
    if mode is None:
        return None
    mode = ALIASES.get(mode, mode)
    if mode not in MODES:
        known = ", ".join([*MODES, *ALIASES])
        raise ConfigError(f"{STANDIN_ENV}={os.environ[STANDIN_ENV]!r}: must be one of {known} (or unset)")
    return mode


def split_cpu() -> None:
    """With MNIST_MLP_STANDIN_GPU set, split the CPU into two logical devices and put the mode's faults in
    place. Splitting is only possible before TensorFlow starts its runtime, so device.py calls this when it
    is imported (and available_gpu() again, which then says whether it worked)."""
    if not os.environ.get(STANDIN_ENV):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < 2:
        with contextlib.suppress(RuntimeError):  # the runtime is up: available_gpu() reports it
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    install_faults()


def on_standin(tensor: tf.Tensor) -> bool:
    """Whether the op that made `tensor` is on the stand-in: in a graph, built under tf.device(STANDIN_GPU) (as
    the project's compiled calls build theirs; a function called under the scope inherits it at run time,
    unseen here); eagerly, run there."""
    return tensor.device.endswith(STANDIN_GPU.replace("/", "device:"))


# --- the faults ------------------------------------------------------------------------------------------


def _noise(out: tf.Tensor, relative: float) -> tf.Tensor:
    """out × (1 + e), e uniform in ±relative per element."""
    return out * (1.0 + tf.random.uniform(tf.shape(out), -relative, relative, dtype=out.dtype))


def _first_layer(a: tf.Tensor, kwargs: dict) -> bool:
    """Whether a product is the first layer's (H^0)ᵀ W^1: rows of pixels times W^1, not transposed."""
    return not kwargs.get("transpose_a") and a.shape[-1] == N_PIXELS


def _missing_kernel(out: tf.Tensor) -> tf.Tensor:
    """`out`, but running it raises InvalidArgumentError, as a kernel missing on a GPU fails at run time."""
    failed = tf.debugging.Assert(False, ["stand-in GPU (raise): no kernel for this MatMul"])
    with tf.control_dependencies([failed]):
        return tf.identity(out)


def _faulty_matmul(mode: str, out: tf.Tensor, args: tuple, kwargs: dict) -> tf.Tensor:
    a = args[0] if args else kwargs["a"]
    if mode == "ok":
        return _noise(out, 1e-6)
    if mode == "scale" and _first_layer(a, kwargs):
        return out * (1.0 + 1e-2)
    if mode == "drift" and _first_layer(a, kwargs):
        return _noise(out, 1e-3)
    if mode == "bigbatch":  # rows counted when the op runs: an evaluation's chunks have no static size
        return out * tf.where(tf.shape(out)[0] >= BIG_BATCH, tf.constant(1.0 + 1e-3, out.dtype), 1.0)
    if mode == "evalonly" and kwargs.get("name") == "confusion":
        return out + 1.0
    if mode == "raise" and _first_layer(a, kwargs):
        return _missing_kernel(out)
    return out


def _faulty_reduce_sum(mode: str, out: tf.Tensor, args: tuple, kwargs: dict) -> tf.Tensor:
    to_a_scalar = (args[1] if len(args) > 1 else kwargs.get("axis")) is None
    return out + float("nan") if mode == "nan" and to_a_scalar else out


def _faulty_relu(mode: str, out: tf.Tensor, args: tuple, kwargs: dict) -> tf.Tensor:
    return tf.identity(args[0] if args else kwargs["features"]) if mode == "relu" else out


def _wrap(original: Callable, fault: Callable) -> Callable:
    """`original` (a TensorFlow op function) whose result `fault` changes where the op runs on the stand-in."""

    @functools.wraps(original)
    def op(*args, **kwargs):
        out = original(*args, **kwargs)
        if not on_standin(out) or not os.environ.get(STANDIN_ENV):
            return out
        with tf.device(STANDIN_GPU):
            return fault(standin_mode(), out, args, kwargs)

    op.standin_original = original
    return op


def install_faults() -> None:
    """Wrap TensorFlow's ops so that each computes the stand-in's mode's fault where it runs on the stand-in
    (once: a second call changes nothing)."""
    if hasattr(tf.matmul, "standin_original"):
        return
    tf.matmul = tf.linalg.matmul = _wrap(tf.matmul, _faulty_matmul)
    tf.reduce_sum = tf.math.reduce_sum = _wrap(tf.reduce_sum, _faulty_reduce_sum)
    tf.nn.relu = _wrap(tf.nn.relu, _faulty_relu)
