"""The served artefact: a TensorFlow SavedModel of a trained MLP, loadable with TensorFlow alone.

A run's SavedModel (the folder RunDir.saved_model) has two signatures, both returning
{"probabilities": float32 [N, 10], "digit": int32 [N]}:
  serving_default  images: uint8 [N, 28, 28], MNIST-like (light ink on black, 0-255)
  serving_float    pixels: float32 [N, 784] in [0, 1], rows of 28 pixels one after another
The math is model.forward and model.softmax, traced into the graph, so it cannot drift from training.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from mnist_mlp.errors import UserError, first_line
from mnist_mlp.model import N_PIXELS, forward, softmax, to_rows
from mnist_mlp.results import Listener, RunResult
from mnist_mlp.rundir import replace_dir
from mnist_mlp.write_errors import writing

if TYPE_CHECKING:
    from mnist_mlp.model import MLP

SIGNATURES = ("serving_default", "serving_float")


class ServingModel(tf.Module):
    """Copies of an MLP's weights and the two serving functions; what tf.saved_model.save writes."""

    def __init__(self, model: MLP):
        super().__init__(name="mnist_mlp_serving")
        # Own copies: training may go on changing the model's variables after an export.
        self.W = [tf.Variable(w, trainable=False, name=f"W{i + 1}") for i, w in enumerate(model.W)]
        self.W0 = [tf.Variable(b, trainable=False, name=f"W0_{i + 1}") for i, b in enumerate(model.W0)]
        self.activation = model.activation

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def classify_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 images [N, 28, 28] to class probabilities and digits."""
        return self._classify(to_rows(images, self.W[0].dtype))

    @tf.function(input_signature=[tf.TensorSpec([None, N_PIXELS], tf.float32, name="pixels")])
    def classify_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        """float32 pixels [N, 784] in [0, 1] to class probabilities and digits."""
        return self._classify(tf.cast(pixels, self.W[0].dtype))

    def _classify(self, X: tf.Tensor) -> dict[str, tf.Tensor]:
        _, logits = forward(self, X)  # rows are images, as in training
        return {
            "probabilities": tf.cast(softmax(logits), tf.float32),
            "digit": tf.argmax(logits, axis=1, output_type=tf.int32),  # as Trainer.evaluate picks it
        }


def export_saved_model(model: MLP, target: Path) -> Path:
    """Write `model` as a SavedModel at `target`, replacing any there; a crash leaves the old or the new one."""
    target = Path(target)
    with writing(target):  # a full disk says so (TensorFlow raises ResourceExhaustedError for it)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the served model from other users
            with tf.device("/CPU:0"):  # the copies and the traced functions: never on an unchecked GPU
                serving = ServingModel(model)
                signatures = {"serving_default": serving.classify_images, "serving_float": serving.classify_pixels}
                tf.saved_model.save(serving, str(staging), signatures=signatures)
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def load_saved_model(path: Path) -> Any:
    """Load a SavedModel written by export_saved_model (a TF object with .signatures), or raise UserError."""
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise UserError(f"{path}: not a SavedModel (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises many kinds (protobuf, OpError, ValueError); all mean "unreadable"
        reason = first_line(exc)
        raise UserError(f"{path}: cannot load the SavedModel ({reason})") from None
    missing = [name for name in SIGNATURES if name not in loaded.signatures]
    if missing:
        raise UserError(f"{path}: SavedModel lacks the signature {missing[0]}")
    return loaded


def restore_saved_model(model: MLP, path: Path) -> None:
    """Copy the weights of the SavedModel at `path` into `model` (same layer sizes), or raise UserError."""
    loaded = load_saved_model(path)
    theirs = [v for pair in zip(loaded.W, loaded.W0, strict=True) for v in pair]
    if [v.shape for v in theirs] != [v.shape for v in model.variables_in_order]:
        sizes = "-".join(str(n) for n in [loaded.W[0].shape[0], *(w.shape[1] for w in loaded.W)])
        wanted = "-".join(str(n) for n in model.sizes)
        raise UserError(f"{path}: does not fit this model (layer sizes {sizes}; config.yaml says {wanted})")
    for mine, saved in zip(model.variables_in_order, theirs, strict=True):
        mine.assign(saved)


class SavedModelWriter(Listener):
    """Exports the finished run's model to RUN/saved_model, so every finished run can be served."""

    def on_finish(self, result: RunResult) -> None:
        export_saved_model(result.model, result.run.saved_model)
