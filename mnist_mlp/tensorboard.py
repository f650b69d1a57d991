"""TensorBoard logs of a run: per-epoch scalars written with tf.summary into DIR/tb/.

One writer per split (DIR/tb/train, DIR/tb/validation, DIR/tb/test) with the same tags, so TensorBoard draws
train and test on one chart: loss, accuracy and per_digit_error/digit_0 … digit_9, as in the report's plots.
The learning rate, the mean mini-batch loss and the epoch's training time go to the train writer, and so do
the histograms of each layer's weights and biases (weights/layer_1, biases/layer_1, ...), which show L1 at work.
`tensorboard --logdir runs` shows every run under runs/.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

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


def epoch_scalars(row: dict) -> dict[str, dict[str, float]]:
    """A history.csv row as {split: {tag: value}}: the scalars TensorBoard shows for that epoch."""
    scalars: dict[str, dict[str, float]] = {}
    for split in splits_in(row):
        tags = {"loss": row[loss_column(split)], "accuracy": row[accuracy_column(split)]}
        digit_errors = [row[digit_error_column(split, d)] for d in DIGITS if digit_error_column(split, d) in row]
        if digit_errors:
            tags |= {f"per_digit_error/digit_{d}": error for d, error in enumerate(digit_errors)}
            tags["per_digit_error/mean"] = sum(digit_errors) / len(digit_errors)
        scalars[split] = tags
    scalars["train"] |= {
        "learning_rate": row[LEARNING_RATE],
        "loss_mini_batch_mean": row[BATCH_LOSS],
        "epoch_seconds": row[SECONDS],
    }
    return scalars


class TensorBoardWriter(Listener):
    """Writes each epoch's scalars (step = epoch) and flushes, so a live TensorBoard follows the run."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self.writers: dict[str, tf.summary.SummaryWriter] = {}

    def on_epoch(self, row: dict) -> None:
        for split, tags in epoch_scalars(row).items():
            writer = self._writer(split)
            with writer.as_default(step=int(row[EPOCH])):
                for tag, value in tags.items():
                    tf.summary.scalar(tag, float(value))
            writer.flush()

    def on_weights(self, epoch: int, weights: Weights) -> None:
        writer = self._writer("train")
        with writer.as_default(step=epoch):
            for layer, (w, w0) in enumerate(zip(weights.W, weights.W0, strict=True), 1):
                tf.summary.histogram(f"weights/layer_{layer}", w)
                tf.summary.histogram(f"biases/layer_{layer}", w0)
        writer.flush()

    def on_finish(self, result: RunResult) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self.writers:
            self.writers[split] = tf.summary.create_file_writer(str(self.logdir / split))
        return self.writers[split]
