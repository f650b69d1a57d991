"""`mnist-mlp doctor`: the report's keys, its problems and its exit status (on this machine, without a GPU;
tests/test_gpu_check.py runs it on the stand-in GPU)."""

from __future__ import annotations

import json
import os

from mnist_mlp import doctor
from mnist_mlp.cli import main
from tests.conftest import REPO, run_cli

KEYS = {"python", "tensorflow", "keras", "tensorflow_metal", "platform", "devices", "data", "gpu_check",
        "device_choice", "recommendation", "problems", "step_seconds"}  # fmt: skip


def test_json_report_without_a_gpu_and_with_its_data_is_healthy(mnist_dir, capsys):
    assert main(["doctor", "--json", "--data-dir", str(mnist_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report.keys() >= KEYS
    assert report["gpu_check"] == "no gpu" and report["device_choice"] == "cpu" and report["problems"] == []
    assert "/CPU:0" in report["devices"] and report["data"] == f"IDX files in {mnist_dir}"


def test_a_data_folder_without_mnist_is_a_problem_and_exit_1(tmp_path, capsys):
    assert main(["doctor", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"problem      {tmp_path}: missing train-images-idx3-ubyte[.gz]" in out
    assert "GPU check    no gpu" in out and "auto picks   CPU at batch 50" in out


def test_a_mac_without_the_metal_plugin_is_a_problem(monkeypatch):
    monkeypatch.setattr(doctor.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(doctor.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(doctor, "metal_plugin_version", lambda: None)
    assert doctor.environment_problems() == [
        "tensorflow-metal is not installed, so TensorFlow sees no GPU (make install adds it)"
    ]


def test_the_text_report_gives_each_batch_sizes_step_times():
    report = {
        "platform": "Darwin 24.0 arm64", "python": "3.12.8", "python_executable": "/x/.venv/bin/python",
        "tensorflow": "2.19.1", "keras": "3.10.0", "tensorflow_metal": "1.2.0", "devices": ["/CPU:0", "/GPU:0"],
        "gpu": "/GPU:0", "standin_gpu": None, "data": "IDX files in /d", "gpu_check": "ok",
        "step_seconds": {"50": {"cpu": 0.0005, "gpu": 0.0031}, "512": {"cpu": 0.004, "gpu": 0.002}},
        "check_seconds": {"50": 1.9, "512": 1.2}, "device_choice": "cpu", "checked_batch_size": 50,
        "recommendation": "r", "problems": [],
    }  # fmt: skip
    text = doctor.format_report(report)
    assert "batch 50     a training step takes 0.50 ms on the CPU, 3.10 ms on the GPU (6.2x slower)" in text
    assert "batch 512    a training step takes 4.00 ms on the CPU, 2.00 ms on the GPU (2.0x faster)" in text
    assert text.endswith("problems     none")


def test_a_plugin_that_fails_to_load_is_one_warning_line_the_cpu_and_a_problem(tmp_path):
    """A broken Metal plugin (here a file that is no library) in a site-packages' tensorflow-plugins makes
    TensorFlow's own import raise; the project says so in one line and goes on with TensorFlow on the CPU."""
    plugins = tmp_path / "site-packages" / "tensorflow-plugins"
    plugins.mkdir(parents=True)
    (plugins / "libmetal_plugin.so").write_bytes(b"not a library")
    done = run_cli(tmp_path, "doctor", "--json", PYTHONPATH=f"{REPO}{os.pathsep}{plugins.parent}")
    assert done.returncode == 1, done.stderr
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("warning: a TensorFlow plugin failed to load (NotFoundError: ")
    assert warning.endswith(
        "libmetal_plugin.so: file too short); reinstall: make clean && make install; going on without it, on the CPU"
    )
    report = json.loads(done.stdout)
    assert report["devices"] == ["/CPU:0"] and report["gpu_check"] == "no gpu"
    assert report["problems"][0].startswith("a TensorFlow plugin failed to load (NotFoundError: ")
