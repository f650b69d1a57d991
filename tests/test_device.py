"""Device names, the stand-in GPU and its deliberately wrong ReLU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tensorflow as tf

from mnist_mlp import device
from mnist_mlp.config import RuntimeConfig
from mnist_mlp.device import STANDIN_GPU, Device, as_computed_on, cpu_device, gpu_device, standin_mode
from mnist_mlp.errors import ConfigError
from mnist_mlp.model import RELU
from tests.conftest import cli_env


def test_describe_names_the_device_the_stand_in_and_the_reason():
    assert cpu_device(RuntimeConfig(), "no GPU").describe() == "CPU (/CPU:0; no GPU)"
    assert cpu_device(RuntimeConfig(jit_compile=True)).describe() == "CPU (/CPU:0, XLA)"
    standin = Device(STANDIN_GPU, "gpu", False, "checked: correct")
    assert standin.describe() == "GPU (/CPU:1, stand-in; checked: correct)"
    with pytest.raises(ConfigError, match="XLA is not supported on the GPU path"):
        gpu_device(RuntimeConfig(jit_compile=True), "/GPU:0")


def test_only_the_wrong_stand_in_computes_relu_wrongly(monkeypatch):
    x = tf.constant([-1.0, 2.0])
    monkeypatch.delenv("MNIST_MLP_STANDIN_GPU", raising=False)
    assert as_computed_on(STANDIN_GPU, RELU) is RELU and as_computed_on("/GPU:0", RELU) is RELU
    monkeypatch.setenv("MNIST_MLP_STANDIN_GPU", "wrong")
    assert as_computed_on("/CPU:0", RELU) is RELU and as_computed_on("/GPU:0", RELU) is RELU
    wrong = as_computed_on(STANDIN_GPU, RELU)
    assert wrong.fn(x).numpy().tolist() == [-1.0, 2.0]  # the identity: the testing aid's error
    assert wrong.derivative is RELU.derivative  # only the forward op is wrong
    monkeypatch.setenv("MNIST_MLP_STANDIN_GPU", "ok")
    assert as_computed_on(STANDIN_GPU, RELU) is RELU


def test_a_bad_stand_in_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("MNIST_MLP_STANDIN_GPU", "yes")
    with pytest.raises(ConfigError, match="MNIST_MLP_STANDIN_GPU='yes': must be one of ok, wrong"):
        standin_mode()


def test_the_stand_in_cannot_be_switched_on_once_tensorflow_runs(monkeypatch):
    tf.constant(1.0)  # the runtime is up in this process
    monkeypatch.setenv("MNIST_MLP_STANDIN_GPU", "ok")
    device.available_gpu.cache_clear()
    try:
        with pytest.raises(ConfigError, match="TensorFlow had started before the CPU could be split"):
            device.available_gpu()
    finally:
        device.available_gpu.cache_clear()


def test_the_stand_in_is_the_second_logical_cpu_and_training_runs_there(tmp_path):
    script = (
        "from mnist_mlp.config import Config\n"
        "from mnist_mlp.device import available_gpu, gpu_device\n"
        "from mnist_mlp.training import Trainer\n"
        "from tests.conftest import synthetic_mnist\n"
        "gpu = available_gpu()\n"
        "trainer = Trainer(Config(), synthetic_mnist().train, gpu_device(Config().runtime, gpu))\n"
        "print(gpu, trainer.images.device, trainer.model.W[0].device, trainer.model.activation.fn.__name__)\n"
    )
    env = cli_env(tmp_path, MNIST_MLP_STANDIN_GPU="wrong")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    gpu, images, weights, phi = done.stdout.split()
    assert gpu == STANDIN_GPU and images.endswith("/device:CPU:1") and weights.endswith("/device:CPU:1")
    assert phi == "identity"
