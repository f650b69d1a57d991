"""The bench's whole training runs: overhead and peak memory from real `mnist-mlp train` processes.

No timing assertions: only that the figures are there and add up.
"""

from __future__ import annotations

import tempfile

import pytest

from mnist_mlp import bench_train
from tests.conftest import cli_env

SMALL = ["--set", "train.epochs=1", "--set", "data.train_limit=2000", "--set", "data.test_limit=500"]


@pytest.mark.slow  # one small training run and one TensorFlow import, in fresh processes: about 30 s on 2 cores
def test_a_train_run_reports_its_overhead_and_the_peak_memory_of_it_and_its_children(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the scratch run folder goes
    said = []
    found = bench_train.measure_train_runs(1, SMALL, said.append, cli_env(tmp_path, MNIST_MLP_DATA_DIR=str(mnist_dir)))
    [run] = found["runs"]
    assert 0 < run["training"] < run["wall"] and 0 < run["import_seconds"] < run["wall"] and run["epochs"] == 1
    assert 100e6 < run["peak_rss"] < 20e9  # TensorFlow alone needs hundreds of MB
    assert 10e6 < run["children_peak_rss"] < run["peak_rss"]  # the plot processes: Python and matplotlib
    assert found["command"].endswith(" ".join(SMALL))
    assert len(said) == 1 and said[0].startswith("  train run 1/1: wall ")
    assert "peak RSS of the training process" in bench_train.format_train_runs(found)
    assert list(tmp_path.glob("mnist-mlp-bench-*")) == []  # the scratch run folder is gone


@pytest.mark.slow  # TensorFlow's import in a fresh process first
def test_a_failed_train_run_is_said_with_its_error_line_and_the_bench_goes_on(tmp_path):
    found = bench_train.measure_train_runs(1, ["--set", "train.epochs=0"], env=cli_env(tmp_path))
    assert found["skipped"].startswith("train run 1 failed: mnist-mlp train exited 2: error: "), found


def test_own_peak_rss_is_this_processs_high_water_mark():
    before = bench_train.own_peak_rss()
    size = before + 64 * 2**20  # beyond anything this process has held, so the mark must move by most of it
    block = bytearray(size)
    block[::4096] = b"x" * len(block[::4096])
    assert bench_train.own_peak_rss() >= before + 32 * 2**20  # (the rest of the process holds more besides)
