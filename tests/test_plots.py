"""The run's pictures: nine valid PNGs after a run, redrawn by `mnist-mlp plot` without training or TensorFlow;
per-digit errors; what the weights learned (sparsity and dead units in the history, the weights file)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mnist_mlp import plots, training
from mnist_mlp.cli import main
from mnist_mlp.config import Config
from mnist_mlp.errors import UserError
from mnist_mlp.plots import PREDICTION_PLOTS, WEIGHT_PLOTS, plot_run, weights_mosaic
from mnist_mlp.results import Evaluation, Weights, confusion_matrix
from mnist_mlp.run import epoch_row, train_and_evaluate
from mnist_mlp.rundir import PREDICTIONS_FILE, WEIGHTS_FILE, RunDir
from mnist_mlp.training import EpochProgress
from tests.conftest import ALL_PLOTS, child_env, synthetic_mnist

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


def test_a_finished_run_leaves_nine_valid_pngs_and_its_test_predictions(finished_run):
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
    weights = Weights((np.zeros((784, 3)), np.ones((3, 10))), (np.zeros((3, 1)), np.zeros((10, 1))))
    row = epoch_row(1, 0.1, EpochProgress(1, 10, 5.0, 1.0), {"train": evaluation, "test": evaluation}, weights)
    for digit in range(10):
        direct = np.count_nonzero((labels == digit) & (predicted != digit)) / np.count_nonzero(labels == digit)
        assert row[f"test_error_{digit}"] == pytest.approx(direct, abs=1e-12) == expected[digit]
        assert row[f"train_error_{digit}"] == row[f"test_error_{digit}"]
    assert row["test_accuracy"] == pytest.approx(np.mean(labels == predicted))
    assert row["sparsity_1"] == 1.0 and row["sparsity_2"] == 0.0 and "sparsity_3" not in row
    assert "dead_units_1" not in row  # this evaluation recorded no hidden units


def test_history_records_sparsity_per_weight_layer_and_dead_units_per_hidden_layer(finished_run):
    """Three weight layers (784-16-12-10), two hidden: fractions in [0, 1]; the last epoch's sparsity is a direct
    count over the weights file, which holds the final weights."""
    run, result, _ = finished_run
    history = run.read_history()
    for row in history:
        fractions = [row[f"sparsity_{layer}"] for layer in (1, 2, 3)] + [row[f"dead_units_{h}"] for h in (1, 2)]
        assert all(0.0 <= f <= 1.0 for f in fractions), fractions
        assert "sparsity_4" not in row and "dead_units_3" not in row
    saved = Weights.from_arrays(run.read_weights(), where="test")
    for layer, (w, trained) in enumerate(zip(saved.W, result.model.W, strict=True), 1):
        np.testing.assert_array_equal(w, trained.numpy())
        assert history[-1][f"sparsity_{layer}"] == np.count_nonzero(np.abs(w) < 1e-3) / w.size
    dead = [1 - np.mean(active) for active in result.final["test"].active]
    assert [history[-1]["dead_units_1"], history[-1]["dead_units_2"]] == pytest.approx(dead, abs=1e-12)


def test_l1_makes_weights_sparser_than_no_l1(tmp_path):
    """The same short run with λ = 1e-3 and λ = 0: L1 leaves a larger share of near-zero weights in every layer,
    many times more in the first (whose 784 inputs include many pixels that carry little signal)."""
    mnist = synthetic_mnist(n_train=400, n_test=60)
    base = Config().replace(**{"model.hidden": [16, 12], "train.epochs": 4, "train.batch_size": 20})
    base = base.replace(**{"train.learning_rate": 0.1, "train.steps_per_call": 20, "runtime.device": "cpu"})
    sparsity = {}
    for l1 in (0.0, 1e-3):
        run = RunDir.create(tmp_path / f"l1-{l1}", "t")
        last = train_and_evaluate(base.replace(**{"train.l1": l1}), run, mnist=mnist).history[-1]
        sparsity[l1] = [last[f"sparsity_{layer}"] for layer in (1, 2, 3)]
    assert all(with_l1 > without for with_l1, without in zip(sparsity[1e-3], sparsity[0.0], strict=True)), sparsity
    assert sparsity[1e-3][0] > 5 * sparsity[0.0][0], sparsity  # measured: 12.7 % against 1.4 %


def test_weights_mosaic_puts_unit_k_at_row_k_div_c_and_column_k_mod_c():
    W1 = np.random.default_rng(0).normal(size=(784, 10))
    mosaic, columns = weights_mosaic(W1, gap=2)
    assert columns == 4 and mosaic.shape == (3 * 30 - 2, 4 * 30 - 2)
    for unit in range(10):
        row, col = divmod(unit, columns)
        np.testing.assert_array_equal(mosaic[row * 30 : row * 30 + 28, col * 30 : col * 30 + 28],
                                      W1[:, unit].reshape(28, 28))  # fmt: skip
    assert np.isnan(mosaic[28:30]).all() and np.isnan(mosaic[-28:, -28:]).all()  # gaps, and no unit 11


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
    assert sorted(p.name for p in report.written) == sorted(set(ALL_PLOTS) - set(PREDICTION_PLOTS + WEIGHT_PLOTS))
    assert sorted(report.skipped) == sorted(PREDICTION_PLOTS + WEIGHT_PLOTS)
    assert all(PREDICTIONS_FILE in report.skipped[name] for name in PREDICTION_PLOTS)
    assert all(f"{WEIGHTS_FILE}: not found" in report.skipped[name] for name in WEIGHT_PLOTS)
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
    assert set(PREDICTION_PLOTS) <= set(report.skipped) and "holds 7 predictions" in report.skipped[PREDICTION_PLOTS[0]]
    (copy.path / PREDICTIONS_FILE).write_bytes(b"not numpy")
    assert "not a readable .npy" in plot_run(copy.path).skipped[PREDICTION_PLOTS[0]]


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        (None, "not a readable .npz"),
        ({"W1": np.zeros((784, 5))}, "no array 'W0_1'"),
        ({"W1": np.zeros((784, 5)), "W0_1": np.zeros((5, 1)), "W2": np.zeros((6, 10)), "W0_2": np.zeros((10, 1))},
         "not the layers of a network"),
    ],
)  # fmt: skip
def test_plot_skips_the_weight_plots_for_a_weights_file_it_cannot_use(finished_run, tmp_path, arrays, says):
    run, _, _ = finished_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "history.csv").write_text(run.history_file.read_text())
    if arrays is None:
        (copy / WEIGHTS_FILE).write_bytes(b"not numpy")
    else:
        np.savez(copy / WEIGHTS_FILE, **arrays)
    report = plot_run(copy)
    assert all(says in report.skipped[name] for name in WEIGHT_PLOTS), report.skipped
    assert "activations.png" in [p.name for p in report.written]  # drawn from the history alone


def test_the_plot_code_needs_no_tensorflow(finished_run):
    """Redraw all nine in a fresh interpreter and check TensorFlow and the training code were never imported."""
    run, _, _ = finished_run
    script = textwrap.dedent(f"""
        import sys
        from mnist_mlp import plots
        from tests.conftest import synthetic_mnist
        plots.load_mnist = lambda data_config: synthetic_mnist(n_train=200, n_test=120, n_validation=40)
        report = plots.plot_run({str(run.path)!r})
        assert not report.skipped, report.skipped
        loaded = [m for m in ("tensorflow", "mnist_mlp.training", "mnist_mlp.run") if m in sys.modules]
        assert not loaded, loaded
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=child_env())
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
    """Real MNIST through the command line: the nine PNGs, and test_error_d recomputed from the predictions."""
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


