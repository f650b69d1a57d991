"""TensorBoard logs of a run: per-epoch scalars written with tf.summary into DIR/tb/.

One writer per split (DIR/tb/train, DIR/tb/validation, DIR/tb/test) with the same tags, so TensorBoard draws
train and test on one chart: loss, accuracy and per_digit_error/digit_0 … digit_9, as in the report's plots.
The learning rate, the mean mini-batch loss and the epoch's training time go to the train writer, and so do
the histograms of each layer's weights and biases (weights/layer_1, biases/layer_1, ...), which show L1 at work.
`tensorboard --logdir runs` shows every run under runs/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram.metadata import create_summary_metadata

from mnist_mlp.history import (
    BATCH_LOSS,
    DIGITS,
    EPOCH,
    LEARNING_RATE,
    SECONDS,
    accuracy_column,
    digit_error_column,
    loss_column,
    splits_in,
)
from mnist_mlp.results import Listener, RunResult, Weights
from mnist_mlp.write_errors import writing

HISTOGRAM_METADATA = create_summary_metadata(display_name=None, description=None)  # marks a record as a histogram

if TYPE_CHECKING:
    from mnist_mlp.data import Mnist
    from mnist_mlp.rundir import RunDir


def epoch_scalars(row: dict, present: dict[str, set[int]] | None = None) -> dict[str, dict[str, float]]:
    """A history.csv row as {split: {tag: value}}: the scalars TensorBoard shows for that epoch.

    present: the digits each split holds (a sliced set may lack some, whose error is recorded as 0); the mean
    per-digit error averages those only, as metrics.json does. None: all ten.
    """
    scalars: dict[str, dict[str, float]] = {}
    for split in splits_in(row):
        tags = {"loss": row[loss_column(split)], "accuracy": row[accuracy_column(split)]}
        digit_errors = [row[digit_error_column(split, d)] for d in DIGITS if digit_error_column(split, d) in row]
        if digit_errors:
            tags |= {f"per_digit_error/digit_{d}": error for d, error in enumerate(digit_errors)}
            held = [e for d, e in enumerate(digit_errors) if present is None or d in present.get(split, DIGITS)]
            tags["per_digit_error/mean"] = sum(held) / len(held) if held else 0.0
        scalars[split] = tags
    scalars["train"] |= {
        "learning_rate": row[LEARNING_RATE],
        "loss_mini_batch_mean": row[BATCH_LOSS],
        "epoch_seconds": row[SECONDS],
    }
    return scalars


def digits_present(mnist: Mnist) -> dict[str, set[int]]:
    """The digits each split of `mnist` holds: epoch_scalars' `present`."""
    splits = {"train": mnist.train, "validation": mnist.validation, "test": mnist.test}
    return {name: {int(d) for d in np.unique(s.labels)} for name, s in splits.items() if s is not None}


def histogram_buckets(values: np.ndarray, buckets: int = 30) -> np.ndarray:
    """[buckets, 3] rows of (left edge, right edge, count) over equal-width buckets from min to max: TensorBoard's
    histogram format, as tf.summary.histogram makes it."""
    counts, edges = np.histogram(values, bins=buckets)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def write_histogram(tag: str, values: np.ndarray) -> None:
    """tf.summary.histogram's record with the buckets counted by NumPy: TensorFlow's own op one-hot encodes every
    value (a 78400 × 30 matrix for W¹) and takes about 50 ms a layer, NumPy about 1 ms."""
    tf.summary.write(tag, tf.constant(histogram_buckets(values), tf.float64), metadata=HISTOGRAM_METADATA)


class TensorBoardWriter(Listener):
    """Writes each epoch's scalars (step = epoch) and flushes, so a live TensorBoard follows the run."""

    def __init__(self, run: RunDir, present: dict[str, set[int]] | None = None):
        self.run = run  # its tb/ is looked up when the first epoch is written: a replacement run moves once
        self.present = present  # digits_present(mnist): what per_digit_error/mean averages over
        self.writers: dict[str, tf.summary.SummaryWriter] = {}

    def on_epoch(self, row: dict) -> None:
        with writing(self.run.tensorboard):  # a full disk says so (TensorFlow: ResourceExhaustedError)
            for split, tags in epoch_scalars(row, self.present).items():
                writer = self._writer(split)
                with writer.as_default(step=int(row[EPOCH])):
                    for tag, value in tags.items():
                        tf.summary.scalar(tag, float(value))
                writer.flush()

    def on_weights(self, epoch: int, weights: Weights) -> None:
        with writing(self.run.tensorboard):
            writer = self._writer("train")
            with writer.as_default(step=epoch):
                for layer, (w, w0) in enumerate(zip(weights.W, weights.W0, strict=True), 1):
                    write_histogram(f"weights/layer_{layer}", w)
                    write_histogram(f"biases/layer_{layer}", w0)
            writer.flush()

    def on_finish(self, result: RunResult) -> None:
        writers, self.writers = list(self.writers.values()), {}
        with writing(self.run.tensorboard):
            for writer in writers:
                writer.close()

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self.writers:
            self.writers[split] = tf.summary.create_file_writer(str(self.run.tensorboard / split))
        return self.writers[split]
