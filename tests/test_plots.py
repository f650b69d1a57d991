"""The run's pictures: six valid PNGs after a run, redrawn by `mnist-mlp plot` without training, per-digit errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlp import plots, training
from mnist_mlp.cli import main
from mnist_mlp.config import Config
from mnist_mlp.errors import UserError
from mnist_mlp.plots import PREDICTION_PLOTS, PlotWriter, plot_run
from mnist_mlp.results import Evaluation, confusion_matrix
from mnist_mlp.run import epoch_row, train_and_evaluate
from mnist_mlp.rundir import PREDICTIONS_FILE, RunDir
from mnist_mlp.training import EpochProgress
from tests.conftest import synthetic_mnist

ALL_PLOTS = ["loss.png", "accuracy.png", "per_digit_error.png", "confusion_matrix.png", "misclassified.png",
             "summary.png"]  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_sensible_png(path) -> None:
    """A complete PNG, between a small plot and a poster in size, with something drawn on it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        grey = np.asarray(image.convert("L"))
    assert 600 <= width <= 2400 and 400 <= height <= 1600, (path.name, image.size)
    assert 10_000 < path.stat().st_size < 2_000_000, (path.name, path.stat().st_size)
    inked = (grey < 200).mean()  # share of pixels that are not (near) white background
    assert 0.005 < inked < 0.6, (path.name, inked)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny 3-epoch run on synthetic data with a validation split, plotted by the PlotWriter listener."""
    mnist = synthetic_mnist(n_train=200, n_test=120, n_validation=40)
    config = Config().replace(
        **{"model.hidden": [16, 12], "train.epochs": 3, "train.batch_size": 20, "train.steps_per_call": 3}
    )
    run = RunDir.create(tmp_path_factory.mktemp("plots") / "run", "t")
    result = train_and_evaluate(config.replace(**{"runtime.device": "cpu"}), run, [PlotWriter()], mnist=mnist)
    return run, result, mnist


def test_a_finished_run_leaves_six_valid_pngs_and_its_test_predictions(finished_run):
    run, result, mnist = finished_run
    assert sorted(p.name for p in run.plots.iterdir()) == sorted(ALL_PLOTS)
    for name in ALL_PLOTS:
        assert_sensible_png(run.plots / name)
    saved = np.load(run.path / PREDICTIONS_FILE)
    assert saved.dtype == np.uint8 and np.array_equal(saved, result.final["test"].predictions)
    assert len(saved) == len(mnist.test)


def test_history_per_digit_errors_equal_a_count_from_the_saved_predictions(finished_run):
    run, _, mnist = finished_run
    predictions = np.load(run.path / PREDICTIONS_FILE)
    last = run.read_history()[-1]
    for digit in range(10):
        mine = mnist.test.labels == digit
        expected = np.count_nonzero(predictions[mine] != digit) / np.count_nonzero(mine)
        assert last[f"test_error_{digit}"] == pytest.approx(expected, abs=1e-12)


def test_per_digit_error_in_a_history_row_is_the_share_of_each_digit_misclassified():
    """A fixed small set: digit d has d + 1 images and the first d % 3 of them are predicted wrong."""
    labels, predicted, expected = [], [], {}
    for digit in range(10):
        wrong = digit % 3
        labels += [digit] * (digit + 1)
        predicted += [(digit + 1) % 10] * wrong + [digit] * (digit + 1 - wrong)
        expected[digit] = wrong / (digit + 1)
    labels, predicted = np.array(labels, dtype=np.uint8), np.array(predicted, dtype=np.uint8)
    evaluation = Evaluation(0.5, predicted, confusion_matrix(labels, predicted))
    row = epoch_row(1, 0.1, EpochProgress(1, 10, 5.0, 1.0), {"train": evaluation, "test": evaluation})
    for digit in range(10):
        direct = np.count_nonzero((labels == digit) & (predicted != digit)) / np.count_nonzero(labels == digit)
        assert row[f"test_error_{digit}"] == pytest.approx(direct, abs=1e-12) == expected[digit]
        assert row[f"train_error_{digit}"] == row[f"test_error_{digit}"]
    assert row["test_accuracy"] == pytest.approx(np.mean(labels == predicted))


def test_plot_redraws_every_plot_from_the_run_folder_without_training(finished_run, monkeypatch, capsys):
    run, _, mnist = finished_run
    for png in run.plots.iterdir():
        png.unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("mnist-mlp plot must not train")

    monkeypatch.setattr(training.Trainer, "__init__", no_training)
    monkeypatch.setattr(plots, "load_mnist", lambda data_config: mnist)  # the test images, as config.yaml says
    assert main(["plot", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "skipped" not in out and all(name in out for name in ALL_PLOTS)
    for name in ALL_PLOTS:
        assert_sensible_png(run.plots / name)


def test_plot_from_history_alone_draws_the_curves_and_names_what_it_skipped(finished_run, tmp_path):
    run, _, _ = finished_run
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "history.csv").write_text(run.history_file.read_text())
    report = plot_run(alone)
    assert sorted(p.name for p in report.written) == sorted(set(ALL_PLOTS) - set(PREDICTION_PLOTS))
    assert report.skipped == PREDICTION_PLOTS and PREDICTIONS_FILE in report.reason
    for path in report.written:
        assert_sensible_png(path)


def test_plot_skips_predictions_that_do_not_fit_the_test_set(finished_run, tmp_path, monkeypatch):
    run, _, mnist = finished_run
    copy = RunDir.create(tmp_path / "copy", "t")
    for name in ("config.yaml", "history.csv"):
        (copy.path / name).write_text((run.path / name).read_text())
    np.save(copy.path / PREDICTIONS_FILE, np.zeros(7, dtype=np.uint8))
    monkeypatch.setattr(plots, "load_mnist", lambda data_config: mnist)
    report = plot_run(copy.path)
    assert report.skipped == PREDICTION_PLOTS and "holds 7 predictions" in report.reason
    (copy.path / PREDICTIONS_FILE).write_bytes(b"not numpy")
    assert "not a readable .npy" in plot_run(copy.path).reason


def test_the_plot_code_needs_no_tensorflow(finished_run):
    """Redraw all six in a fresh interpreter and check TensorFlow and the training code were never imported."""
    run, _, _ = finished_run
    script = textwrap.dedent(f"""
        import sys
        from mnist_mlp import plots
        from tests.conftest import synthetic_mnist
        plots.load_mnist = lambda data_config: synthetic_mnist(n_train=200, n_test=120, n_validation=40)
        report = plots.plot_run({str(run.path)!r})
        assert not report.skipped, report.reason
        loaded = [m for m in ("tensorflow", "mnist_mlp.training", "mnist_mlp.run") if m in sys.modules]
        assert not loaded, loaded
    """)
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=repo)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("history", "says"),
    [
        (None, "history.csv: not found"),
        ("epoch,train_loss\n", "holds no epochs"),
        ("epoch,train_loss\n1,0.5\n", "missing column test_loss"),
        ("epoch,train_loss\n1,lots\n", "malformed"),
    ],
)
def test_plot_refuses_a_folder_without_a_usable_history_in_one_line(tmp_path, capsys, history, says):
    if history is not None:
        (tmp_path / "history.csv").write_text(history)
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err
    assert not (tmp_path / "plots").exists()


def test_plot_refuses_a_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no such run folder"):
        plot_run(tmp_path / "nowhere")


@pytest.mark.slow
def test_a_real_short_run_keeps_history_errors_equal_to_its_predictions(tmp_path, mnist_dir):
    """Real MNIST through the command line: the six PNGs, and test_error_d recomputed from the predictions."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet", "--set", f"data.dir={mnist_dir}", "--set", "train.epochs=1",
            "--set", "data.train_limit=5000", "--set", "data.test_limit=2000"]  # fmt: skip
    assert main(args) == 0
    run = RunDir.open(out)
    for name in ALL_PLOTS:
        assert_sensible_png(run.plots / name)
    predictions = np.load(out / PREDICTIONS_FILE)
    labels = plots.load_mnist(run.read_config().data).test.labels
    assert len(predictions) == len(labels) == 2000
    last = run.read_history()[-1]
    for digit in range(10):
        mine = labels == digit
        assert last[f"test_error_{digit}"] == pytest.approx(np.mean(predictions[mine] != digit), abs=1e-12)
    assert last["test_accuracy"] == pytest.approx(np.mean(predictions == labels), abs=1e-12)


def test_the_summary_page_names_the_schedule_it_ran():
    step = Config().train
    cosine = Config().replace(**{"train.lr_schedule": "cosine", "train.epochs": 40, "train.learning_rate": 0.001}).train
    assert plots._schedule(step) == "0.4, × 0.5 every 3 epochs"
    assert plots._schedule(cosine) == "0.001, cosine towards 0 over 40 epochs"
