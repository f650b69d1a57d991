"""`mnist-mlp evaluate`: a saved run scores the numbers it reported at the end of training; bad runs get a message."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp import cli
from mnist_mlp.config import Config
from mnist_mlp.evaluate import RunEvaluation, evaluate_run
from mnist_mlp.results import Evaluation
from mnist_mlp.run import train_and_evaluate
from mnist_mlp.rundir import CheckpointState, RunDir

METRIC_KEYS = ("test_accuracy", "test_error", "mean_per_digit_test_error", "per_digit_test_error", "test_loss")


@pytest.fixture(scope="module")
def small_run(mnist_dir: Path, tmp_path_factory) -> Path:
    """A finished two-epoch run on a slice of real MNIST (a second of training), as `train` leaves it."""
    config = Config().replace(
        **{"data.dir": str(mnist_dir), "data.train_limit": 3000, "data.test_limit": 2000, "train.epochs": 2}
    )
    run = RunDir.create(tmp_path_factory.mktemp("evaluate") / "run", "small")
    train_and_evaluate(config, run)
    return run.path


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`: to show a command changed nothing."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_evaluate_reproduces_the_metrics_of_training_exactly(small_run, capsys):
    before = folder_digest(small_run)
    status, out, _ = run_cli(capsys, "evaluate", str(small_run), "--json")
    assert status == 0
    evaluated = json.loads(out)
    trained = json.loads((small_run / "metrics.json").read_text())
    # Same weights, data, device and code path (Trainer.evaluate): equal to the bit, loss included.
    assert {k: evaluated[k] for k in METRIC_KEYS} == {k: trained[k] for k in METRIC_KEYS}
    assert evaluated["test_images"] == 2000 and evaluated["epoch"] == 2 and evaluated["checkpoint"] == "last"
    assert folder_digest(small_run) == before  # evaluating writes nothing into the run


def test_evaluate_prints_the_figures_for_a_person(small_run, capsys):
    status, out, _ = run_cli(capsys, "evaluate", str(small_run))
    trained = json.loads((small_run / "metrics.json").read_text())
    assert status == 0
    assert f"test accuracy {trained['test_accuracy']:.2%}" in out
    assert f"mean per-digit error {trained['mean_per_digit_test_error']:.2%}" in out
    assert f"9: {trained['per_digit_test_error'][9]:.2%}" in out
    assert "last checkpoint (epoch 2) on 2,000 test images" in out


def test_best_checkpoint_and_data_dir_override(small_run, mnist_dir):
    run = RunDir.open(small_run)
    best = evaluate_run(run, "best", data_dir=mnist_dir)
    history = run.read_history()
    best_row = min(history, key=lambda row: row["train_loss"])  # no validation split: training loss decides
    assert best.checkpoint.epoch == best_row["epoch"]
    assert best.metrics["test_accuracy"] == best_row["test_accuracy"]


def test_an_interrupted_checkpoint_is_labelled():
    confusion = np.diag([5] * 10)
    result = RunEvaluation(
        RunDir(Path("r")), "last", CheckpointState(3, 400, 1.0, 2.0), "x", Evaluation(0.5, None, confusion)
    )
    assert "epoch 3, after step 400 (interrupted mid-epoch)" in result.summary()


def test_not_a_run_folder(tmp_path, capsys):
    status, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert status == 2 and err == f"error: {tmp_path}: not a run folder (no config.yaml)\n"
    status, _, err = run_cli(capsys, "evaluate", str(tmp_path / "nowhere"))
    assert status == 2 and err == f"error: {tmp_path / 'nowhere'}: no such run folder\n"


def test_run_without_checkpoints(small_run, tmp_path, capsys):
    shutil.copy(small_run / "config.yaml", tmp_path / "config.yaml")
    status, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert status == 2 and err == f"error: {tmp_path / 'checkpoints'}: missing (the run's checkpoint folder)\n"


def test_checkpoint_from_another_architecture(small_run, tmp_path, capsys):
    """config.yaml says one hidden layer of 50; the checkpoint holds 100-100: a message, and nothing changes."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("hidden:\n  - 100\n  - 100\n", "hidden:\n  - 50\n"))
    assert "- 50" in config.read_text()
    before = folder_digest(run)
    status, _, err = run_cli(capsys, "evaluate", str(run))
    assert status == 2
    assert err.startswith(f"error: {run / 'checkpoints'}/epoch-0002: does not fit this model (")
    assert err.count("\n") == 1
    assert folder_digest(run) == before


def test_bad_data_dir(small_run, tmp_path, capsys):
    status, _, err = run_cli(capsys, "evaluate", str(small_run), "--data-dir", str(tmp_path / "none"))
    assert status == 2 and err.startswith(f"error: {tmp_path / 'none'}: MNIST data folder not found")
