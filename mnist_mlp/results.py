"""What a run produces and who hears about it, without TensorFlow: evaluations, weights, headline figures, listeners.

An `Evaluation` is one split scored after an epoch (its loss, predicted digits, confusion matrix and which hidden
units ever fired); `Weights` are the model's weights as NumPy arrays (what the plots and TensorBoard look at);
`headline_metrics` names the test figures as the run's metrics file does; a `RunResult` is what a finished run hands
its `Listener`s (the console, the plots, TensorBoard, the SavedModel export).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mnist_mlp.config import Config
from mnist_mlp.data import N_CLASSES, Mnist
from mnist_mlp.errors import UserError
from mnist_mlp.history import SPARSITY_THRESHOLD, accuracy_column, loss_column
from mnist_mlp.rundir import RunDir

if TYPE_CHECKING:  # model.py needs TensorFlow; this module does not
    from mnist_mlp.model import MLP


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """[10, 10] counts, rows the true digit and columns the predicted one."""
    pairs = labels.astype(np.int64) * N_CLASSES + predictions.astype(np.int64)
    return np.bincount(pairs, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


@dataclass(frozen=True)
class Evaluation:
    """Loss, predicted digits and confusion matrix (rows: true digit, columns: predicted) on one split, and for
    each hidden layer which of its ReLU units were active (> 0) for at least one image of the split."""

    loss: float
    predictions: np.ndarray
    confusion: np.ndarray
    active: tuple[np.ndarray, ...] = ()  # per hidden layer, [N_l] bool

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

    @property
    def dead_units(self) -> list[float]:
        """For each hidden layer, the fraction of its units that were 0 on every image: dead ReLUs."""
        return [np.count_nonzero(~active) / active.size for active in self.active]


@dataclass(frozen=True)
class Weights:
    """A model's weights as NumPy arrays, as MLP holds them: W[l] is W^{l+1} [N_l, N_{l+1}], W0[l] its biases."""

    W: tuple[np.ndarray, ...]
    W0: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, model: MLP) -> Weights:
        return cls(tuple(w.numpy() for w in model.W), tuple(w.numpy() for w in model.W0))

    def sparsity(self, threshold: float = SPARSITY_THRESHOLD) -> list[float]:
        """For each layer, the fraction of its weights (not biases) with |w| < threshold: what L1 pushed to zero."""
        return [float(np.mean(np.abs(w) < threshold)) for w in self.W]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named as the model's variables (W1, W0_1, W2, ...), for the run folder's weights file."""
        named = {}
        for layer, (w, w0) in enumerate(zip(self.W, self.W0, strict=True), 1):
            named[f"W{layer}"], named[f"W0_{layer}"] = w, w0
        return named

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], where: str) -> Weights:
        """The inverse of to_arrays; UserError naming `where` when the arrays are not the layers of an MLP."""
        layers = range(1, 1 + sum(1 for name in arrays if name.startswith("W") and name[1:].isdigit()))
        try:
            W = tuple(np.asarray(arrays[f"W{layer}"]) for layer in layers)
            W0 = tuple(np.asarray(arrays[f"W0_{layer}"]) for layer in layers)
        except KeyError as missing:
            raise UserError(f"{where}: no array {missing} (not a mnist-mlp weights file)") from None
        shapes_fit = all(w.ndim == 2 and b.size == w.shape[1] for w, b in zip(W, W0, strict=True))
        chained = all(a.shape[1] == b.shape[0] for a, b in itertools.pairwise(W))
        if not W or not shapes_fit or not chained:
            raise UserError(f"{where}: the arrays are not the layers of a network")
        return cls(W, W0)


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

    def on_weights(self, epoch: int, weights: Weights) -> None:
        """After each finished epoch (after on_epoch): the model's weights at that point."""

    def on_finish(self, result: RunResult) -> None: ...

    def on_close(self) -> None:
        """After every listener's on_finish: complete what is still running, so all is written on return."""
