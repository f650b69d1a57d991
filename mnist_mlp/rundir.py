"""A run's folder: `RunDir` owns its layout (every name in it is spelled here) and writes its files atomically.

Every file is written to a temporary name and renamed into place, so a crash or kill never leaves a
half-written file. A folder belongs to one run: it is made with an exclusive mkdir (a default name that is
taken gets -2, -3, ...), and an existing empty folder is claimed by creating its config.yaml exclusively.
An existing run is never overwritten unless asked, and then the new run is built in a hidden sibling
folder that replaces the old one only when its first epoch is done. TensorFlow is imported only by the
checkpoint code, so that opening a run and checking its files costs no TensorFlow start-up.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import itertools
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

from mnist_mlp import __version__
from mnist_mlp.config import VERSION_KEY, Config, config_yaml, from_dict, load_yaml
from mnist_mlp.errors import ConfigError, UserError, first_line
from mnist_mlp.folder_lock import FolderInUse, FolderLock, lock_folder
from mnist_mlp.history import EPOCH
from mnist_mlp.write_errors import WriteFailed, writing

if TYPE_CHECKING:
    import tensorflow as tf

    from mnist_mlp.model import MLP
    from mnist_mlp.optimizers import Optimizer

RUNS = Path("runs")  # where runs go by default, and where `latest` names the newest finished one (latest.py)
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
# A killed process may leave these hidden folders in a run: checkpoints being written or replaced, and a
# SavedModel being written or replaced.
LEFTOVER_FOLDERS = (".tmp-", ".epoch-", f".{SAVED_MODEL}-")
STAGING = ".overwrite-"  # a replacement run is built in .<name>.overwrite-<pid>-<random> beside <name>


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object], exclusive: bool = False) -> None:
    """Write `path` through a temporary file in the same folder and an atomic rename: a crash or kill
    leaves the old file or the new one, never half of one. `write` fills the open binary file.

    exclusive: create `path` only if it does not exist (a hard link, which fails when the name is taken);
    FileExistsError otherwise. The first of several processes wins, and its file is complete at once.
    """
    with writing(path):  # a full disk, a read-only one, the folder removed: WriteFailed naming `path`
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a run's files are ordinary files
            if exclusive:
                os.link(tmp, path)
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write(path: Path, text: str, exclusive: bool = False) -> None:
    """atomic_write_with for text (UTF-8)."""
    atomic_write_with(path, lambda file: file.write(text.encode()), exclusive)


def recorded_config_yaml(config: Config) -> str:
    """A run's config.yaml: the version of mnist-mlp that wrote it, then the complete config (config_yaml)."""
    return f"{VERSION_KEY}: '{__version__}'\n" + config_yaml(config)


def check_out_path(path: Path, overwrite: bool = False) -> None:
    """Fail now, in one line, when no run folder can be made at `path` (under a file, read-only, /proc).

    Tries what creating it will do: makes and removes an empty folder in the nearest existing ancestor
    (with --overwrite, beside `path` too, where the replacement is built). Leaves nothing behind.
    """
    path = Path(path).absolute()
    ancestor = path
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{path}: cannot make a run folder here: {ancestor} is a file, not a folder")
    places = {ancestor} | ({path.parent} if overwrite and path.exists() else set())
    for place in places:
        try:
            os.rmdir(tempfile.mkdtemp(dir=place, prefix=".mnist-mlp-probe-"))
        except OSError as exc:
            raise UserError(f"{path}: cannot make a run folder in {place} ({exc.strerror or exc})") from None


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


