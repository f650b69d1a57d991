"""The columns of history.csv: one row per epoch, named here once for every module that reads or writes them.

A row holds the epoch, its learning rate, its training time and mean mini-batch loss, then for each split
(train, validation when the run holds one out, test) its loss and accuracy, and for train and test the
classification error of each digit. The metrics file names its split figures the same way (`test_accuracy`).
Last, what the weights became: for each weight layer l the fraction of its weights near zero (`sparsity_l`, what
L1 does), and for each hidden layer the fraction of its ReLU units dead on the test set (`dead_units_l`).
"""

from __future__ import annotations

from mnist_mlp.data import N_CLASSES

EPOCH = "epoch"  # 1-based
LEARNING_RATE = "learning_rate"  # α of the epoch
SECONDS = "seconds"  # training time of the epoch (compiled calls only, not evaluation)
BATCH_LOSS = "batch_loss"  # mean mini-batch loss during the epoch
SPLITS = ("train", "validation", "test")  # in this order; validation only when held out
DIGIT_ERROR_SPLITS = ("train", "test")  # the splits whose per-digit errors are recorded
DIGITS = range(N_CLASSES)
SPARSITY_THRESHOLD = 1e-3  # a weight counts as zero in `sparsity_l` when |w| < this


def loss_column(split: str) -> str:
    """Mean cross-entropy on `split` after the epoch, e.g. `test_loss`."""
    return f"{split}_loss"


def accuracy_column(split: str) -> str:
    """Fraction of `split` classified correctly after the epoch, e.g. `test_accuracy`."""
    return f"{split}_accuracy"


def digit_error_column(split: str, digit: int) -> str:
    """Fraction of `split`'s images of `digit` classified as another digit, e.g. `test_error_7`."""
    return f"{split}_error_{digit}"


def splits_in(row: dict) -> list[str]:
    """The splits a row (of the history, or the metrics) has figures for: train, [validation,] test."""
    return [split for split in SPLITS if loss_column(split) in row]


def sparsity_column(layer: int) -> str:
    """Fraction of the weights of W^layer (1-based; biases not counted) with |w| < SPARSITY_THRESHOLD: `sparsity_1`."""
    return f"sparsity_{layer}"


def dead_units_column(layer: int) -> str:
    """Fraction of hidden layer `layer`'s (1-based) units that are 0 on every test image, e.g. `dead_units_1`."""
    return f"dead_units_{layer}"


def numbered_columns(row: dict, column) -> list[str]:
    """The columns `column(1)`, `column(2)`, ... that a row holds, in layer order (none for an older history)."""
    names = []
    while column(len(names) + 1) in row:
        names.append(column(len(names) + 1))
    return names
