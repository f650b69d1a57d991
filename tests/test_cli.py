"""`mnist-mlp train` end to end on real MNIST: the documented files and keys, and the accuracy bar."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import yaml

from mnist_mlp.cli import main
from mnist_mlp.config import Config, from_dict
from mnist_mlp.data import DATA_DIR_ENV
from mnist_mlp.errors import UserError
from mnist_mlp.rundir import RunDir
from tests.conftest import folder_digest

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
    assert main(["train", "--resume", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "drop --config, --out and --overwrite" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err


TINY = ["--set", "train.epochs=1", "--set", "data.train_limit=1000", "--set", "data.test_limit=500",
        "--set", "model.hidden=[16]", "--set", "runtime.device=cpu", "--quiet"]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, mnist_dir) -> Path:
    """A working folder, MNIST named by the environment as a user's shell would."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    return tmp_path


def train(capsys, *argv) -> tuple[int, str]:
    status = main(["train", *map(str, argv)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--set", "runtime.device=gpu"], "runtime.device is gpu but TensorFlow lists no GPU"),
        (["--set", "train.batch_size=100000"], "fewer than one batch of train.batch_size=100000"),
        (["--set", "model.hidden=[100000000]"], "needs about"),
        (["--set", "seed=99999999999999999999"], "seed must be in [0, 2**63 - 1]"),
        (["--out", "afile/sub"], "afile is a file, not a folder"),
        (["--out", "/proc/run"], "/proc/run: cannot make a run folder in /proc"),
        (["--data-dir", "nowhere"], "nowhere: MNIST data folder not found"),
    ],
)
def test_every_check_fails_before_a_folder_is_made_in_one_line(in_tmp, capsys, args, says):
    (in_tmp / "afile").write_text("")
    status, err = train(capsys, *TINY, *args)  # the later --set wins
    assert status == 2 and err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["afile"]  # no runs/, nothing else


def test_a_failed_overwrite_leaves_the_old_run_as_it_was(in_tmp, capsys):
    assert train(capsys, "--out", "old", *TINY)[0] == 0
    before = folder_digest(in_tmp / "old")
    for args, status in [(["--set", "train.batch_size=100000"], 2), (["--set", "runtime.device=gpu"], 2),
                         (["--set", "train.learning_rate=10000"], 1)]:  # fmt: skip
        code, err = train(capsys, "--out", "old", "--overwrite", *TINY, *args)
        assert code == status, err
        assert folder_digest(in_tmp / "old") == before and sorted(p.name for p in in_tmp.iterdir()) == ["old"]
    assert "left as it was (the new run did not finish an epoch)" in err  # after the divergence
    assert train(capsys, "--out", "old", "--overwrite", "--set", "seed=3", *TINY)[0] == 0
    assert RunDir.open(in_tmp / "old").read_config().seed == 3 and sorted(p.name for p in in_tmp.iterdir()) == ["old"]


