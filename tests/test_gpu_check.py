"""The GPU self-check, its cache and the device choice.

The comparison itself on the stand-in GPU with each of its faults (child processes: the stand-in must be asked
for before TensorFlow starts, so it cannot be switched on inside this test process): every fault caught at
batch 50, 128 and 512, the correct stand-in passed. The policy with scripted verdicts, in-process; a GPU that
fails in the middle of a run with a scripted error, in-process too.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest

from mnist_mlp import cli, gpu_check
from mnist_mlp.config import Config
from mnist_mlp.device import Device, cpu_device
from mnist_mlp.errors import GpuFailure, GpuMismatch
from mnist_mlp.gpu_check import FAILED, MISMATCH, OK, Verdict, choose_device, first_difference, verdict_for
from mnist_mlp.model import MLP
from mnist_mlp.run import train_and_evaluate
from mnist_mlp.rundir import RunDir
from mnist_mlp.training import Trainer
from tests.conftest import cli_env, run_cli, synthetic_mnist

GPU = "/GPU:0"
BATCHES = (50, 128, 512)
FAULTS = {  # each stand-in fault: the verdict and where the check must say it found it
    "relu": (MISMATCH, "H^1 differs"),
    "scale": (MISMATCH, "H^1 differs"),
    "drift": (MISMATCH, "H^1 differs"),
    "bigbatch": (MISMATCH, "differs"),
    "nan": (MISMATCH, "the batch loss is nan on the GPU"),
    "evalonly": (MISMATCH, "the evaluation's confusion counts differ"),
    "raise": (FAILED, "InvalidArgumentError: assertion failed: [stand-in GPU (raise): no kernel for this MatMul]"),
}


def verdict(status: str = OK, speedup: float = 1.0, batch: int = 50) -> Verdict:
    problem = "" if status == OK else "the batch loss is nan on the GPU and 2.3 on the CPU (batch 50)"
    return Verdict(GPU, batch, status, problem, 1e-3, 1e-3 / speedup, 1.5, "2026-01-01T00:00:00")


# --- the comparison ---------------------------------------------------------------------------------------


def test_first_difference_names_the_first_tensor_beyond_twice_its_bound():
    A = np.full(3, 1e-6)
    cpu = np.array([1.0, 2.0, 3.0])
    assert first_difference([("H^1", cpu + 1.9e-6, cpu, A)]) == ""  # each device within A of the exact value
    found = first_difference(
        [("H^1", cpu, cpu, A), ("∇W^1", cpu + np.array([0, 3e-2, 0]), cpu, A), ("ŷ", cpu * 2, cpu, A)]
    )
    assert found == "∇W^1 differs by 0.03 where float32 rounding allows 2e-06"


def test_nan_on_one_device_differs_and_on_both_does_not():
    nan = float("nan")
    assert (
        first_difference([("the batch loss", nan, 2.3, 1e-6)]) == "the batch loss is nan on the GPU and 2.3 on the CPU"
    )
    assert first_difference([("the batch loss", nan, nan, 1e-6)]) == ""
    assert (
        first_difference([("H^1", np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.zeros(2))]) == ""
    )  # exact: 0 allowed


def test_the_check_of_a_device_against_itself_passes_in_process():
    """The whole comparison, not mocked: the 'GPU' here is the CPU's plain graph, exactly the CPU's arithmetic."""
    config = Config().replace(**{"model.hidden": [32, 16], "train.optimizer": "adam", "train.augment_shift": 2})
    data = gpu_check.learnable_digits(2000)
    cpu, gpu = gpu_check.check_trainers(config, "/CPU:0", data)
    assert gpu_check.compare(config, cpu, gpu, data) == ""


def test_the_check_never_raises_a_gpus_error_it_turns_it_into_a_failed_verdict(monkeypatch):
    def broken(*_):
        raise RuntimeError("MPSGraph: internal error\n  at a stack of frames")

    monkeypatch.setattr(gpu_check, "compare", broken)
    found = gpu_check.check_gpu(Config(), "/CPU:0", gpu_check.learnable_digits(600))
    assert found.status == FAILED and found.problem == "RuntimeError: MPSGraph: internal error (batch 50)"
    assert found.summary().startswith("FAILED with an error, checked in")


# --- the stand-in GPU's faults, each caught (child processes) --------------------------------------------

CHECK_EVERY_MODE = """
import json, os, sys
from mnist_mlp import import_tensorflow_quietly
import_tensorflow_quietly()
from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import load_mnist
from mnist_mlp.device import available_gpu
from mnist_mlp import gpu_check
train = load_mnist(DataConfig(dir=sys.argv[1])).train
gpu = available_gpu()
for mode in sys.argv[2].split(","):
    os.environ["MNIST_MLP_STANDIN_GPU"] = mode  # the stand-in reads its mode whenever it builds an op
    for seed in range(int(sys.argv[3])):
        for batch in (50, 128, 512):
            config = Config().replace(**{"train.batch_size": batch, "seed": seed})
            if sys.argv[4] == "check":
                v = gpu_check.check_gpu(config, gpu, train)
                status, problem = v.status, v.problem
            else:  # the comparison alone, without the timing
                problem = gpu_check.compare(config, *gpu_check.check_trainers(config, gpu, train), train)
                status = "mismatch" if problem else "ok"
            print(json.dumps({"mode": mode, "seed": seed, "batch": batch, "status": status, "problem": problem}),
                  flush=True)