def every_axes(figure) -> list:
    """The figure's axes and the axes placed inside them (colour bars)."""
    return [*figure.axes, *(child for ax in figure.axes for child in ax.child_axes)]


def drawn_texts(figure) -> list[tuple[object, object]]:
    """(owner, box in pixels) of every non-empty text a drawn figure shows: the figure's own (the suptitle), and each
    axes' title, texts placed in it and, when its axes are on, axis labels and the tick labels inside its view."""
    found = [(figure, text) for text in figure.texts]
    for ax in every_axes(figure):
        texts = [ax.title, *ax.texts]
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                low, high = sorted(axis.get_view_interval())
                ticks = [tick for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high]
                texts += [axis.label, *(label for tick in ticks for label in (tick.label1, tick.label2))]
        found += [(ax, text) for text in texts]
    shown = [(owner, text) for owner, text in found if text.get_visible() and text.get_text()]
    return [(owner, text.get_window_extent(figure.canvas.get_renderer())) for owner, text in shown]


def assert_clear_layout(figure) -> None:
    """Every text inside the figure, and clear of other axes and of their texts (a colour bar's label running into
    the next panel's y label, a title under the suptitle)."""
    figure.canvas.draw()
    width, height = figure.canvas.get_width_height()
    texts = drawn_texts(figure)
    frames = [(ax, ax.get_window_extent(figure.canvas.get_renderer())) for ax in every_axes(figure)]
    for owner, box in texts:
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, (owner, box)
        for ax, frame in frames:
            assert ax is owner or not box.shrunk(0.98, 0.9).overlaps(frame), (owner, box, ax)
    for (owner, box), (other, other_box) in itertools.combinations(texts, 2):
        assert owner is other or not box.shrunk(0.98, 0.9).overlaps(other_box), (owner, box, other, other_box)


