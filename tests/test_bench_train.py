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
    assert run["overhead"] == pytest.approx(run["wall"] - run["training"] - run["import_seconds"])
    assert 0 < run["training"] < run["wall"] and 0 < run["import_seconds"] < run["wall"] and run["epochs"] == 1
    assert 100e6 < run["peak_rss"] < 20e9  # TensorFlow alone needs hundreds of MB
    assert 10e6 < run["children_peak_rss"] < run["peak_rss"]  # the plot processes: Python and matplotlib
    assert found["median"]["overhead"] == run["overhead"] and found["command"].endswith(" ".join(SMALL))
    assert len(said) == 1 and said[0].startswith("  train run 1/1: wall ")
    assert "peak RSS of the training process" in bench_train.format_train_runs(found)
    assert list(tmp_path.glob("mnist-mlp-bench-*")) == []  # the scratch run folder is gone


@pytest.mark.slow  # TensorFlow's import in a fresh process first
def test_a_failed_train_run_raises_with_its_error_line(tmp_path):
    with pytest.raises(RuntimeError, match="exited 2: error: "):
        bench_train.measure_train_runs(1, ["--set", "train.epochs=0"], env=cli_env(tmp_path))


def test_own_peak_rss_is_this_processs_high_water_mark():
    before = bench_train.own_peak_rss()
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    assert bench_train.own_peak_rss() >= before and bench_train.own_peak_rss() > 64 * 2**20
