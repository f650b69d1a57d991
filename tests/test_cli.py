"""`mnist-mlp train` end to end on real MNIST: the documented files and keys, and the accuracy bar."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from mnist_mlp.cli import main
from mnist_mlp.config import Config, from_dict

HISTORY_COLUMNS = ["epoch", "learning_rate", "seconds", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
HISTORY_COLUMNS += [f"{split}_error_{d}" for split in ("train", "test") for d in range(10)]
METRICS_KEYS = ["test_accuracy", "test_error", "mean_per_digit_test_error", "per_digit_test_error"]
METRICS_KEYS += ["train_accuracy", "train_loss", "test_loss", "epochs", "seconds_total"]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, mnist_dir):
    """One epoch of the default config on real MNIST, through the command line."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--out", str(out), "--set", "train.epochs=1", "--set", f"data.dir={mnist_dir}", "--quiet"])
    assert code == 0
    return out


@pytest.mark.slow
def test_train_writes_config_history_and_metrics_with_the_documented_keys(one_epoch_run):
    config = from_dict(yaml.safe_load((one_epoch_run / "config.yaml").read_text()), "config.yaml")
    assert config.train.epochs == 1 and config.model.hidden == Config().model.hidden
    with (one_epoch_run / "history.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and set(HISTORY_COLUMNS) <= set(rows[0])
    assert 0 < float(rows[0]["seconds"]) < 600
    metrics = json.loads((one_epoch_run / "metrics.json").read_text())
    assert set(METRICS_KEYS) <= set(metrics)
    assert metrics["test_error"] == pytest.approx(1 - metrics["test_accuracy"])
    assert len(metrics["per_digit_test_error"]) == 10
    assert metrics["mean_per_digit_test_error"] == pytest.approx(sum(metrics["per_digit_test_error"]) / 10)
    assert metrics["test_accuracy"] == pytest.approx(float(rows[0]["test_accuracy"]))


@pytest.mark.slow
def test_one_epoch_of_the_default_config_reaches_95_percent(one_epoch_run):
    assert json.loads((one_epoch_run / "metrics.json").read_text())["test_accuracy"] >= 0.95


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys, mnist_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("keep me")
    assert main(["train", "--out", str(out), "--set", f"data.dir={mnist_dir}"]) == 2
    assert (out / "history.csv").read_text() == "keep me"
    assert "already holds a run (history.csv); pass --resume" in capsys.readouterr().err


def test_too_few_training_images_for_a_batch_is_a_config_error(tmp_path, capsys, mnist_dir):
    assert (
        main(["train", "--out", str(tmp_path / "r"), "--set", f"data.dir={mnist_dir}", "--set", "data.train_limit=10"])
        == 2
    )
    assert "10 training images" in capsys.readouterr().err


def test_resume_with_other_options_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--set", "train.epochs=2"]) == 2
    assert "drop --config, --set and --out" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err