"""


def check_modes(tmp_path, mnist_dir, modes: list[str], seeds: int, how: str) -> list[dict]:
    command = [sys.executable, "-c", CHECK_EVERY_MODE, str(mnist_dir), ",".join(modes), str(seeds), how]
    env = cli_env(tmp_path, MNIST_MLP_STANDIN_GPU="ok")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_every_fault_of_the_stand_in_is_caught_at_every_batch_size_and_the_correct_one_passes(tmp_path, mnist_dir):
    found = check_modes(tmp_path, mnist_dir, ["ok", *FAULTS], seeds=1, how="check")
    verdicts = {(v["mode"], v["batch"]): (v["status"], v["problem"]) for v in found}
    assert verdicts.keys() == {(mode, batch) for mode in ["ok", *FAULTS] for batch in BATCHES}
    for (mode, batch), (status, problem) in verdicts.items():
        expected, where = FAULTS.get(mode, (OK, ""))
        assert status == expected, (mode, batch, problem)
        assert where in problem and (problem.endswith(f"(batch {batch})") or mode == "ok"), (mode, batch, problem)


@pytest.mark.slow  # 60 comparisons, about two minutes
def test_the_correct_stand_in_raises_no_false_alarm_in_20_seeds(tmp_path, mnist_dir):
    found = check_modes(tmp_path, mnist_dir, ["ok"], seeds=20, how="compare")
    assert len(found) == 60
    assert [v for v in found if v["status"] != OK] == []


# --- the choice, with a scripted GPU ---------------------------------------------------------------------


@pytest.fixture
def scripted_gpu(monkeypatch):
    """A machine with a GPU whose check returns what the test puts in `found[0]`."""
    found = [verdict()]
    monkeypatch.setattr(gpu_check, "require_gpu", lambda runtime: GPU)
    monkeypatch.setattr(gpu_check, "verdict_for", lambda config, gpu, data=None: found[0])
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


def test_gpu_forced_says_so_when_slower_and_stops_when_wrong_or_failed(scripted_gpu):
    scripted_gpu[0] = verdict(speedup=0.5)
    chosen = choose_device(on("gpu"))
    assert chosen.kind == "gpu" and chosen.describe().endswith("; runtime.device=gpu forces it)")
    scripted_gpu[0] = verdict(MISMATCH)
    with pytest.raises(GpuMismatch, match=r"the GPU \(/GPU:0\) computes wrong results: the batch loss is nan"):
        choose_device(on("gpu"))
    scripted_gpu[0] = verdict(FAILED)
    with pytest.raises(GpuMismatch, match=r"the GPU \(/GPU:0\) raised an error in its self-check: "):
        choose_device(on("gpu"))


@pytest.mark.parametrize("status, summary", [(MISMATCH, "WRONG results"), (FAILED, "FAILED with an error")])
def test_auto_falls_back_to_the_cpu_with_one_warning_line_after_a_failed_check(scripted_gpu, capsys, status, summary):
    scripted_gpu[0] = verdict(status, speedup=5.0)
    chosen = choose_device(on("auto"))
    assert chosen.kind == "cpu" and f"GPU checked: {summary}" in chosen.describe()
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the GPU (/GPU:0) ")
    assert warning[0].endswith("; training on the CPU")


def test_cpu_and_no_gpu_need_no_check(monkeypatch):
    def no_check(*_):
        raise AssertionError("the check ran")

    monkeypatch.setattr(gpu_check, "verdict_for", no_check)
    monkeypatch.setattr(gpu_check, "require_gpu", lambda runtime: GPU)
    xla = ", XLA" if sys.platform == "linux" else ""  # runtime.jit_compile auto (device.py)
    assert choose_device(on("cpu")).describe() == f"CPU (/CPU:0{xla}; runtime.device=cpu)"
    monkeypatch.setattr(gpu_check, "require_gpu", lambda runtime: None)
    assert choose_device(on("auto")).describe() == f"CPU (/CPU:0{xla}; no GPU)"


# --- a GPU that fails in the middle of a run ---------------------------------------------------------------

FAKE_GPU = Device("/CPU:0", "gpu", False, "checked: correct")  # the CPU's plain graph, posing as a GPU


@pytest.fixture
def gpu_fails_at_call(monkeypatch, tmp_path):
    """Trainer.run_steps on a 'gpu' device raises GpuFailure from its calls[0]-th call on (counted from 1)."""
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "cache"))
    calls, at = [0], [3]
    run_steps = Trainer.run_steps

    def failing(self, *args, **kwargs):
        if self.device.kind == "gpu":
            calls[0] += 1
            if calls[0] >= at[0]:
                raise GpuFailure(self.device.name, "InternalError: MPS command buffer failed")
        return run_steps(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_steps", failing)
    return at


def test_auto_goes_on_on_the_cpu_from_the_last_checkpoint_and_ends_as_a_cpu_run(
    tiny_config, tmp_path, gpu_fails_at_call, capsys
):
    config = tiny_config.replace(**{"train.epochs": 3, "runtime.device": "auto", "runtime.jit_compile": False})
    mnist = synthetic_mnist()
    gpu_fails_at_call[0] = 6  # 4 calls an epoch: in the second epoch
    fell_back = train_and_evaluate(config, RunDir.create(tmp_path / "gpu", "gpu"), mnist=mnist, device=FAKE_GPU)
    warning = capsys.readouterr().err.splitlines()
    assert warning == [
        "warning: the GPU (/CPU:0) failed: InternalError: MPS command buffer failed while training; going on on the CPU"
    ]
    straight = train_and_evaluate(
        config, RunDir.create(tmp_path / "cpu", "cpu"), mnist=mnist, device=cpu_device(config.runtime)
    )
    assert [r["epoch"] for r in fell_back.history] == [1, 2, 3]
    for mine, theirs in zip(fell_back.model.variables_in_order, straight.model.variables_in_order, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())  # epoch 1 on the 'GPU', then resumed: nothing lost
    assert fell_back.metrics["device"].startswith("CPU (/CPU:0; the GPU failed while training: InternalError")
    cached = json.loads((tmp_path / "cache" / "gpu_check.json").read_text())
    assert [v["status"] for v in cached.values()] == [FAILED]  # the next run goes to the CPU at once


@pytest.mark.parametrize("fails_in_epoch", [1, 2])
def test_gpu_forced_stops_with_one_line_and_keeps_a_run_that_has_an_epoch(
    gpu_fails_at_call, monkeypatch, tmp_path, mnist_dir, capsys, fails_in_epoch
):
    monkeypatch.setattr("mnist_mlp.run.choose_device", lambda config, data=None: FAKE_GPU)
    gpu_fails_at_call[0] = 1 if fails_in_epoch == 1 else 2  # 1000 images, batch 50, 200 steps a call: 1 call an epoch
    out = tmp_path / "run"
    small = ["--set", "train.epochs=2", "--set", "data.train_limit=1000", "--set", "data.test_limit=500"]
    args = ["train", "--out", str(out), "--quiet", *small, "--set", "runtime.device=gpu", "--data-dir", str(mnist_dir)]
    assert cli.main(args) == cli.EXIT_GPU_FAILED
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and error[0].startswith("error: the GPU (/CPU:0) failed: InternalError: MPS command buffer")
    if fails_in_epoch == 1:  # nothing recorded: no run folder
        assert not out.exists() and error[0].endswith(" while training")
        return
    assert error[0].endswith(
        f"while training; the run is kept: mnist-mlp train --resume {out} --set runtime.device=cpu"
    )
    monkeypatch.setattr("mnist_mlp.run.choose_device", gpu_check.choose_device)
    assert cli.main(["train", "--resume", str(out), "--quiet", "--set", "runtime.device=cpu"]) == 0
    assert json.loads(RunDir(out).metrics_file.read_text())["epochs"] == 2


# --- the cache -------------------------------------------------------------------------------------------


@pytest.fixture
def counted_checks(monkeypatch, tmp_path):
    """check_gpu replaced by a counter; the cache in tmp_path/cache."""
    monkeypatch.setenv("MNIST_MLP_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def check(config, gpu, data=None):
        calls.append(config.train.batch_size)
        return dataclasses.replace(verdict(batch=config.train.batch_size), checked_at=datetime.now().isoformat())

    monkeypatch.setattr(gpu_check, "check_gpu", check)
    return calls


def test_the_verdict_is_cached_per_setting_and_rechecked_on_request(counted_checks, tmp_path):
    config = Config()
    assert not verdict_for(config, GPU).cached and counted_checks == [50]
    assert verdict_for(config, GPU).cached and counted_checks == [50]
    verdict_for(config.replace(**{"train.batch_size": 512}), GPU)
    verdict_for(config.replace(**{"model.hidden": [30]}), GPU)
    verdict_for(config.replace(**{"train.optimizer": "adam"}), GPU)
    verdict_for(config.replace(**{"train.augment_shift": 2}), GPU)
    verdict_for(config.replace(**{"train.learning_rate": 0.1}), GPU)  # the same ops: the same verdict
    assert counted_checks == [50, 512, 50, 50, 50]
    assert not verdict_for(config, GPU, recheck=True).cached and counted_checks == [50, 512, 50, 50, 50, 50]
    assert len(json.loads((tmp_path / "cache" / "gpu_check.json").read_text())) == 5


def test_a_second_process_waits_for_the_first_check_and_takes_its_verdict(counted_checks, tmp_path):
    """Two sweep workers starting at once: the second waits on the cache's lock and finds the first's verdict.
    (flock locks are per open file, so a thread of this process stands in for the second process.)"""
    import threading

    path = tmp_path / "cache" / gpu_check.CACHE_FILE
    found = []
    with gpu_check.one_check_at_a_time(path):
        second = threading.Thread(target=lambda: found.append(verdict_for(Config(), GPU)))
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and found == []  # waiting, not checking
        first = dataclasses.replace(verdict(), checked_at=datetime.now().isoformat(timespec="seconds"))
        gpu_check.remember(first, gpu_check.cache_key(Config(), GPU), {}, path)
    second.join(timeout=30)
    assert found[0].cached and counted_checks == []


def test_the_key_names_the_os_versions_and_the_checked_settings_but_not_the_host(monkeypatch):
    monkeypatch.setattr(gpu_check.platform, "node", lambda: "Annas-MacBook-Air.local")
    key = gpu_check.cache_key(Config().replace(**{"train.optimizer": "momentum", "train.l1": 1e-4}), GPU)
    assert "Annas-MacBook" not in key
    for part in ("tf ", "metal ", "mnist-mlp ", f"check {gpu_check.CHECK_VERSION}", "784-100-100-10", "batch 50",
                 "momentum 0.9", "l1 0.0001", "shift 0", "loss-after-update False"):  # fmt: skip
        assert part in key, part
    monkeypatch.setattr(gpu_check.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(gpu_check.platform, "mac_ver", lambda: ("14.6.1", ("", "", ""), "arm64"))
    assert gpu_check.cache_key(Config(), GPU).startswith("macOS 14.6.1 ")


def test_verdicts_older_than_30_days_are_checked_again_and_dropped(counted_checks, tmp_path):
    verdict_for(Config(), GPU)
    path = tmp_path / "cache" / "gpu_check.json"
    verdicts = json.loads(path.read_text())
    old = (datetime.now() - timedelta(days=31)).isoformat(timespec="seconds")
    verdicts = {key: {**v, "checked_at": old} for key, v in verdicts.items()} | {"gone": {"checked_at": old}}
    path.write_text(json.dumps(verdicts))
    assert not verdict_for(Config(), GPU).cached and counted_checks == [50, 50]
    assert len(json.loads(path.read_text())) == 1


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
    # 20 steps from the same weights; the stand-in's matmuls carry a relative noise of 1e-6, which SGD amplifies
    # step after step: the runs agree to about 1e-5, where a wrong one is off in the first digits.
    rtol = 1e-4
    gpu_loss = json.loads(on_gpu.metrics_file.read_text())["test_loss"]
    assert abs(gpu_loss - on_cpu.metrics["test_loss"]) <= rtol * max(on_cpu.metrics["test_loss"], 1)
    gpu_model = MLP(config.model, config.seed)
    on_gpu.restore_checkpoint(gpu_model)
    for gpu, cpu in zip(gpu_model.variables_in_order, on_cpu.model.variables_in_order, strict=True):
        scale = np.abs(cpu.numpy()).max()
        np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=rtol, atol=rtol * scale)


@pytest.mark.slow  # three child processes, one of them a `train`
def test_a_raising_standin_stops_gpu_runs_auto_falls_back_the_cache_is_used_and_doctor_rechecks(tmp_path, mnist_dir):
    env = {"MNIST_MLP_STANDIN_GPU": "raise", "MNIST_MLP_DATA_DIR": str(mnist_dir)}
    out = tmp_path / "forced"
    forced = run_cli(tmp_path, "train", "--out", str(out), *SMALL_RUN, "--set", "runtime.device=gpu", **env)
    assert forced.returncode == 1 and not out.exists() and forced.stdout == ""
    assert forced.stderr.splitlines() == [
        "error: the GPU (/CPU:1) raised an error in its self-check: InvalidArgumentError: assertion failed: "
        "[stand-in GPU (raise): no kernel for this MatMul] (batch 50); train with runtime.device=auto or cpu, "
        "which use the CPU"
    ]
    cache = tmp_path / "cache" / "gpu_check.json"
    (checked_at,) = [v["checked_at"] for v in json.loads(cache.read_text()).values()]

    auto = run_cli(tmp_path, "train", "--out", str(tmp_path / "auto"), *SMALL_RUN, **env)  # reads that verdict
    assert auto.returncode == 0, auto.stderr
    warning = auto.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the GPU (/CPU:1) raised an error in its self-check")
    xla = ", XLA" if sys.platform == "linux" else ""  # runtime.jit_compile auto (device.py)
    assert (
        f"on CPU (/CPU:0{xla}; GPU checked: FAILED with an error, cached {checked_at})" in auto.stdout.splitlines()[0]
    )
    assert [v["checked_at"] for v in json.loads(cache.read_text()).values()] == [checked_at]

    doctor = run_cli(tmp_path, "doctor", "--json", "--set", "train.batch_size=128", **env)
    assert doctor.returncode == 1, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["gpu_check"] == "failed" and report["device_choice"] == "cpu" and report["gpu"] == "/CPU:1"
    assert report["checked_batch_size"] == 128 and list(report["check_seconds"]) == ["128"]
    assert any("raised an error in its self-check" in problem for problem in report["problems"])
