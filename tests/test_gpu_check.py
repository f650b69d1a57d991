"""The GPU self-check, its cache and the device choice: the policy in-process with a scripted verdict, the
whole path in child processes on the stand-in GPU (MNIST_MLP_STANDIN_GPU), which must be set up before
TensorFlow starts and so cannot be switched on inside this test process."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest

from mnist_mlp import gpu_check
from mnist_mlp.config import Config
from mnist_mlp.device import cpu_device
from mnist_mlp.errors import GpuMismatch
from mnist_mlp.gpu_check import CHECK_RTOL, Verdict, choose_device, losses_agree, verdict_for
from mnist_mlp.model import MLP
from mnist_mlp.run import train_and_evaluate
from mnist_mlp.rundir import RunDir
from tests.conftest import run_cli

GPU = "/GPU:0"


def verdict(correct: bool = True, speedup: float = 1.0, batch: int = 50) -> Verdict:
    difference = "" if correct else "after 10 SGD steps the loss is nan on the GPU and 2.3 on the CPU"
    return Verdict(GPU, batch, correct, difference, 1e-3, 1e-3 / speedup, 1.5, "2026-01-01 00:00:00")


def test_losses_agree_only_within_the_tolerance():
    tol = 1e-4
    assert losses_agree(2.0, 2.0 * (1 + 0.5 * tol), tol) and not losses_agree(2.0, 2.0 * (1 + 2 * tol), tol)
    assert losses_agree(0.1, 0.1 + 0.5 * tol, tol) and not losses_agree(0.1, 0.1 + 2 * tol, tol)  # below 1
    assert not losses_agree(float("nan"), 0.3, tol)


# --- the choice, with a scripted GPU ---------------------------------------------------------------------


@pytest.fixture
def scripted_gpu(monkeypatch):
    """A machine with a GPU whose check returns what the test puts in `found[0]`."""
    found = [verdict()]
    monkeypatch.setattr(gpu_check, "require_gpu", lambda runtime: GPU)
    monkeypatch.setattr(gpu_check, "verdict_for", lambda config, gpu: found[0])
    return found


def on(device: str) -> Config:
    return Config().replace(**{"runtime.device": device})


def test_auto_takes_a_correct_gpu_only_when_it_is_faster(scripted_gpu):
    scripted_gpu[0] = verdict(speedup=3.0)
    chosen = choose_device(on("auto"))
    assert chosen.kind == "gpu" and "checked: correct, 3.0x faster at batch 50" in chosen.describe()
    scripted_gpu[0] = verdict(speedup=1 / 6.2)
    chosen = choose_device(on("auto"))
    assert chosen.kind == "cpu" and "GPU checked: correct, 6.2x slower at batch 50" in chosen.describe()
    scripted_gpu[0] = verdict(speedup=1.05)  # within the timing noise
    assert choose_device(on("auto")).kind == "cpu"


def test_gpu_forced_says_so_when_slower_and_stops_when_wrong(scripted_gpu):
    scripted_gpu[0] = verdict(speedup=0.5)
    chosen = choose_device(on("gpu"))
    assert chosen.kind == "gpu" and chosen.describe().endswith("; runtime.device=gpu forces it)")
    scripted_gpu[0] = verdict(correct=False)
    with pytest.raises(GpuMismatch, match=r"the GPU \(/GPU:0\) failed its self-check: after 10 SGD steps"):
        choose_device(on("gpu"))


def test_auto_falls_back_to_the_cpu_with_one_warning_line_after_a_mismatch(scripted_gpu, capsys):
    scripted_gpu[0] = verdict(correct=False, speedup=5.0)
    chosen = choose_device(on("auto"))
    assert chosen.kind == "cpu" and "GPU checked: WRONG results" in chosen.describe()
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the GPU (/GPU:0) failed its self-check")


def test_cpu_and_no_gpu_need_no_check(monkeypatch):
    def no_check(*_):
        raise AssertionError("the check ran")

    monkeypatch.setattr(gpu_check, "verdict_for", no_check)
    monkeypatch.setattr(gpu_check, "require_gpu", lambda runtime: GPU)
    xla = ", XLA" if sys.platform == "linux" else ""  # runtime.jit_compile auto (device.py)
    assert choose_device(on("cpu")).describe() == f"CPU (/CPU:0{xla}; runtime.device=cpu)"
    monkeypatch.setattr(gpu_check, "require_gpu", lambda runtime: None)
    assert choose_device(on("auto")).describe() == f"CPU (/CPU:0{xla}; no GPU)"


# --- the cache -------------------------------------------------------------------------------------------


@pytest.fixture
def counted_checks(monkeypatch, tmp_path):
    """check_gpu replaced by a counter; the cache in tmp_path/cache."""
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def check(config, gpu):
        calls.append(config.train.batch_size)
        return verdict(batch=config.train.batch_size)

    monkeypatch.setattr(gpu_check, "check_gpu", check)
    return calls


def test_the_verdict_is_cached_per_batch_size_and_rechecked_on_request(counted_checks, tmp_path):
    config = Config()
    assert not verdict_for(config, GPU).cached and counted_checks == [50]
    assert verdict_for(config, GPU) == dataclasses.replace(verdict(), cached=True) and counted_checks == [50]
    verdict_for(config.replace(**{"train.batch_size": 512}), GPU)
    verdict_for(config.replace(**{"model.hidden": [30]}), GPU)
    assert counted_checks == [50, 512, 50]
    assert not verdict_for(config, GPU, recheck=True).cached and counted_checks == [50, 512, 50, 50]
    assert len(json.loads((tmp_path / "cache" / "gpu_check.json").read_text())) == 3


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": 1}', ""])
def test_a_corrupt_cache_file_is_ignored_and_replaced(counted_checks, tmp_path, content):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "gpu_check.json").write_text(content)
    assert not verdict_for(Config(), GPU).cached and counted_checks == [50]
    assert verdict_for(Config(), GPU).cached and counted_checks == [50]


def test_a_cache_that_cannot_be_written_is_one_warning_line(counted_checks, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert verdict_for(Config(), GPU).correct
    assert capsys.readouterr().err.startswith("warning: GPU check not cached (")


def test_cache_folder_follows_the_platform_and_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_MLP_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(gpu_check.platform, "system", lambda: "Darwin")
    assert gpu_check.cache_dir() == tmp_path / "Library" / "Caches" / "mnist_mlp"
    monkeypatch.setattr(gpu_check.platform, "system", lambda: "Linux")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert gpu_check.cache_dir() == tmp_path / ".cache" / "mnist_mlp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gpu_check.cache_dir() == tmp_path / "xdg" / "mnist_mlp"
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "mine"))
    assert gpu_check.cache_dir() == tmp_path / "mine"


# --- the whole path on the stand-in GPU (child processes) ------------------------------------------------

SMALL_RUN = ["--set", "train.epochs=1", "--set", "data.train_limit=1000", "--set", "data.test_limit=500"]


@pytest.mark.slow  # a `train` child process with its SavedModel and plots, then the same run in-process
def test_a_run_on_the_ok_standin_trains_as_the_cpu_does(tmp_path, mnist_dir):
    out = tmp_path / "gpu"
    done = run_cli(tmp_path, "train", "--out", str(out), *SMALL_RUN, "--set", "runtime.device=gpu",
                   MNIST_MLP_STANDIN_GPU="ok", MNIST_MLP_DATA_DIR=str(mnist_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "on GPU (/CPU:1, stand-in; checked: correct" in done.stdout.splitlines()[0]
    on_gpu = RunDir.open(out)
    config = on_gpu.read_config().replace(**{"runtime.device": "cpu", "data.dir": str(mnist_dir)})
    on_cpu = train_and_evaluate(config, RunDir.create(tmp_path / "cpu", "cpu"), device=cpu_device(config.runtime))
    gpu_loss = json.loads(on_gpu.metrics_file.read_text())["test_loss"]
    assert losses_agree(gpu_loss, on_cpu.metrics["test_loss"], CHECK_RTOL)
    gpu_model = MLP(config.model, config.seed)
    on_gpu.restore_checkpoint(gpu_model)
    for gpu, cpu in zip(gpu_model.variables_in_order, on_cpu.model.variables_in_order, strict=True):
        scale = np.abs(cpu.numpy()).max()
        np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=CHECK_RTOL, atol=CHECK_RTOL * scale)


@pytest.mark.slow  # three child processes, one of them a `train`
def test_a_wrong_standin_is_caught_auto_falls_back_the_cache_is_used_and_doctor_rechecks(tmp_path, mnist_dir):
    env = {"MNIST_MLP_STANDIN_GPU": "wrong", "MNIST_MLP_DATA_DIR": str(mnist_dir)}
    out = tmp_path / "forced"
    forced = run_cli(tmp_path, "train", "--out", str(out), *SMALL_RUN, "--set", "runtime.device=gpu", **env)
    assert forced.returncode == 1 and not out.exists()
    assert forced.stderr.startswith("error: the GPU (/CPU:1) failed its self-check: after 10 SGD steps at batch 50")
    assert len(forced.stderr.splitlines()) == 1 and forced.stdout == ""
    cache = tmp_path / "cache" / "gpu_check.json"
    (checked_at,) = [v["checked_at"] for v in json.loads(cache.read_text()).values()]

    auto = run_cli(tmp_path, "train", "--out", str(tmp_path / "auto"), *SMALL_RUN, **env)  # reads that verdict
    assert auto.returncode == 0, auto.stderr
    warning = auto.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the GPU (/CPU:1) failed its self-check")
    xla = ", XLA" if sys.platform == "linux" else ""  # runtime.jit_compile auto (device.py)
    assert f"on CPU (/CPU:0{xla}; GPU checked: WRONG results, cached {checked_at})" in auto.stdout.splitlines()[0]
    assert [v["checked_at"] for v in json.loads(cache.read_text()).values()] == [checked_at]

    doctor = run_cli(tmp_path, "doctor", "--json", **env)
    assert doctor.returncode == 1, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["gpu_check"] == "mismatch" and report["device_choice"] == "cpu" and report["gpu"] == "/CPU:1"
    assert any("computes wrong results" in problem for problem in report["problems"])
    rechecked = {v["batch_size"]: v["checked_at"] for v in json.loads(cache.read_text()).values()}
    assert rechecked.keys() == {50, 512} and rechecked[50] > checked_at  # doctor checked again, not the cache
