"""Device names, XLA's flags, and the stand-in GPU as TensorFlow's second logical CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp import device
from mnist_mlp.cache import xla_cache_dir
from mnist_mlp.config import RuntimeConfig
from mnist_mlp.device import STANDIN_GPU, Device, cpu_device, gpu_device
from mnist_mlp.errors import ConfigError
from tests.conftest import cli_env, run_cli


def test_describe_names_the_device_the_stand_in_and_the_reason():
    assert cpu_device(RuntimeConfig(jit_compile=False), "no GPU").describe() == "CPU (/CPU:0; no GPU)"
    assert cpu_device(RuntimeConfig(jit_compile=True)).describe() == "CPU (/CPU:0, XLA)"
    standin = Device(STANDIN_GPU, "gpu", False, "checked: correct")
    assert standin.describe() == "GPU (/CPU:1, stand-in; checked: correct)"
    with pytest.raises(ConfigError, match="XLA is not supported on the GPU path"):
        gpu_device(RuntimeConfig(jit_compile=True), "/GPU:0")


@pytest.mark.parametrize("platform, xla", [("linux", True), ("darwin", False)])
def test_auto_turns_xla_on_for_the_cpu_on_linux_only(monkeypatch, platform, xla):
    monkeypatch.setattr(sys, "platform", platform)
    assert cpu_device(RuntimeConfig()).jit_compile is xla
    assert cpu_device(RuntimeConfig(jit_compile=False)).jit_compile is False
    assert gpu_device(RuntimeConfig(), "/GPU:0").jit_compile is False


def test_xla_cpu_runtime_flag_is_set_for_one_compilation_and_the_environment_restored(monkeypatch):
    monkeypatch.setattr(device, "_xla_flags_read", False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    seen = []
    monkeypatch.setattr(tf, "function", lambda fn, jit_compile: lambda x: seen.append(os.environ["XLA_FLAGS"]))
    device.prepare_xla_cpu()
    device.prepare_xla_cpu()  # once per process: XLA reads its flags only at the first compilation
    assert seen == [f"--xla_cpu_enable_fast_math=false {device.XLA_CPU_RUNTIME_FLAG}"] == [device.xla_flags()]
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"


def test_a_users_own_xla_runtime_flag_is_kept(monkeypatch):
    monkeypatch.setattr(device, "_xla_flags_read", False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    monkeypatch.setattr(tf, "function", lambda *a, **k: pytest.fail("compiled with the user's flags replaced"))
    device.prepare_xla_cpu()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true" == device.xla_flags()


@pytest.fixture
def runtime_start(monkeypatch, tmp_path):
    """configure_runtime as before TensorFlow's runtime starts, with a scratch cache folder: records the TF_XLA_FLAGS
    that the start would read (a stand-in for it: the real one happens once per process)."""
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    seen = []
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda: seen.append(os.environ.get("TF_XLA_FLAGS")))
    return seen


def test_xla_keeps_its_programs_in_the_cache_folder_and_the_environment_is_restored(runtime_start, tmp_path):
    device.configure_runtime(RuntimeConfig(jit_compile=True))
    folder = xla_cache_dir(device.xla_flags(), 0)
    assert folder.is_dir() and folder.is_relative_to(tmp_path / "cache" / "xla")
    assert runtime_start == [f"{device.XLA_CACHE_FLAG}={folder}"] and "TF_XLA_FLAGS" not in os.environ
    device.configure_runtime(RuntimeConfig(jit_compile=False))  # no XLA, no cache
    assert runtime_start[-1] is None


def test_a_users_own_xla_cache_is_kept_and_other_flags_are_extended(runtime_start, monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/elsewhere")
    assert device.xla_cache_flags(0) is None
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_enable_lazy_compilation=false")
    folder = xla_cache_dir(device.xla_flags(), 0)
    assert device.xla_cache_flags(0) == f"--tf_xla_enable_lazy_compilation=false {device.XLA_CACHE_FLAG}={folder}"


def test_no_xla_cache_where_the_cache_folder_cannot_be_written(runtime_start, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert device.xla_cache_flags(0) is None  # XLA would fail every call whose program it cannot write


def test_the_xla_cache_folder_changes_with_the_flags_and_the_threads():
    folders = {xla_cache_dir(flags, threads) for flags in ("", "--a") for threads in (0, 1)}
    assert len(folders) == 4


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
        "print(gpu, trainer.images.device, trainer.model.W[0].device)\n"
    )
    env = cli_env(tmp_path, MNIST_MLP_STANDIN_GPU="relu")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    gpu, images, weights = done.stdout.split()
    assert gpu == STANDIN_GPU and images.endswith("/device:CPU:1") and weights.endswith("/device:CPU:1")


@pytest.mark.slow  # two small training runs in fresh processes: about 30 s on 2 cores
def test_a_run_loads_what_an_earlier_run_compiled_and_trains_the_same_weights(tmp_path, mnist_dir):
    small = ["--set", "train.epochs=1", "--set", "data.train_limit=2000", "--set", "data.test_limit=500", "--quiet"]
    weights = []
    for name in ("cold", "warm"):
        done = run_cli(tmp_path, "train", "--out", str(tmp_path / name), "--set", f"data.dir={mnist_dir}", *small)
        assert done.returncode == 0, done.stderr
        programs = sorted((tmp_path / "cache" / "xla").glob("*/xla_compile_cache_*.pb"))
        assert programs, "XLA kept no compiled program in the cache folder"
        if name == "cold":
            written = {p: p.stat().st_mtime_ns for p in programs}
        weights.append(np.load(tmp_path / name / "weights.npz"))
    assert {p: p.stat().st_mtime_ns for p in programs} == written  # loaded, not compiled and written again
    for cold, warm in zip(weights[0].values(), weights[1].values(), strict=True):
        np.testing.assert_array_equal(cold, warm)
