"""Classify a user's digit images with a trained run: its SavedModel if it has one, else its last checkpoint.

Each file is read and prepared on its own (images.load_digit), so one bad file costs only its own
line; the good ones are classified together in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from mnist_mlp.evaluate import restore_model
from mnist_mlp.export import load_saved_model
from mnist_mlp.images import ImageError, load_digit
from mnist_mlp.model import predict_proba
from mnist_mlp.rundir import RunDir

# uint8 images [N, 28, 28] to (probabilities [N, 10], digits [N]).
Classify = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Prediction:
    """One file's answer: the digit and its probability, or why the file could not be classified."""

    file: str
    digit: int | None = None
    probability: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_classifier(run: RunDir) -> tuple[Classify, str]:
    """The run's SavedModel (the served artefact) if present, else its last checkpoint; and which it is."""
    saved = run.saved_model
    if saved.exists():
        serve = load_saved_model(saved).signatures["serving_default"]

        def classify_saved(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = serve(images=tf.constant(images, tf.uint8))
            return out["probabilities"].numpy(), out["digit"].numpy()

        return classify_saved, str(saved)
    _, model, _ = restore_model(run, "last")

    def classify_checkpoint(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities = predict_proba(model, images).numpy()
        return probabilities, probabilities.argmax(axis=1)

    return classify_checkpoint, f"{run.checkpoints} (last checkpoint)"


def predict_files(paths: Sequence[str | Path], classify: Classify) -> list[Prediction]:
    """A Prediction per path, in order; unreadable files get their error instead of a digit."""
    digits, failures = {}, {}
    for index, path in enumerate(paths):
        try:
            digits[index] = load_digit(path)
        except ImageError as exc:
            failures[index] = exc.reason
    answers = {}
    if digits:
        probabilities, predicted = classify(np.stack(list(digits.values())))
        for index, p, d in zip(digits, probabilities, predicted, strict=True):
            answers[index] = (int(d), round(float(p[d]), 6))
    return [
        Prediction(str(path), *answers[i]) if i in answers else Prediction(str(path), error=failures[i])
        for i, path in enumerate(paths)
    ]
