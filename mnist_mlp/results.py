"""What a run produces and who hears about it, without TensorFlow: evaluations, headline figures, listeners.

An `Evaluation` is one split scored after an epoch (its loss, predicted digits and confusion matrix);
`headline_metrics` names the test figures as the run's metrics file does; a `RunResult` is what a finished run hands
its `Listener`s (the console, the plots, TensorBoard, the SavedModel export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mnist_mlp.config import Config
from mnist_mlp.data import N_CLASSES, Mnist
from mnist_mlp.history import accuracy_column, loss_column
from mnist_mlp.rundir import RunDir

if TYPE_CHECKING:  # model.py needs TensorFlow; this module does not
    from mnist_mlp.model import MLP


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """[10, 10] counts, rows the true digit and columns the predicted one."""
    pairs = labels.astype(np.int64) * N_CLASSES + predictions.astype(np.int64)
    return np.bincount(pairs, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


@dataclass(frozen=True)
class Evaluation:
    """Loss, predicted digits and confusion matrix (rows: true digit, columns: predicted) on one split."""

    loss: float
    predictions: np.ndarray
    confusion: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.confusion.sum())

    @property
    def per_digit_error(self) -> np.ndarray:
        """For each digit, the fraction of its images classified as another digit; 0 for a digit with no
        images (possible only in a sliced test set), which has no errors to count."""
        per_digit = self.confusion.sum(axis=1)
        return np.where(per_digit > 0, 1.0 - np.diag(self.confusion) / np.maximum(per_digit, 1), 0.0)

    @property
    def mean_per_digit_error(self) -> float:
        """The mean of per_digit_error over the digits the split holds (a sliced test set may lack some)."""
        present = self.confusion.sum(axis=1) > 0
        return float(self.per_digit_error[present].mean())


def headline_metrics(test: Evaluation) -> dict:
    """The test figures under the metrics file's names (used at the end of training and by `evaluate`)."""
    return {
        accuracy_column("test"): test.accuracy,
        "test_error": 1.0 - test.accuracy,
        "mean_per_digit_test_error": test.mean_per_digit_error,
        "per_digit_test_error": [float(e) for e in test.per_digit_error],
        loss_column("test"): test.loss,
    }


@dataclass(frozen=True)
class RunResult:
    """What a finished run hands its listeners: files, figures, the final evaluations, data and model."""

    run: RunDir
    config: Config
    metrics: dict
    history: list[dict]
    final: dict[str, Evaluation]  # "train", "validation" (if split) and "test"
    mnist: Mnist
    model: MLP


class Listener:
    """Hooks a training run calls; subclasses override what they need."""

    def on_start(self, info: dict) -> None: ...

    def on_call(self, epoch: int, step: int, steps_per_epoch: int, running_loss: float, seconds: float) -> None: ...

    def on_epoch(self, row: dict) -> None: ...

    def on_finish(self, result: RunResult) -> None: ...