def remove_abandoned_staging(target: Path) -> None:
    """Remove replacements of `target` left by processes that were killed (their pid no longer runs)."""
    for staging in target.parent.glob(f".{target.name}{STAGING}*"):
        pid = staging.name[len(f".{target.name}{STAGING}") :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
    """Paths and atomic writers for one run's outputs.

    Every path follows `path`, which changes once for a run built beside the one it replaces (`commit`).
    """

    def __init__(self, path: Path, replaces: Path | None = None, made: bool = False):
        self.path = Path(path)
        self.replaces = replaces  # the existing run this one replaces when its first epoch is done
        self.made = made  # this process made the folder (so it may remove it again)
        self.locks: list[FolderLock] = []  # held while this process writes the run (folder_lock.py)

    # Properties, not attributes: a run built beside the one it replaces moves once (`commit`).
    config_file = property(lambda self: self.path / CONFIG_FILE)
    history_file = property(lambda self: self.path / HISTORY_FILE)
    metrics_file = property(lambda self: self.path / METRICS_FILE)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    plots = property(lambda self: self.path / PLOTS)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    saved_model = property(lambda self: self.path / SAVED_MODEL)
    test_predictions_file = property(lambda self: self.path / PREDICTIONS_FILE)
    weights_file = property(lambda self: self.path / WEIGHTS_FILE)

    @property
    def run_files(self) -> tuple[Path, ...]:
        """The files whose presence makes a folder a run (some of them exist once an epoch is done)."""
        return self.config_file, self.history_file, self.metrics_file

    @property
    def target(self) -> Path:
        """Where the run will be once committed (its path, unless it is being built beside an old run)."""
        return self.replaces or self.path

    @classmethod
    def create(
        cls,
        path: Path | None,
        name: str,
        overwrite: bool = False,
        config: Config | None = None,
        lock_as: str | None = None,
    ) -> RunDir:
        """A new run folder that belongs to this run alone: `path`, or runs/<time>-<name>[-2, -3, ...].

        An existing run at `path` is refused, or with `overwrite` left in place while the new run is built
        beside it (see `commit`). `config` is written as config.yaml, exclusively: of several processes
        claiming one existing empty folder, one wins and the others are refused. `lock_as` (the command, e.g.
        "mnist-mlp train"): hold the folder's lock, and the replaced run's, until unlock(); FolderInUse if another
        process holds one.
        """
        if path is None:
            run = cls._made_fresh(RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
        else:
            run = cls._at(Path(path), overwrite, lock_as)
        try:
            if lock_as is not None:
                run.lock(lock_as)
            if config is not None:
                try:
                    atomic_write(run.config_file, recorded_config_yaml(config), exclusive=True)
                except FileExistsError:
                    raise UserError(f"{run.path}: another run has just started here; choose another --out") from None
        except BaseException as exc:
            run.unlock()
            # A folder this process made (or a replacement it began) goes again; one claimed, or that another
            # process got hold of meanwhile, stays.
            if run.made and not isinstance(exc, FolderInUse):
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        return run

    @classmethod
    def _made_fresh(cls, stem: Path) -> RunDir:
        """mkdir without exist_ok: the first process to make a name owns it; the next ones take -2, -3, ..."""
        try:
            stem.parent.mkdir(parents=True, exist_ok=True)
            for number in itertools.count(1):
                path = stem if number == 1 else stem.with_name(f"{stem.name}-{number}")
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
                    return cls(path, made=True)
        except OSError as exc:
            raise UserError(f"{stem.parent}: cannot make a run folder ({exc.strerror or exc})") from None
        raise AssertionError("unreachable")

    @classmethod
    def _at(cls, path: Path, overwrite: bool, lock_as: str | None = None) -> RunDir:
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: exists and is not a folder")
        existing = [f.name for f in cls(path).run_files if f.exists()]
        if existing and not overwrite:
            raise UserError(
                f"{path}: already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it, --overwrite to replace it, or another --out"
            )
        try:
            if existing:  # --overwrite: the old run stays as it is until the new one has finished an epoch
                replaced = lock_folder(path, lock_as) if lock_as else None  # nobody resumes it meanwhile
                try:
                    remove_abandoned_staging(path)
                    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{STAGING}{os.getpid()}-"))
                    os.chmod(staging, 0o777 & ~_umask())
                except BaseException:
                    if replaced:
                        replaced.release()
                    raise
                run = cls(staging, replaces=path, made=True)
                run.locks += [replaced] if replaced else []
                return run
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path)
            return cls(path, made=True)
        except FileExistsError:  # an empty folder (or one without a run): claimed by its config.yaml
            return cls(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot make the run folder ({exc.strerror or exc})") from None

    def remove_leftovers(self) -> None:
        """Remove what a killed process of this run left half-made: the atomic writers' temporary files
        (.NAME.XXXX.tmp) and staged or retired folders (.tmp-*, .epoch-*-old-*, .saved_model-*). Their names
        are hidden; the run's own files never are."""
        for folder in (self.path, self.checkpoints, self.plots):
            for entry in folder.glob(".*") if folder.is_dir() else ():
                if entry.is_file() and entry.name.endswith(".tmp"):
                    entry.unlink(missing_ok=True)
                elif entry.is_dir() and entry.name.startswith(LEFTOVER_FOLDERS):
                    shutil.rmtree(entry, ignore_errors=True)

    def commit(self) -> None:
        """A run built beside the one it replaces takes its place (after its first epoch); else nothing."""
        if self.replaces is not None:
            replace_dir(self.path, self.replaces)
            self.path, self.replaces = self.replaces, None
            for lock in self.locks:  # its lock file moved with it
                lock.moved_to(self.path)

    def lock(self, command: str) -> None:
        """Hold this folder's lock for `command` until unlock(): one writer at a time (folder_lock.py)."""
        self.locks.append(lock_folder(self.path, command))

    def unlock(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks.clear()

    def abandon(self) -> None:
        """Undo the creation of a run that failed before recording anything: remove a replacement still
        being built (the old run stays as it was), or a new run's folder (or config.yaml) if it holds no
        history, checkpoint or metrics."""
        if self.replaces is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if self.holds_results():
            return
        if self.made:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.config_file.unlink(missing_ok=True)

    def holds_results(self) -> bool:
        """Whether the run recorded anything worth keeping (an epoch's history, a checkpoint, metrics)."""
        return any(p.exists() for p in (self.history_file, self.metrics_file, self.checkpoints / "state.json"))

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
        """config.yaml as a Config; a config this version cannot read says which version wrote it."""
        import yaml

        try:
            tree = load_yaml(self.config_file.read_text())
        except yaml.YAMLError:
            raise UserError(f"{self.config_file}: not valid YAML") from None
        try:
            return from_dict(tree, where=str(self.config_file))
        except ConfigError as exc:
            written_by = self.written_by(tree)
            if written_by == __version__:
                raise
            raise ConfigError(
                f"{exc} (written by mnist-mlp {written_by}, this is {__version__}: use that version for this run, "
                "or train anew)"
            ) from None

    def written_by(self, config_tree: object = None) -> str:
        """The mnist-mlp version that wrote the run: metrics.json's, else config.yaml's; folders from before
        versions were recorded (0.1.0) hold neither."""
        with contextlib.suppress(UserError):
            if version := self.read_metrics().get(VERSION_KEY):
                return str(version)
        if config_tree is None:
            import yaml

            with contextlib.suppress(OSError, yaml.YAMLError):
                config_tree = load_yaml(self.config_file.read_text())
        if isinstance(config_tree, dict) and config_tree.get(VERSION_KEY):
            return str(config_tree[VERSION_KEY])
        return "0.1.0 or earlier"

    def write_config(self, config: Config) -> None:
        atomic_write(self.config_file, recorded_config_yaml(config))

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
        """metrics.json ({} when the run has not finished); written last, so present means complete."""
        if not self.metrics_file.is_file():
            return {}
        try:
            metrics = json.loads(self.metrics_file.read_text())
        except (OSError, ValueError):
            raise UserError(f"{self.metrics_file}: damaged (not JSON)") from None
        if not isinstance(metrics, dict):
            raise UserError(f"{self.metrics_file}: damaged (expected a JSON object)")
        return metrics

    def write_predictions(self, predictions: np.ndarray) -> None:
        """The predicted digit of each test image (uint8), kept to redraw the prediction plots."""
        digits = np.asarray(predictions, dtype=np.uint8)
        atomic_write_with(self.test_predictions_file, lambda file: np.save(file, digits, allow_pickle=False))

    def write_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """Named arrays (results.Weights.to_arrays) into the weights file, uncompressed (about 0.4 MB).

        Made in memory first: a zip archive left half-written on a full disk complains when it is collected."""
        archive = io.BytesIO()
        np.savez(archive, **arrays)
        atomic_write_with(self.weights_file, lambda file: file.write(archive.getbuffer()))

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
        name = f"epoch-{state.epoch:04d}" + (f"-step-{state.step:06d}" if state.step else "")
        with writing(self.checkpoints / name):
            self.checkpoints.mkdir(exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.checkpoints, prefix=".tmp-"))
            try:
                _checkpoint(model, state, optimizer)[0].write(str(tmp / "ckpt"))
                if not self.config_file.is_file():  # the run's folder was removed (TensorFlow made tmp's again)
                    raise WriteFailed(self.checkpoints / name, errno.ENOENT, gone=self.path)
                replace_dir(tmp, self.checkpoints / name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # on a full disk, the space it took is given back
                raise
        pointers = self._pointers()
        pointers["last"] = name
        if best:
            pointers["best"] = name
        atomic_write(self.checkpoints / "state.json", json.dumps(pointers, indent=2) + "\n")
        keep = set(pointers.values())
        for old in self.checkpoints.iterdir():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint was ever completed (state.json is written after the first one)."""
        return (self.checkpoints / "state.json").is_file()

    def checkpoint_path(self, which: str = "last") -> Path:
        """The folder of the `last` or `best` checkpoint; UserError naming what is missing or damaged."""
        if not self.checkpoints.is_dir():
            raise UserError(f"{self.checkpoints}: missing (the run's checkpoint folder)")
        name = self._pointers(missing_ok=False).get(which)
        if name is None:
            raise UserError(f"{self.checkpoints / 'state.json'}: names no {which} checkpoint")
        folder = self.checkpoints / name
        if not folder.is_dir():
            raise UserError(f"{folder}: missing (state.json names it as the {which} checkpoint)")
        for needed in ("ckpt.index", "ckpt.data-00000-of-00001"):
            if not (folder / needed).is_file():
                raise UserError(f"{folder / needed}: missing (the {which} checkpoint is incomplete)")
        return folder

    def restore_checkpoint(
        self, model: MLP, which: str = "last", optimizer: Optimizer | None = None
    ) -> CheckpointState:
        """Load the weights of the `last` or `best` checkpoint into `model` and, to resume training, the slots
        into `optimizer` (which must be of the kind that wrote them); returns its position.

        A reader (evaluate, predict, serve) takes no lock: when a training run replaces the checkpoint named
        in state.json while it is being read, the one state.json names now is read instead.
        """
        for attempt in itertools.count(1):
            named = self._pointers()
            try:
                return self._restore_checkpoint(model, which, optimizer)
            except UserError:
                if attempt == 3 or self._pointers() == named:  # damaged indeed, not moved on meanwhile
                    raise

    def _restore_checkpoint(self, model: MLP, which: str, optimizer: Optimizer | None) -> CheckpointState:
        folder = self.checkpoint_path(which)
        import tensorflow as tf

        checkpoint, position = _checkpoint(model, CheckpointState(0, 0, 0.0, 0.0), optimizer)
        try:
            # expect_partial: evaluate and predict read the weights alone and leave the slots, without TF's
            # warnings about them; every object that is asked for must still be there (assert below).
            status = checkpoint.read(str(folder / "ckpt")).expect_partial()
            written_by = position["optimizer"].numpy().decode()
            if optimizer is not None and written_by != optimizer.kind:
                raise UserError(
                    f"{folder}: written by train.optimizer {written_by}, "
                    f"this config trains with {optimizer.kind}; its slots cannot continue another optimizer"
                )
            status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as exc:  # other shapes or names
            raise UserError(f"{folder}: does not fit this model ({first_line(exc)})") from None
        except (tf.errors.OpError, IndexError) as exc:  # truncated or corrupt files (IndexError: short reads)
            raise UserError(f"{folder}: damaged checkpoint files ({first_line(exc)})") from None
        return CheckpointState(
            int(position["epoch"].numpy()),
            int(position["step"].numpy()),
            float(position["loss_sum"].numpy()),
            float(position["seconds"].numpy()),
        )

    def _pointers(self, missing_ok: bool = True) -> dict[str, str]:
        """state.json: {"last": name, "best": name} of checkpoint folders; UserError when damaged."""
        path = self.checkpoints / "state.json"
        if not path.is_file():
            if missing_ok:
                return {}
            raise UserError(f"{path}: missing (it names the run's checkpoints)")
        try:
            pointers = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path}: damaged (not JSON)") from None
        if not (isinstance(pointers, dict) and all(isinstance(v, str) and "/" not in v for v in pointers.values())):
            raise UserError(f'{path}: damaged (expected {{"last": "epoch-NNNN", "best": ...}})')
        return pointers


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