@pytest.mark.parametrize("plot", ALL_PLOTS)
def test_every_label_stays_inside_its_figure_and_clear_of_the_other_panels(finished_run, plot, monkeypatch, tmp_path):
    _, result, mnist = finished_run
    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.setdefault(path.name, figure))
    run = RunDir.create(tmp_path / "run", "t")
    predictions, weights = result.final["test"].predictions, Weights.of(result.model)
    plots.write_plots(run, result.history, mnist.test, predictions, result.config, weights, result.metrics,
                      mine=lambda name: name == plot)  # fmt: skip
    assert list(drawn) == [plot]
    assert_clear_layout(drawn[plot])


@pytest.mark.parametrize("units", [1, 10, 300])
def test_the_weight_pictures_keep_their_colour_bar_clear_at_any_layer_width(finished_run, units):
    """The mosaic's shape follows the number of units (1×1, 4×3, 18×17 tiles); the colour bar follows the mosaic."""
    _, result, _ = finished_run
    rng = np.random.default_rng(0)
    weights = Weights((rng.normal(size=(784, units)), rng.normal(size=(units, 10))),
                      (np.zeros((units, 1)), np.zeros((10, 1))))  # fmt: skip
    assert_clear_layout(plots.weights_figure(weights, "widths"))
    assert_clear_layout(plots.summary_figure(result.history, result.config, "widths", weights, result.metrics))


def visible_ticks(axis, low: float, high: float) -> list[str]:
    return [t.get_text() for t, value in zip(axis.get_ticklabels(), axis.get_ticklocs(), strict=True)
            if low <= value <= high]  # fmt: skip


def test_a_one_epoch_summary_has_whole_epoch_ticks_and_distinct_accuracy_labels():
    from mnist_mlp.plots import summary_figure

    row = {"epoch": 1, "learning_rate": 0.4, "seconds": 1.0, "batch_loss": 0.3, "train_loss": 0.12,
           "train_accuracy": 0.9641, "test_loss": 0.13, "test_accuracy": 0.9637}  # fmt: skip
    row |= {f"{split}_error_{d}": 0.03 for split in ("train", "test") for d in range(10)}
    figure = summary_figure([row], None, "one epoch")
    figure.canvas.draw()
    curves = [ax for ax in figure.axes if ax.get_xlabel() == "epoch"]
    assert len(curves) == 3  # loss, accuracy, learning rate
    for ax in curves:
        assert visible_ticks(ax.xaxis, *ax.get_xlim()) == ["1"]
    accuracy = next(ax for ax in figure.axes if ax.get_title() == "Accuracy per epoch")
    labels = visible_ticks(accuracy.yaxis, *accuracy.get_ylim())
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels


def test_the_summary_quotes_metrics_json_when_given():
    from mnist_mlp.plots import headline

    rows = [{"epoch": e, "test_accuracy": 0.9 + e / 100, **{f"test_error_{d}": 0.1 for d in range(10)}} for e in (1, 2)]
    metrics = {"test_accuracy": 0.91, "mean_per_digit_test_error": 0.2, "per_digit_test_error": [0.2] * 3 + [0.0] * 7,
               "model_epoch": 1}  # fmt: skip
    figures = headline(rows, metrics)
    assert (figures.epoch, figures.test_accuracy, figures.mean_per_digit_error) == (1, 0.91, 0.2)
    assert headline(rows).epoch == 2 and headline(rows).test_accuracy == 0.92


def test_the_summary_page_names_the_schedule_it_ran():
    step = Config().train
    cosine = Config().replace(**{"train.lr_schedule": "cosine", "train.epochs": 40, "train.learning_rate": 0.001}).train
    assert plots._schedule(step) == "0.4, × 0.5 every 3 epochs"
    assert plots._schedule(cosine) == "0.001, cosine towards 0 over 40 epochs"
