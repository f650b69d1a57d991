"""The report's pictures: loss, accuracy and per-digit error curves, confusion matrix, misclassified digits, summary;
and what the weights learned: the first layer's incoming weights, L1's sparsity, dead ReLU units.

Everything is drawn on the Agg canvas directly (no pyplot, no GUI backend, no global matplotlib state), so it
works headless and in any thread. The curves need only history.csv; the confusion matrix and the grid of
misclassified digits also need the test predictions, which a finished run keeps in its folder, and the
test images, which `mnist-mlp plot DIR` reloads through the run's config.yaml. The weight pictures read the
weights file the run writes after each epoch (NumPy, so no TensorFlow is needed to draw them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator, PercentFormatter

from mnist_mlp.config import Config, TrainConfig
from mnist_mlp.data import Split, load_mnist
from mnist_mlp.errors import UserError
from mnist_mlp.history import (
    BATCH_LOSS,
    DIGIT_ERROR_SPLITS,
    DIGITS,
    EPOCH,
    LEARNING_RATE,
    SECONDS,
    SPARSITY_THRESHOLD,
    accuracy_column,
    dead_units_column,
    digit_error_column,
    loss_column,
    numbered_columns,
    sparsity_column,
    splits_in,
)
from mnist_mlp.results import Weights, confusion_matrix
from mnist_mlp.rundir import RunDir, atomic_write_with
from mnist_mlp.write_errors import writing

PREDICTION_PLOTS = ("confusion_matrix.png", "misclassified.png")
WEIGHT_PLOTS = ("weights.png", "sparsity.png")  # need the weights file
DPI = 110
MIN_ACCURACY_SPAN = 1.0  # percentage points on an accuracy axis, so that its 0.1%-precision labels differ
TILE_GAP = 2  # pixels between the 28×28 tiles of weights.png
# One colour per split, the same in every figure.
COLOURS = {"train": "tab:blue", "validation": "tab:green", "test": "tab:orange", "batch": "tab:gray"}
REQUIRED_COLUMNS = (
    EPOCH,
    *(column(split) for column in (loss_column, accuracy_column) for split in ("train", "test")),
    *(digit_error_column(split, d) for split in DIGIT_ERROR_SPLITS for d in DIGITS),
)


@dataclass(frozen=True)
class Headline:
    """The run's figures as the report quotes them: those of the model of epoch `epoch`."""

    epoch: int
    test_accuracy: float
    mean_per_digit_error: float
    per_digit_error: np.ndarray  # test error of each digit

    @property
    def test_error(self) -> float:
        return 1.0 - self.test_accuracy

    @property
    def worst_digit(self) -> int:
        return int(np.argmax(self.per_digit_error))


@dataclass
class PlotReport:
    """What `plot_run` wrote, and which plots it could not draw and why ({plot file name: reason})."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# Entry points.


def plot_run(path: Path, data_dir: Path | None = None) -> PlotReport:
    """Redraw a run folder's plots from its history.csv (and, when they can be had, predictions and test
    images, loaded from where the run recorded or from `data_dir`)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run folder")
    if not run.history_file.is_file():
        raise UserError(f"{run.history_file}: not found; the run has not finished an epoch yet")
    history = run.read_history()
    check_history(history, where=str(run.history_file))
    config, test, predictions, weights, skipped = None, None, None, None, {}
    try:
        config = run.read_config() if run.config_file.is_file() else None
        if config is not None and data_dir is not None:
            config = config.replace(**{"data.dir": str(data_dir), "data.tfds_version": None})
        test, predictions = _reload_predictions(run, config)
    except UserError as exc:
        skipped |= dict.fromkeys(PREDICTION_PLOTS, str(exc))
    try:
        weights = Weights.from_arrays(run.read_weights(), where=str(run.weights_file))
    except UserError as exc:
        skipped |= dict.fromkeys(WEIGHT_PLOTS, str(exc))
    if weights is not None and not numbered_columns(history[0], sparsity_column):
        skipped["sparsity.png"] = f"{run.history_file}: no {sparsity_column(1)} column (an older run)"
    if not numbered_columns(history[0], dead_units_column):
        skipped["activations.png"] = f"{run.history_file}: no {dead_units_column(1)} column (an older run)"
    try:
        metrics = run.read_metrics()
    except UserError:
        metrics = {}
    try:
        written = write_plots(run, history, test, predictions, config, weights, metrics)
    except OSError as exc:
        raise UserError(f"{run.plots}: cannot write the plots ({exc.strerror or exc})") from None
    return PlotReport(written, skipped)


