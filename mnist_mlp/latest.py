"""`runs/latest`: the newest finished run in runs/, so that `serve`, `plot`, `evaluate` and `predict` take `latest`
for DIR instead of a copied folder name.

It is a symlink to the run's folder name, replaced by an atomic rename (on a file system without symlinks, a small
text file holding the name, written the same way). `train` recomputes it when it ends, and when it begins to change
a run in runs/ (--resume, --overwrite): the newest folder in runs/ whose run finished (metrics.json says finished
or converged, for every epoch in history.csv) and that no process is writing (folder_lock.in_use). So it never
names a run that is training, being resumed or being replaced, however many run at once; with no such run it is
removed. Runs written elsewhere (--out other/place) and sweep trials (in the sweep's folder) leave it alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sys
from pathlib import Path

from mnist_mlp.errors import UserError
from mnist_mlp.folder_lock import in_use
from mnist_mlp.rundir import RUNS, RunDir, atomic_write

LATEST = "latest"
FINISHED = ("finished", "converged")


def finished_at(folder: Path) -> float | None:
    """When the run in `folder` finished (its metrics.json's time), or None: not finished, diverged or damaged."""
    run = RunDir(folder)
    try:
        metrics = json.loads(run.metrics_file.read_text())
        rows = len(run.history_file.read_text().splitlines()) - 1
        if metrics.get("status") not in FINISHED or metrics.get("epochs") != rows:
            return None  # e.g. continued with --set train.epochs=N and stopped: metrics.json is older than history
        return run.metrics_file.stat().st_mtime
    except (OSError, ValueError, AttributeError):
        return None


def newest_finished(runs: Path = RUNS) -> Path | None:
    """The folder in `runs` of the run that finished last and that no process is writing now."""
    candidates = []
    for folder in runs.iterdir() if runs.is_dir() else ():
        if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue
        when = finished_at(folder)
        if when is not None and not in_use(folder):
            candidates.append((when, folder.name))
    return runs / max(candidates)[1] if candidates else None


def update_latest(runs: Path = RUNS, of: Path | None = None) -> Path | None:
    """Point runs/latest at newest_finished() (or remove it when there is none); returns the run it names.

    of: a run folder that changed; nothing is done unless it is in `runs`. Never fails a command: a problem
    (a read-only runs/) is one warning line.
    """
    runs = Path(runs)
    if not runs.is_dir() or (of is not None and not in_folder(of, runs)):
        return None
    try:
        guard = os.open(runs, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one update at a time (milliseconds), so the last to finish writes last
            newest = newest_finished(runs)
            if newest is None:
                with contextlib.suppress(FileNotFoundError):
                    (runs / LATEST).unlink()
            else:
                point_latest(runs, newest.name)
            return newest
        finally:
            os.close(guard)  # lets go of the lock
    except OSError as exc:
        print(f"warning: {runs / LATEST} not updated ({exc.strerror or exc})", file=sys.stderr)
        return None


def in_folder(path: Path, folder: Path) -> bool:
    """Whether `path` names an entry of `folder` (symlinks followed, so runs/X and ./runs/X are alike)."""
    return Path(path).absolute().parent.resolve() == Path(folder).resolve()


def point_latest(runs: Path, name: str) -> None:
    """runs/latest -> name, atomically: a symlink made beside it and renamed onto it; else a text file."""
    path = runs / LATEST
    tmp = runs / f".{LATEST}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.symlink(name, tmp, target_is_directory=True)
    except FileExistsError:
        raise
    except (OSError, NotImplementedError):  # no symlinks here (FAT, exFAT, some network drives)
        atomic_write(path, name + "\n")
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resolve_run_dir(path: Path) -> Path:
    """A run folder as given on the command line: `latest` is the run runs/latest names (any DIR/latest too)."""
    path = Path(path)
    if path.name != LATEST:
        return path
    if path == Path(LATEST) and not os.path.lexists(path):
        path = RUNS / LATEST
    if path.is_symlink():
        target = path.parent / os.readlink(path)
    elif path.is_file():  # written where there are no symlinks
        name = path.read_text().strip()
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"{path}: damaged (expected the name of a run folder beside it)")
        target = path.parent / name
    elif path.is_dir():  # a run folder that happens to be called latest
        return path
    else:
        raise UserError(
            f"{path}: no finished run yet (it names the newest run in {path.parent}/ once one finishes); "
            "train one with: mnist-mlp train"
        )
    if not target.is_dir():
        raise UserError(f"{path} names {target}, which no longer exists")
    return target
