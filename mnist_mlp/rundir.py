"""A run's folder: `RunDir` owns its layout (every name in it is spelled here) and writes its files atomically.

Every file is written to a temporary name and renamed into place, so a crash or kill never leaves a
half-written file; an existing run is never overwritten unless asked. TensorFlow is imported only by the
checkpoint code, so that opening a run and checking its files costs no TensorFlow start-up.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from mnist_mlp.config import Config, from_dict, save_config
from mnist_mlp.errors import UserError
from mnist_mlp.history import EPOCH

if TYPE_CHECKING:
    import tensorflow as tf

    from mnist_mlp.model import MLP
    from mnist_mlp.optimizers import Optimizer

# The layout of a run folder; other modules use RunDir's paths, never these names.
CONFIG_FILE = "config.yaml"  # the complete config the run trained with
HISTORY_FILE = "history.csv"  # one row per finished epoch (columns: history.py)
METRICS_FILE = "metrics.json"  # the final figures (results.headline_metrics) and totals
CHECKPOINTS = "checkpoints"  # the last and best weights and position; state.json names them
PLOTS = "plots"  # the report's plots (plots.py)
TENSORBOARD = "tb"  # TensorBoard logs (tensorboard.py)
SAVED_MODEL = "saved_model"  # the served model (export.py)
PREDICTIONS_FILE = "test_predictions.npy"  # the predicted digit of each test image, to redraw the plots
WEIGHTS_FILE = "weights.npz"  # the weights after the last finished epoch as NumPy, to draw them without TensorFlow


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through a temporary file in the same folder and an atomic rename: a crash or kill
    leaves the old file or the new one, never half of one. `write` fills the open binary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a run's files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """atomic_write_with for text (UTF-8)."""
    atomic_write_with(path, lambda file: file.write(text.encode()))


def replace_dir(staging: Path, target: Path) -> None:
    """Rename the complete folder `staging` onto `target`; an old `target` is first renamed aside, so at
    every moment one complete folder (the old or the new) is there, then the old one is removed."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
    os.replace(target, retired / target.name)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class CheckpointState:
    """Where a checkpoint stands: after `step` steps of `epoch` (step 0: the epoch is finished)."""

    epoch: int
    step: int
    loss_sum: float
    seconds: float