def write_plots(
    run: RunDir,
    history: list[dict],
    test: Split | None = None,
    predictions: np.ndarray | None = None,
    config: Config | None = None,
    weights: Weights | None = None,
    metrics: dict | None = None,
    mine: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Draw the curve plots from `history`, the prediction plots when `test` and `predictions` are given, and
    the weight plots when `weights` are (sparsity and dead units when the history has their columns).

    They go into the run's plots folder; the run folder's name titles every figure. `metrics` (the metrics
    file) gives the summary's headline figures: those of the exported model (the best epoch with early stopping).
    With `mine`, asked about each plot in turn, only the plots it claims (processes sharing the drawing).
    """
    check_history(history, where=str(run.history_file))
    folder, name = run.plots, run.path.resolve().name
    drawings: dict[str, Callable[[], Figure]] = {
        "loss.png": lambda: loss_figure(history, name),
        "accuracy.png": lambda: accuracy_figure(history, name),
        "per_digit_error.png": lambda: per_digit_error_figure(history, name),
    }
    if test is not None and predictions is not None:
        drawings["confusion_matrix.png"] = lambda: confusion_figure(test.labels, predictions, name)
        drawings["misclassified.png"] = lambda: misclassified_figure(test, predictions, name)
    if weights is not None:
        drawings["weights.png"] = lambda: weights_figure(weights, name)
        if numbered_columns(history[0], sparsity_column):
            drawings["sparsity.png"] = lambda: sparsity_figure(history, weights, name)
    if numbered_columns(history[0], dead_units_column):
        hidden = config.model.hidden if config is not None else None
        drawings["activations.png"] = lambda: activations_figure(history, name, hidden)
    drawings["summary.png"] = lambda: summary_figure(history, config, name, weights, metrics)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, draw in drawings.items():
        if mine is None or mine(filename):
            save_figure(draw(), folder / filename)
            written.append(folder / filename)
    return written


def save_figure(figure: Figure, path: Path) -> None:
    """Render to PNG; through atomic_write_with, so a crash never leaves half a picture."""
    atomic_write_with(path, lambda file: save_figure_to(figure, file))


def save_figure_to(figure: Figure, file) -> None:
    figure.savefig(file, dpi=DPI, format="png")


# History.


def check_history(history: list[dict], where: str) -> None:
    """The curves need at least one epoch and the standard columns."""
    if not history:
        raise UserError(f"{where}: holds no epochs")
    missing = [c for c in REQUIRED_COLUMNS if c not in history[0]]
    if missing:
        raise UserError(f"{where}: missing column {missing[0]} (not a mnist-mlp history)")


def column(history: list[dict], name: str) -> np.ndarray:
    return np.array([row[name] for row in history], dtype=float)


def per_digit_errors(history: list[dict], split: str) -> np.ndarray:
    """[epochs, 10]: the classification error of each digit per epoch on `split`."""
    return np.array([[row[digit_error_column(split, d)] for d in DIGITS] for row in history], dtype=float)


def headline(history: list[dict], metrics: dict | None = None) -> Headline:
    """The figures of the metrics file when given (the exported model's, averaged over the digits the test
    set holds), else those of history's last epoch."""
    if metrics and "per_digit_test_error" in metrics:
        errors = np.array(metrics["per_digit_test_error"], dtype=float)
        epoch = metrics.get("model_epoch", len(history))
        return Headline(epoch, metrics[accuracy_column("test")], metrics["mean_per_digit_test_error"], errors)
    errors = per_digit_errors(history, "test")[-1]
    return Headline(int(history[-1][EPOCH]), float(history[-1][accuracy_column("test")]), float(errors.mean()), errors)


# Figures.


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` × `height` inches without a layout engine: each figure places its axes with
    set_margins, as measuring every label (constrained layout) took most of the time to draw it."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)  # Agg, attached explicitly: no pyplot, no display
    return figure


def set_margins(
    figure: Figure, left: float, right: float, top: float, bottom: float, across: float = 0.0, down: float = 0.0
) -> None:
    """Place the figure's grid of axes: margins around it and gaps between its columns (`across`) and rows (`down`)
    in inches, so that the room for titles, labels and colour bars does not change with the figure's size."""
    width, height = figure.get_size_inches()
    rows, columns = figure.axes[0].get_gridspec().get_geometry()
    axes_width = (width - left - right - (columns - 1) * across) / columns
    axes_height = (height - top - bottom - (rows - 1) * down) / rows
    figure.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                           wspace=across / axes_width, hspace=down / axes_height)  # fmt: skip


def colour_bar(figure: Figure, image, ax, length: float, **options):
    """A colour bar beside `ax`'s image, `length` of its height and centred on it: placed in the axes' own
    coordinates, so it follows the image when a fixed aspect shrinks the axes to fit."""
    cax = ax.inset_axes([1.04, (1 - length) / 2, 0.04, length])
    return figure.colorbar(image, cax=cax, **options)


def epoch_axis(ax, history: list[dict]) -> None:
    """Whole-number epoch ticks on x, starting at the first epoch."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: one tick, not 0.5, 0.6, ...
    epochs = column(history, EPOCH)
    ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    ax.grid(True, alpha=0.3)


def draw_loss(ax, history: list[dict]) -> None:
    epochs = column(history, EPOCH)
    if BATCH_LOSS in history[0]:
        ax.plot(epochs, column(history, BATCH_LOSS), ":", color=COLOURS["batch"],
                label="train, mean mini-batch loss during the epoch")  # fmt: skip
    for split in splits_in(history[0]):
        ax.plot(epochs, column(history, loss_column(split)), "o-", ms=3, color=COLOURS[split], label=split)
    ax.set_ylabel("cross-entropy loss (nats per image)")
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()])
    values = values[np.isfinite(values)]
    if values.size and values.max() > 0:
        ax.set_ylim(0, 1.4 * values.max())  # room above the curves for the legend
    epoch_axis(ax, history)
    ax.legend(loc="upper right")


def draw_accuracy(ax, history: list[dict]) -> None:
    epochs = column(history, EPOCH)
    for split in splits_in(history[0]):
        values = 100 * column(history, accuracy_column(split))
        ax.plot(epochs, values, "o-", ms=3, color=COLOURS[split], label=f"{split} (last {values[-1]:.2f}%)")
    ax.set_ylabel("accuracy (% of images)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=1))
    low, high = ax.get_ylim()
    if high - low < MIN_ACCURACY_SPAN:  # e.g. one epoch: ticks closer than 0.1% would repeat their labels
        middle = (low + high) / 2
        ax.set_ylim(middle - MIN_ACCURACY_SPAN / 2, middle + MIN_ACCURACY_SPAN / 2)
    epoch_axis(ax, history)
    ax.legend(loc="lower right")


def curve_figure(draw: Callable, history: list[dict], title: str) -> Figure:
    """One panel drawn by `draw` (draw_loss, draw_accuracy), titled."""
    figure = new_figure(8, 5)
    ax = figure.subplots()
    set_margins(figure, left=0.95, right=0.15, top=0.35, bottom=0.5)
    draw(ax, history)
    ax.set_title(title)
    return figure


def loss_figure(history: list[dict], name: str) -> Figure:
    return curve_figure(draw_loss, history, f"Loss per epoch — {name}")


def accuracy_figure(history: list[dict], name: str) -> Figure:
    return curve_figure(draw_accuracy, history, f"Accuracy per epoch — {name}")


def per_digit_error_figure(history: list[dict], name: str) -> Figure:
    """Ten panels, one per digit, train and test error per epoch on one shared y scale."""
    figure = new_figure(16, 6.5)
    axes = figure.subplots(2, 5, sharex=True, sharey=True)
    set_margins(figure, left=0.95, right=0.15, top=0.65, bottom=0.5, across=0.15, down=0.35)
    epochs = column(history, EPOCH)
    errors = {split: 100 * per_digit_errors(history, split) for split in DIGIT_ERROR_SPLITS}
    for digit, ax in zip(DIGITS, axes.flat, strict=True):
        for split, values in errors.items():
            ax.plot(epochs, values[:, digit], "o-", ms=2.5, color=COLOURS[split], label=split)
        ax.set_title(f"Digit {digit} (test {errors['test'][-1, digit]:.2f}%)")
        epoch_axis(ax, history)
        ax.label_outer()
    for ax in axes[:, 0]:
        ax.set_ylabel("classification error (%)")
    axes[0, 0].set_ylim(bottom=0)
    axes[0, 0].yaxis.set_major_formatter(PercentFormatter(decimals=1))
    axes[0, 0].legend(loc="upper right")
    figure.suptitle(f"Classification error per digit (images of the digit classified as another) — {name}")
    return figure


def confusion_figure(labels: np.ndarray, predictions: np.ndarray, name: str) -> Figure:
    """Counts in the cells; colour is the share of the true digit's images (row-normalised)."""
    counts = confusion_matrix(labels, predictions)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = new_figure(8.5, 7.5)
    ax = figure.subplots()
    set_margins(figure, left=0.75, right=1.3, top=0.6, bottom=0.55)
    # A square-root colour scale: the 1-2 % confusions stay visible next to a ~98 % diagonal.
    image = ax.imshow(100 * shares, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0, vmax=100))
    for (true, predicted), count in np.ndenumerate(counts):
        if count:
            dark = shares[true, predicted] > 0.4
            ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(DIGITS)
    ax.set_yticks(DIGITS)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix, test set ({counts.sum():,} images, accuracy {accuracy:.2%})\n{name}")
    colourbar = colour_bar(figure, image, ax, length=0.85)
    colourbar.set_label("share of the true digit's test images (%)")
    return figure


def misclassified_figure(test: Split, predictions: np.ndarray, name: str, per_digit: int = 5) -> Figure:
    """Column d: the first `per_digit` test images of digit d that the model gets wrong, titled true → predicted.

    One mosaic image in one axes, each digit's caption above its cell: fifty axes would take seconds to draw.
    """
    wrong = np.flatnonzero(test.labels != predictions)
    cell, gap, caption = 28, 4, 12  # pixels: a digit, the space beside it, the caption's band above it
    height, width = cell + caption + gap, cell + gap
    mosaic = np.full((per_digit * height, 10 * width), np.nan)  # NaN: transparent, the figure's white
    figure = new_figure(13, 1.45 * per_digit + 1.2)
    ax = figure.subplots()
    set_margins(figure, left=0.1, right=0.1, top=0.45, bottom=0.1)
    ax.set_axis_off()
    for digit in DIGITS:
        examples = wrong[test.labels[wrong] == digit][:per_digit]
        for row, index in enumerate(examples):
            top, left = row * height + caption, digit * width
            mosaic[top : top + cell, left : left + cell] = test.images[index]
            ax.text(left + cell / 2, top - 2, f"{digit} → {predictions[index]}", ha="center", va="bottom", fontsize=10)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    figure.suptitle(
        f"Misclassified test digits, true → predicted: first {per_digit} of each digit "
        f"({len(wrong):,} wrong of {len(test):,}) — {name}"
    )
    return figure


def summary_figure(
    history: list[dict], config: Config | None, name: str, weights: Weights | None = None, metrics: dict | None = None
) -> Figure:
    """One page: loss and accuracy curves, the headline figures (`metrics`: those of the exported model),
    per-digit final errors, the first layer's weights (when given) and the learning rate."""
    figure = new_figure(16, 9)
    grid = figure.add_gridspec(2, 3)
    loss_ax, accuracy_ax, text_ax = (figure.add_subplot(grid[0, i]) for i in range(3))
    set_margins(figure, left=0.95, right=0.15, top=0.7, bottom=0.5, across=1.2, down=0.9)
    draw_loss(loss_ax, history)
    loss_ax.set_title("Loss per epoch")
    draw_accuracy(accuracy_ax, history)
    accuracy_ax.set_title("Accuracy per epoch")
    seconds = float(column(history, SECONDS).sum()) if SECONDS in history[0] else None
    figures = headline(history, metrics)
    draw_headline(text_ax, figures, len(history), config, seconds)
    if weights is None:
        draw_digit_bars(figure.add_subplot(grid[1, :2]), history, figures.epoch)
    else:
        draw_digit_bars(figure.add_subplot(grid[1, 0]), history, figures.epoch)
        mosaic_room = grid[1, 1].subgridspec(1, 2, width_ratios=[4, 1], wspace=0)[0]  # the rest: its colour bar
        weights_ax = figure.add_subplot(mosaic_room, anchor="E")
        image = draw_weights(weights_ax, weights.W[0], unit_ticks=False)
        weights_ax.set_title(f"Incoming weights of the {weights.W[0].shape[1]} first-layer units")
        colour_bar(figure, image, weights_ax, length=0.9, extend="both").set_label("weight")
    draw_learning_rate(figure.add_subplot(grid[1, 2]), history)
    figure.suptitle(f"Run summary — {name}", fontsize=15)
    return figure


def draw_learning_rate(ax, history: list[dict]) -> None:
    """The step-decay schedule, one flat step per epoch, each distinct rate labelled on a log axis."""
    if LEARNING_RATE in history[0]:
        rates = column(history, LEARNING_RATE)
        ax.plot(column(history, EPOCH), rates, "o-", ms=3, drawstyle="steps-mid", color="tab:purple")
        ax.set_yscale("log")
        levels = np.unique(rates[np.isfinite(rates) & (rates > 0)])
        if 0 < len(levels) <= 8:
            ax.set_yticks(levels, [f"{rate:g}" for rate in levels])
            ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("learning rate α (log scale)")
    ax.set_title("Learning-rate schedule")
    epoch_axis(ax, history)


def draw_digit_bars(ax, history: list[dict], epoch: int) -> None:
    """Train and test error of each digit after `epoch`."""
    digits = np.array(DIGITS)
    width = 0.4
    row = next((i for i, r in enumerate(history) if r[EPOCH] == epoch), -1)
    for offset, split in zip((-width / 2, width / 2), DIGIT_ERROR_SPLITS, strict=True):
        errors = 100 * per_digit_errors(history, split)[row]
        bars = ax.bar(digits + offset, errors, width, color=COLOURS[split], label=split)
        if split == "test":
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(digits)
    ax.set_xlabel("digit")
    ax.set_ylabel("classification error (%)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=1))
    ax.set_title(f"Per-digit classification error after epoch {epoch}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()


def draw_headline(ax, figures: Headline, epochs: int, config: Config | None, seconds: float | None) -> None:
    worst = figures.worst_digit
    lines = [
        f"test accuracy         {figures.test_accuracy:.2%}",
        f"test error            {figures.test_error:.2%}",
        f"mean per-digit error  {figures.mean_per_digit_error:.2%}",
        f"worst digit           {worst} ({figures.per_digit_error[worst]:.2%})",
        f"best digit            {int(np.argmin(figures.per_digit_error))} ({figures.per_digit_error.min():.2%})",
        f"epochs                {epochs}" + (f" (model of epoch {figures.epoch})" if figures.epoch != epochs else ""),
    ]
    if seconds is not None:
        lines.append(f"training time         {seconds:.1f} s")
    if config is not None:
        train = config.train
        momentum = f" (μ {train.momentum:g})" if train.optimizer in ("momentum", "nesterov") else ""
        lines += [
            "",
            f"network     784-{'-'.join(map(str, config.model.hidden))}-10 (init {config.model.init})",
            f"batch size  {train.batch_size}",
            f"optimizer   {train.optimizer}{momentum}",
            f"α schedule  {_schedule(train)}",
            f"L1 λ        {train.l1:g}" + (" (biases too)" if train.l1_biases else ""),
        ]
        if train.augment_shift:
            lines.append(f"shifts      up to {train.augment_shift} px in x and y")
    ax.set_axis_off()
    ax.set_title(f"Headline figures (test set, epoch {figures.epoch})")
    ax.text(0.02, 0.95, "\n".join(lines), family="monospace", fontsize=13, va="top", transform=ax.transAxes)


def _schedule(train: TrainConfig) -> str:
    if train.lr_schedule == "cosine":
        return f"{train.learning_rate:g}, cosine towards 0 over {train.epochs} epochs"
    return f"{train.learning_rate:g}, × {train.lr_decay:g} every {train.lr_decay_epochs} epochs"


# What the weights learned.


def weights_mosaic(W1: np.ndarray, gap: int = TILE_GAP) -> tuple[np.ndarray, int]:
    """The columns of W¹ [784, n] as 28×28 tiles, unit k at row k // c and column k % c of a grid c = ⌈√n⌉ wide,
    with NaN in the `gap` pixels between tiles; and c."""
    units = W1.shape[1]
    columns = math.ceil(math.sqrt(units))
    rows = math.ceil(units / columns)
    pitch = 28 + gap
    mosaic = np.full((rows * pitch - gap, columns * pitch - gap), np.nan)
    for unit in range(units):
        row, col = divmod(unit, columns)
        mosaic[row * pitch : row * pitch + 28, col * pitch : col * pitch + 28] = W1[:, unit].reshape(28, 28)
    return mosaic, columns


def symmetric_limit(values: np.ndarray, percentile: float = 99.5) -> float:
    """A colour scale's ±limit: the `percentile` of |values|, so that a few large weights do not wash out the rest."""
    limit = float(np.percentile(np.abs(values), percentile))
    return limit if limit > 0 else 1.0


def draw_weights(ax, W1: np.ndarray, unit_ticks: bool = True):
    """The mosaic of first-layer receptive fields on one diverging scale symmetric about 0 (red +, blue −)."""
    mosaic, columns = weights_mosaic(W1)
    limit = symmetric_limit(W1)
    colours = colormaps["RdBu_r"].with_extremes(bad="0.55")  # grey between the tiles, white = 0
    image = ax.imshow(mosaic, cmap=colours, vmin=-limit, vmax=limit, interpolation="nearest")
    if unit_ticks:  # unit number = row label + column label
        pitch = 28 + TILE_GAP
        ax.set_xticks(np.arange(columns) * pitch + 13.5, [str(c) for c in range(columns)])
        rows = math.ceil(W1.shape[1] / columns)
        ax.set_yticks(np.arange(rows) * pitch + 13.5, [str(r * columns) for r in range(rows)])
        ax.tick_params(length=0)
        ax.set_xlabel("unit number = row label + column label")
    else:
        ax.set_axis_off()
    return image


def weights_figure(weights: Weights, name: str) -> Figure:
    """weights.png: every first-layer unit's incoming weights as a 28×28 image, with the colour scale."""
    W1 = weights.W[0]
    figure = new_figure(10.5, 9.5)
    ax = figure.subplots()
    set_margins(figure, left=0.5, right=1.6, top=0.6, bottom=0.5)
    image = draw_weights(ax, W1)
    colourbar = colour_bar(figure, image, ax, length=0.8, extend="both")
    colourbar.set_label(f"weight (scale clipped at ±{symmetric_limit(W1):.3g}, the 99.5th percentile of |w|)")
    ax.set_title(
        f"Incoming weights of the {W1.shape[1]} first-layer units, each as the 28×28 image it responds to\n"
        f"red: ink on that pixel excites the unit, blue: ink there inhibits it — {name}"
    )
    return figure


def layer_label(weights: Weights, layer: int) -> str:
    n_in, n_out = weights.W[layer - 1].shape
    return f"layer {layer} ({n_in}×{n_out})"


def sparsity_figure(history: list[dict], weights: Weights, name: str) -> Figure:
    """What L1 did: the share of near-zero weights per layer per epoch, and the final weights' distribution."""
    figure = new_figure(17, 5.5)
    share_ax, histogram_ax, magnitude_ax = figure.subplots(1, 3)
    set_margins(figure, left=0.95, right=0.15, top=0.65, bottom=0.5, across=0.95)
    epochs = column(history, EPOCH)
    layers = range(1, len(weights.W) + 1)
    for layer, sparsity in zip(layers, numbered_columns(history[0], sparsity_column), strict=False):
        values = 100 * column(history, sparsity)
        label = f"{layer_label(weights, layer)}: {values[-1]:.1f}%"
        share_ax.plot(epochs, values, "o-", ms=3, label=label)
    share_ax.set_ylabel(f"weights with |w| < {SPARSITY_THRESHOLD:g} (%)")
    share_ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    share_ax.set_ylim(bottom=0)
    epoch_axis(share_ax, history)
    share_ax.legend(loc="best")
    share_ax.set_title(f"Share of weights near zero (|w| < {SPARSITY_THRESHOLD:g})")

    largest = max(float(np.abs(w).max()) for w in weights.W) or 1.0
    bins = np.linspace(-largest, largest, 121)
    smallest = SPARSITY_THRESHOLD / 1e4
    magnitude_bins = np.logspace(np.log10(smallest), np.log10(max(largest, 10 * SPARSITY_THRESHOLD)), 91)
    for layer in layers:
        w, label = weights.W[layer - 1].ravel(), layer_label(weights, layer)
        histogram_ax.stairs(np.histogram(w, bins)[0], bins, linewidth=1.3, label=label)
        magnitudes = np.clip(np.abs(w), smallest, None)
        magnitude_ax.stairs(np.histogram(magnitudes, magnitude_bins)[0], magnitude_bins, linewidth=1.3, label=label)
    histogram_ax.set_xlabel("weight w")
    histogram_ax.set_title(f"Final weights (epoch {int(epochs[-1])})")
    histogram_ax.legend(loc="upper right")
    magnitude_ax.set_xscale("log")
    plain_log_axis(magnitude_ax.xaxis)
    magnitude_ax.axvline(SPARSITY_THRESHOLD, color="black", linestyle="--", linewidth=1)
    magnitude_ax.text(SPARSITY_THRESHOLD, 0.97, f" threshold {SPARSITY_THRESHOLD:g}", va="top",
                      transform=magnitude_ax.get_xaxis_transform())  # fmt: skip
    magnitude_ax.set_xlabel(f"|w| (log scale; below {smallest:g} counted in the first bin)")
    magnitude_ax.set_title("Final weight magnitudes")
    magnitude_ax.legend(loc="upper left")
    for ax in (histogram_ax, magnitude_ax):
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_ylim(0.7, 10 * ax.get_ylim()[1])  # log headroom: the legend stays clear of the peaks
        ax.set_ylabel("number of weights (log scale)")
        ax.grid(True, alpha=0.3)
    figure.suptitle(f"What L1 regularization did to the weights (biases not counted) — {name}")
    return figure


def plain_log_axis(axis) -> None:
    """A log axis labelled 1e-06 … 0.1, 1, 10, … at the decades only: readable, and far cheaper to draw than
    matplotlib's default minor ticks and math-text labels."""
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def activations_figure(history: list[dict], name: str, hidden: list[int] | None = None) -> Figure:
    """The share of each hidden layer's ReLU units that output 0 on every test image, per epoch; with the layer
    sizes (`hidden`), the legend also counts them."""
    figure = new_figure(8, 5)
    ax = figure.subplots()
    set_margins(figure, left=0.95, right=0.15, top=0.35, bottom=0.5)
    epochs = column(history, EPOCH)
    styles = ("o-", "s--", "^:", "D-.")  # distinct, as the layers' lines often lie on top of each other at 0 %
    for layer, dead in enumerate(numbered_columns(history[0], dead_units_column), 1):
        values = 100 * column(history, dead)
        last = f"{values[-1]:.1f}%"
        if hidden and layer <= len(hidden):
            last = f"{round(values[-1] / 100 * hidden[layer - 1])} of {hidden[layer - 1]} units, {last}"
        ax.plot(epochs, values, styles[(layer - 1) % len(styles)], ms=4, label=f"hidden layer {layer}: {last} dead")
    ax.set_ylabel("dead units (% of the layer)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    top = max(10.0, 1.3 * max(float(np.nanmax(line.get_ydata())) for line in ax.get_lines()))
    ax.set_ylim(-0.02 * top, top)  # a line at 0 % shows above the axis; the legend has room at the top
    epoch_axis(ax, history)
    ax.legend(loc="upper right", title="after the last epoch")
    ax.set_title(f"Dead ReLU units: 0 on every test image — {name}")
    return figure


# Predictions for `mnist-mlp plot`.


def _reload_predictions(run: RunDir, config: Config | None) -> tuple[Split, np.ndarray]:
    """The run's test images (reloaded per its config) and saved predictions; UserError says why not."""
    path = run.test_predictions_file
    if not path.is_file():
        raise UserError(f"{path}: not found (written when a run finishes)")
    if config is None:
        raise UserError(f"{run.config_file}: not found, so the test images cannot be reloaded")
    try:
        predictions = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UserError(f"{path}: not a readable .npy file") from None
    if (
        predictions.ndim != 1
        or not np.issubdtype(predictions.dtype, np.integer)
        or not np.all((predictions >= 0) & (predictions <= 9))
    ):
        raise UserError(f"{path}: expected one predicted digit 0-9 per test image")
    test = load_mnist(config.data).test
    if len(predictions) != len(test):
        raise UserError(f"{path}: holds {len(predictions)} predictions, the run's test set has {len(test)} images")
    return test, predictions
