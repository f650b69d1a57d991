"""One writer per folder: an exclusive OS lock on a file inside it, held for as long as a command writes there.

`train` (new, --resume, --overwrite) and `sweep` take it; readers (evaluate, plot, predict, serve) do not, as
every file is written whole and renamed into place. The lock is `fcntl.flock` on FOLDER/.lock, which the kernel
releases when the process ends however it ends, so a killed run never leaves a stale lock. The holder records
its pid, command and start time in the file, for the one line a second writer gets:

    error: runs/X is in use by process 4242 (mnist-mlp train, since 10:41:07)

On release the holder removes the file (a finished folder holds nothing extra). A process that opened the file
just before it was removed may then lock a file that is no longer there; it notices (the path names another
file, or none) and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mnist_mlp.errors import UserError

LOCK_FILE = ".lock"
TRAIN_COMMAND, SWEEP_COMMAND = "mnist-mlp train", "mnist-mlp sweep"  # how a folder's lock names its holder
HOLDER_WAIT = 1.0  # seconds to wait for a holder that has just taken the lock (or is letting go) to say who it is


class FolderInUse(UserError):
    """Another process writes the folder: one line naming it, exit 2."""


class FolderLock:
    """The held lock of one folder; release() (or leaving the `with`) lets go of it and removes the file."""

    def __init__(self, folder: Path, fd: int):
        self.folder = Path(folder)
        self.fd: int | None = fd

    def moved_to(self, folder: Path) -> None:
        """The folder was renamed (a replacement run taking the old one's place): remove the file there on release."""
        self.folder = Path(folder)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            if _is_file_at(fd, self.folder / LOCK_FILE):  # not a lock file another process has made since
                os.unlink(self.folder / LOCK_FILE)
        os.close(fd)  # releases the lock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def lock_folder(folder: Path, command: str) -> FolderLock:
    """Lock the existing `folder` for `command` (e.g. "mnist-mlp train"), or raise FolderInUse naming its holder.

    Does not wait for another writer; UserError when no lock file can be made there (a read-only folder).
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    deadline = time.monotonic() + HOLDER_WAIT
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"{folder}: cannot lock it for writing ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{folder}: cannot lock it for writing ({exc.strerror or exc})") from None
            if holder is not None or time.monotonic() > deadline:
                raise FolderInUse(f"{folder} is in use by {holder or 'another process'}") from None
            # A holder that has not yet said who it is, or is letting go, or a look by in_use(): again shortly.
            time.sleep(0.01)
            continue
        if _is_file_at(fd, path):
            break
        os.close(fd)  # the file was removed by a holder that let go meanwhile: lock the one there now
    record = {"pid": os.getpid(), "command": command, "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return FolderLock(folder, fd)


@contextlib.contextmanager
def folder_locked(folder: Path, command: str) -> Iterator[FolderLock]:
    """lock_folder for the duration of a `with`, making `folder` first when there is none; a folder made here
    that holds nothing when the block ends (it failed before writing) is removed again."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    made = not folder.exists()
    if made:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{folder}: cannot make the folder ({exc.strerror or exc})") from None
    try:
        with lock_folder(folder, command) as lock:
            yield lock
    finally:
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def in_use(folder: Path) -> bool:
    """Whether some process holds `folder`'s lock now (this one included, through another lock_folder)."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: nobody writes there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def describe_holder(record: dict) -> str:
    """`process 4242 (mnist-mlp train, since 10:41:07)`; the date too when it was not today."""
    since = time.localtime(float(record["since"]))
    clock = time.strftime("%H:%M:%S" if since[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S", since)
    return f"process {int(record['pid'])} ({record['command']}, since {clock})"


def _holder(fd: int) -> str | None:
    """Who holds the lock, as a running holder recorded it; None when no live process is recorded."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        pid = int(record["pid"])
        os.kill(pid, 0)
        return describe_holder(record)
    except PermissionError:  # another user's process: it runs
        return describe_holder(record)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the one at `path` (not removed, nor replaced by another)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