def test_running_out_of_memory_while_training_is_one_line_exit_1_and_leaves_nothing(in_tmp, capsys, monkeypatch):
    import tensorflow as tf

    from mnist_mlp import training

    def exhausted(*_args, **_kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [784,100000]")

    monkeypatch.setattr(training.Trainer, "run_steps", exhausted)
    status, err = train(capsys, *TINY)
    assert (
        status == 1
        and err.startswith("error: out of memory while training (OOM when allocating")
        and err.count("\n") == 1
    )
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").iterdir())


def test_resume_continues_a_finished_run_and_lets_only_train_epochs_and_the_device_change(in_tmp, capsys):
    assert train(capsys, "--out", "run", *TINY)[0] == 0
    status, err = train(capsys, "--resume", "run", "--set", "train.l1=0")
    assert status == 2 and "--set train.l1=0: only train.epochs and runtime.device can change when resuming" in err
    status, err = train(capsys, "--resume", "run")
    assert status == 2 and "already finished (1 epochs)" not in err and "add --set train.epochs=N with N > 1" in err
    assert train(capsys, "--resume", "run", "--set", "train.epochs=2", "--quiet")[0] == 0
    run = RunDir.open(in_tmp / "run")
    assert [row["epoch"] for row in run.read_history()] == [1, 2] and run.read_config().train.epochs == 2
    assert json.loads(run.metrics_file.read_text())["epochs"] == 2


def test_resume_refuses_more_epochs_under_the_cosine_schedule(tmp_path):
    """The cosine rate follows train.epochs: a continued run would not equal a straight one, so it is refused."""
    from mnist_mlp.cli import resumed_config

    cosine = Config().replace(**{"train.lr_schedule": "cosine", "train.epochs": 2})
    run = RunDir.create(tmp_path / "run", "t", config=cosine)
    asked = argparse.Namespace(set=["train.epochs=4"], data_dir=None)
    with pytest.raises(UserError, match="^--set train.epochs=4: the run uses train.lr_schedule=cosine"):
        resumed_config(run, asked)
    assert resumed_config(run, argparse.Namespace(set=["train.epochs=2"], data_dir=None)) == cosine
    step = RunDir.create(tmp_path / "step", "t", config=cosine.replace(**{"train.lr_schedule": "step"}))
    assert resumed_config(step, asked).train.epochs == 4


def test_default_run_names_that_are_taken_get_a_suffix(in_tmp, capsys, monkeypatch):
    from mnist_mlp import rundir

    monkeypatch.setattr(rundir.time, "strftime", lambda _format: "20260101-000000")
    for _ in range(2):
        assert train(capsys, *TINY)[0] == 0
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == [
        "20260101-000000-default",
        "20260101-000000-default-2",
    ]


def test_plot_evaluate_and_resume_use_the_recorded_data_and_refuse_other_data(in_tmp, capsys, monkeypatch, mnist_dir):
    assert train(capsys, "--out", "run", *TINY)[0] == 0  # MNIST named by the environment only
    run = RunDir.open(in_tmp / "run")
    config, metrics = run.read_config(), json.loads(run.metrics_file.read_text())
    assert config.data.dir == str(mnist_dir.absolute()) and len(config.data.digest) == 64
    assert metrics["data_digest"] == config.data.digest and metrics["data"] == f"IDX files in {config.data.dir}"
    monkeypatch.delenv(DATA_DIR_ENV)  # a new shell: the run still knows its data
    assert main(["evaluate", "run"]) == 0 and main(["plot", "run"]) == 0
    assert "skipped" not in capsys.readouterr().out

    moved = in_tmp / "moved"
    moved.symlink_to(mnist_dir.absolute())
    run.write_config(config.replace(**{"data.dir": str(in_tmp / "gone")}))  # the data folder was moved
    assert main(["evaluate", "run"]) == 2 and "gone: MNIST data folder not found" in capsys.readouterr().err
    assert main(["evaluate", "run", "--data-dir", "moved"]) == 0
    assert main(["plot", "run", "--data-dir", "moved"]) == 0 and "skipped" not in capsys.readouterr().out
    assert train(capsys, "--resume", "run", "--data-dir", "moved", "--set", "train.epochs=2")[0] == 0
    assert run.read_config().data.dir == str(moved)  # the folder actually used, recorded

    run.write_config(run.read_config().replace(**{"data.digest": "f" * 64}))  # other content than trained on
    before = folder_digest(run.path)
    for command in (["evaluate", "run"], ["train", "--resume", "run", "--set", "train.epochs=3"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not the data the run was trained on (content SHA-256" in err, err
    assert main(["plot", "run"]) == 0
    assert "skipped confusion_matrix.png and misclassified.png: " in capsys.readouterr().out
    assert {k: v for k, v in folder_digest(run.path).items() if not k.startswith("plots/")} == {
        k: v for k, v in before.items() if not k.startswith("plots/")
    }
