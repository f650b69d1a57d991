"""Classify a user's digit images with a trained run: the weights of its SavedModel, else of its last checkpoint.

Each file is read and prepared on its own (images.load_digit), so one bad file costs only its own
line; the good ones are classified together in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from mnist_mlp.device import CPU
from mnist_mlp.evaluate import restore_model
from mnist_mlp.export import restore_saved_model
from mnist_mlp.images import ImageError, load_digit
from mnist_mlp.model import MLP, predict_proba
from mnist_mlp.rundir import RunDir

# uint8 images [N, 28, 28] to class probabilities [N, 10].
Classify = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One file's answer: the digit, its probability and all ten, or why the file could not be classified."""

    file: str
    digit: int | None = None
    probability: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def answer(probabilities: np.ndarray) -> dict:
    """The fields a classified image gets, from its ten probabilities: digit, probability, probabilities."""
    digit = int(np.argmax(probabilities))
    rounded = [round(float(p), 6) for p in probabilities]
    return {"digit": digit, "probability": rounded[digit], "probabilities": rounded}


def load_model(run: RunDir) -> tuple[MLP, str]:
    """The run's trained MLP: the weights of its SavedModel (the served artefact) if it has one, else of its
    last checkpoint; and which of the two it is."""
    saved = run.saved_model
    if not saved.exists():  # a run that has not finished: say which checkpoint answers
        _, model, state = restore_model(run, "last")
        where = f"epoch {state.epoch}" + (f", step {state.step} (interrupted mid-epoch)" if state.step else "")
        return model, f"{run.checkpoint_path('last')} (the last checkpoint: {where}; no {saved.name} yet)"
    config = run.read_config()
    with tf.device(CPU):  # an image at a time: the CPU does it at once, and no unchecked GPU is involved
        model = MLP(config.model, config.seed)
    restore_saved_model(model, saved)
    return model, str(saved)


def load_classifier(run: RunDir) -> tuple[Classify, str]:
    """load_model's MLP as a function of images (run on the CPU); and where its weights came from."""
    model, source = load_model(run)

    def classify(images: np.ndarray) -> np.ndarray:
        with tf.device(CPU):
            return predict_proba(model, images).numpy()

    return classify, source


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
        probabilities = classify(np.stack(list(digits.values())))
        answers = {index: answer(p) for index, p in zip(digits, probabilities, strict=True)}
    return [
        Prediction(str(path), **answers[i]) if i in answers else Prediction(str(path), error=failures[i])
        for i, path in enumerate(paths)
    ]
