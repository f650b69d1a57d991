"""The stand-in GPU's modes: each fault where it is meant to be, on the stand-in only; the CPU stays exact.
The stand-in must be asked for before TensorFlow starts, so the ops are tried in a child process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnist_mlp.errors import ConfigError
from mnist_mlp.standin import MODES, standin_mode
from tests.conftest import cli_env

TRY_EVERY_MODE = """
import json, os
import numpy as np
from mnist_mlp import import_tensorflow_quietly
import_tensorflow_quietly()
import tensorflow as tf
from mnist_mlp.device import available_gpu
gpu = available_gpu()
rng = np.random.default_rng(0)
pixels = tf.constant(rng.random((600, 784)), tf.float32)  # rows of pixels: the first layer's product
W = tf.constant(rng.normal(size=(784, 3)), tf.float32)
small = tf.constant(rng.normal(size=(3, 4)), tf.float32)
found = {}
for mode in %r:
    os.environ["MNIST_MLP_STANDIN_GPU"] = mode
    for device in ("/CPU:0", gpu):
        @tf.function  # the device scope inside, where the op is built, as the project's compiled calls have it
        def ops():
            with tf.device(device):
                return (tf.matmul(pixels[:500], W), tf.matmul(pixels, W), tf.matmul(small, small, transpose_a=True),
                        tf.matmul(small, small, transpose_a=True, name="confusion"), tf.nn.relu(small),
                        tf.reduce_sum(small), tf.reduce_sum(small, axis=0))
        try:
            values = [t.numpy() for t in ops()]
        except tf.errors.InvalidArgumentError as exc:
            found[mode, device] = "raised"
            continue
        exact = [(pixels[:500] @ W).numpy(), (pixels @ W).numpy(), (tf.transpose(small) @ small).numpy(),
                 (tf.transpose(small) @ small).numpy(), np.maximum(small.numpy(), 0), small.numpy().sum(),
                 small.numpy().sum(axis=0)]
        found[mode, device] = [float(np.max(np.abs(v - e) / np.maximum(np.abs(e), 1e-30)))
                               for v, e in zip(values, exact)]
print(json.dumps({f"{m} {d}": v for (m, d), v in found.items()}))
"""
ROUNDING = 3e-7  # float32's rounding of 1 + e and of the product out × (1 + e), beside a relative error e
OPS = ["first layer, 500 rows", "first layer, 600 rows", "other product", "confusion", "relu", "sum", "sum on axis 0"]


@pytest.fixture(scope="module")
def errors(tmp_path_factory) -> dict[str, dict[str, float] | str]:
    """mode → relative error of each op on the stand-in (or "raised"), after checking the CPU stays exact."""
    home = tmp_path_factory.mktemp("standin")
    script = TRY_EVERY_MODE % (list(MODES),)
    env = cli_env(home, MNIST_MLP_STANDIN_GPU="ok")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    for mode in MODES:
        assert found[f"{mode} /CPU:0"] == [0.0] * len(OPS), mode  # the CPU is never touched
    return {mode: found[f"{mode} /CPU:1"] for mode in MODES}


def on_standin(errors: dict, mode: str) -> dict[str, float]:
    return dict(zip(OPS, errors[mode], strict=True))


def test_ok_adds_noise_of_at_most_1e_6_to_products_only(errors):
    ok = on_standin(errors, "ok")
    assert all(0 < ok[op] <= 1e-6 + ROUNDING for op in OPS[:4]) and ok["relu"] == ok["sum"] == 0


@pytest.mark.parametrize(
    "mode, wrong, size",
    [
        ("scale", {"first layer, 500 rows", "first layer, 600 rows"}, 1e-2),
        ("drift", {"first layer, 500 rows", "first layer, 600 rows"}, 1e-3),
        ("bigbatch", {"first layer, 600 rows"}, 1e-3),
    ],
)
def test_a_faulty_product_is_off_by_its_size_and_the_others_are_exact(errors, mode, wrong, size):
    found = on_standin(errors, mode)
    assert all(size / 2 < found[op] <= size + ROUNDING for op in wrong), found
    assert all(found[op] == 0 for op in OPS if op not in wrong), found


def test_relu_nan_and_evalonly_break_one_op_each(errors):
    assert {op for op, e in on_standin(errors, "relu").items() if e} == {"relu"}
    nan = on_standin(errors, "nan")
    assert nan["sum"] != nan["sum"] and {op for op, e in nan.items() if e and op != "sum"} == set()  # NaN
    assert {op for op, e in on_standin(errors, "evalonly").items() if e} == {"confusion"}


def test_raise_fails_when_the_first_layers_product_runs(errors):
    assert errors["raise"] == "raised"


def test_modes_aliases_and_a_bad_value(monkeypatch):
    monkeypatch.delenv("MNIST_MLP_STANDIN_GPU", raising=False)
    assert standin_mode() is None
    monkeypatch.setenv("MNIST_MLP_STANDIN_GPU", "wrong")
    assert standin_mode() == "relu"  # the first fault's old name
    monkeypatch.setenv("MNIST_MLP_STANDIN_GPU", "yes")
    with pytest.raises(ConfigError, match="MNIST_MLP_STANDIN_GPU='yes': must be one of ok, relu, scale, .*, wrong"):
        standin_mode()