class RunDir:
    """Paths and atomic writers for one run's outputs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.history_file = self.path / HISTORY_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.checkpoints = self.path / CHECKPOINTS
        self.plots = self.path / PLOTS
        self.tensorboard = self.path / TENSORBOARD
        self.saved_model = self.path / SAVED_MODEL
        self.test_predictions_file = self.path / PREDICTIONS_FILE
        self.weights_file = self.path / WEIGHTS_FILE

    @property
    def run_files(self) -> tuple[Path, ...]:
        """The files whose presence makes a folder a run (some of them exist once an epoch is done)."""
        return self.config_file, self.history_file, self.metrics_file

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Everything a run writes into its folder: what --overwrite removes."""
        folders = (self.checkpoints, self.plots, self.tensorboard, self.saved_model)
        return *self.run_files, *folders, self.test_predictions_file, self.weights_file

    @classmethod
    def create(cls, path: Path | None, name: str, overwrite: bool = False) -> RunDir:
        """A new run folder: `path`, or runs/<time>-<name>; refuses to overwrite a run unless asked."""
        if path is None:
            path = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise UserError(f"{run.path}: exists and is not a folder")
        existing = [f.name for f in run.run_files if f.exists()]
        if existing and not overwrite:
            raise UserError(
                f"{run.path}: already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it, --overwrite to replace it, or another --out"
            )
        if existing:
            for target in run.outputs:
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run folder (for --resume, evaluate, plot); checks it is one."""
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"{run.path}: no such run folder")
        if not run.config_file.is_file():
            raise UserError(f"{run.path}: not a run folder (no config.yaml)")
        return run

    def read_config(self) -> Config:
        import yaml

        try:
            tree = yaml.safe_load(self.config_file.read_text())
        except yaml.YAMLError:
            raise UserError(f"{self.config_file}: not valid YAML") from None
        return from_dict(tree, where=str(self.config_file))

    def write_config(self, config: Config) -> None:
        save_config(config, self.config_file)

    def write_history(self, rows: list[dict]) -> None:
        """Every column any row has; a row without one (an epoch written by an older version, then resumed) gets
        nan there."""
        if not rows:
            return
        columns = list(dict.fromkeys(name for row in rows for name in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="nan", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.history_file, buffer.getvalue())

    def read_history(self) -> list[dict]:
        """history.csv as rows of floats (epoch as int); [] when there is none yet."""
        if not self.history_file.is_file():
            return []
        try:
            with self.history_file.open(newline="") as file:
                return [{k: int(v) if k == EPOCH else float(v) for k, v in row.items()} for row in csv.DictReader(file)]
        except (ValueError, TypeError):
            raise UserError(f"{self.history_file}: malformed (expected numbers in every column)") from None

    def write_metrics(self, metrics: dict) -> None:
        atomic_write(self.metrics_file, json.dumps(metrics, indent=2) + "\n")

    def read_metrics(self) -> dict:
        """metrics.json as written (raises OSError when absent, ValueError when malformed)."""
        return json.loads(self.metrics_file.read_text())

    def write_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """Named arrays (results.Weights.to_arrays) into the weights file, uncompressed (about 0.4 MB)."""
        atomic_write_with(self.weights_file, lambda file: np.savez(file, **arrays))

    def read_weights(self) -> dict[str, np.ndarray]:
        """The weights file's arrays by name; UserError when it is missing or unreadable."""
        if not self.weights_file.is_file():
            raise UserError(f"{self.weights_file}: not found (written after each epoch)")
        try:
            with np.load(self.weights_file, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            raise UserError(f"{self.weights_file}: not a readable .npz file") from None

    # Checkpoints: complete folders renamed into place, and state.json (atomic) naming the last and best.

    def save_checkpoint(
        self, model: MLP, state: CheckpointState, best: bool = False, optimizer: Optimizer | None = None
    ) -> None:
        """Write the weights, the optimizer's slots and the position as checkpoints/<name>, then point
        state.json at it."""
        self.checkpoints.mkdir(exist_ok=True)
        name = f"epoch-{state.epoch:04d}" + (f"-step-{state.step:06d}" if state.step else "")
        tmp = Path(tempfile.mkdtemp(dir=self.checkpoints, prefix=".tmp-"))
        _checkpoint(model, state, optimizer)[0].write(str(tmp / "ckpt"))
        replace_dir(tmp, self.checkpoints / name)
        pointers = self._pointers()
        pointers["last"] = name
        if best:
            pointers["best"] = name
        atomic_write(self.checkpoints / "state.json", json.dumps(pointers, indent=2) + "\n")
        keep = set(pointers.values())
        for old in self.checkpoints.iterdir():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def restore_checkpoint(
        self, model: MLP, which: str = "last", optimizer: Optimizer | None = None
    ) -> CheckpointState:
        """Load the weights of the `last` or `best` checkpoint into `model` and, to resume training, the slots
        into `optimizer` (which must be of the kind that wrote them); returns its position."""
        name = self._pointers().get(which)
        if name is None:
            raise UserError(f"{self.checkpoints}: no {which} checkpoint to restore")
        import tensorflow as tf

        checkpoint, position = _checkpoint(model, CheckpointState(0, 0, 0.0, 0.0), optimizer)
        try:
            # expect_partial: evaluate and predict read the weights alone and leave the slots, without TF's
            # warnings about them; every object that is asked for must still be there (assert below).
            status = checkpoint.read(str(self.checkpoints / name / "ckpt")).expect_partial()
            written_by = position["optimizer"].numpy().decode()
            if optimizer is not None and written_by != optimizer.kind:
                raise UserError(
                    f"{self.checkpoints / name}: written by train.optimizer {written_by}, "
                    f"this config trains with {optimizer.kind}; its slots cannot continue another optimizer"
                )
            status.assert_existing_objects_matched()
        except (ValueError, tf.errors.OpError, AssertionError) as exc:
            reason = str(exc).splitlines()[0][:200]
            raise UserError(f"{self.checkpoints / name}: does not fit this model ({reason})") from None
        return CheckpointState(
            int(position["epoch"].numpy()),
            int(position["step"].numpy()),
            float(position["loss_sum"].numpy()),
            float(position["seconds"].numpy()),
        )

    def _pointers(self) -> dict:
        path = self.checkpoints / "state.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path}: malformed checkpoint state") from None


def _checkpoint(
    model: MLP, state: CheckpointState, optimizer: Optimizer | None = None
) -> tuple[tf.train.Checkpoint, dict]:
    """The tracked objects of a checkpoint: weights by name, the optimizer's kind and slots, and the training
    position as variables. Without an optimizer (evaluate, predict) the slots in a file are left unread.

    The shuffle and the shifts are stateless functions of (seed, epoch, step) and the learning rate a
    function of the epoch, so the position and the slots are the whole of the RNG, schedule and optimizer state.
    """
    import tensorflow as tf

    with tf.device("/CPU:0"):  # 64-bit bookkeeping: Metal has no float64
        position = {
            "epoch": tf.Variable(state.epoch, dtype=tf.int64),
            "step": tf.Variable(state.step, dtype=tf.int64),
            "loss_sum": tf.Variable(state.loss_sum, dtype=tf.float64),
            "seconds": tf.Variable(state.seconds, dtype=tf.float64),
            # Checkpoints from before there was a choice hold no name: they were all written by plain SGD.
            "optimizer": tf.Variable(optimizer.kind if optimizer else "sgd", dtype=tf.string),
        }
    weights = {v.name.split(":")[0]: v for v in model.variables_in_order}
    slots = {"slots": optimizer.variables} if optimizer and optimizer.variables else {}
    return tf.train.Checkpoint(weights=weights, **slots, **position), position
