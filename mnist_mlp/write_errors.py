"""A failed write said as what it is: a full disk as a full disk (never as memory), a read-only or failing disk,
a folder removed while a run writes into it. One line naming the file, for every writer of a run folder.

Each write site runs inside `writing(path)`, which turns the OSError (or TensorFlow's error, whose message ends in
the system's `; No space left on device`) into WriteFailed naming `path`, the file or folder being written. A
ResourceExhaustedError that is not about the disk passes through: it is memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from mnist_mlp.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# The errors TensorFlow's file system reports by their strerror text (tsl IOError: "<context>; <strerror>").
RECOGNISED_IN_TENSORFLOW = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOENT, errno.EACCES)


class WriteFailed(UserError):
    """A file of a run (or sweep) could not be written. Not the input's fault: the CLI prints the line, exits 1."""

    def __init__(self, path: Path, code: int, detail: str = "", gone: Path | None = None):
        self.path, self.errno = Path(path), code
        super().__init__(describe(self.path, code, detail, gone))

    @property
    def run_is_gone(self) -> bool:
        """The folder written into was removed: nothing is left to resume."""
        return self.errno == errno.ENOENT

    def then(self, command: str) -> str:
        """What to do, then `command` (how to resume): '; free space, then: mnist-mlp train --resume runs/X'."""
        if self.errno in DISK_FULL:
            return f"; free space, then: {command}"
        if self.errno in (errno.EROFS, errno.EIO):
            return f"; once the disk is writable again: {command}"
        return f"; then: {command}"


def describe(path: Path, code: int, detail: str = "", gone: Path | None = None) -> str:
    """The line for a failed write of `path`; `gone`: the folder known to have been removed (ENOENT)."""
    if code == errno.ENOSPC:
        return f"no space left on device writing {path} ({free_space(path)} free)"
    if code == errno.EDQUOT:
        return f"disk quota exceeded writing {path} ({free_space(path)} free on the disk)"
    if code == errno.EROFS:
        return f"read-only file system writing {path} (the disk was mounted or remounted read-only)"
    if code == errno.EIO:
        return f"input/output error writing {path} (the disk or its connection failed)"
    if code == errno.ENOENT:
        return f"{gone or missing_folder(path)} no longer exists (removed while writing {path})"
    return f"cannot write {path} ({detail or os.strerror(code)})"


def free_space(path: Path) -> str:
    """Free space on the file system holding `path` (or its nearest existing folder), e.g. '0.2 MB'."""
    try:
        return f"{shutil.disk_usage(existing_ancestor(path)).free / 1e6:,.1f} MB"
    except OSError:
        return "unknown space"


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def missing_folder(path: Path) -> Path:
    """The outermost folder on the way to `path` that is gone (as `path` spells it)."""
    path = Path(path)
    missing = path.parent
    for folder in path.parents:
        if folder.exists() or folder == folder.parent:
            break
        missing = folder
    return missing


def error_code(exc: BaseException) -> int | None:
    """The errno of a failed write: an OSError's own, or read off a TensorFlow error's message; None otherwise."""
    if isinstance(exc, OSError):
        return exc.errno
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.OpError):
        message = str(exc)
        for code in RECOGNISED_IN_TENSORFLOW:
            if f"; {os.strerror(code)}" in message:
                return code
    return None


def as_write_failure(exc: BaseException, path: Path) -> WriteFailed | None:
    """`exc` itself when a WriteFailed; else, for an error that escaped `writing` but is plainly the disk's (full,
    read-only, failing), a WriteFailed naming the file it names or `path`; else None."""
    if isinstance(exc, WriteFailed):
        return exc
    code = error_code(exc)
    if code not in (*DISK_FULL, errno.EROFS, errno.EIO):
        return None
    return WriteFailed(getattr(exc, "filename", None) or path, code)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Raise WriteFailed naming `path` for a write that fails inside the block (FileExistsError aside: exclusive
    writes use it to say that another process won)."""
    try:
        yield
    except (WriteFailed, FileExistsError):
        raise
    except Exception as exc:
        code = error_code(exc)
        if code is None:
            raise
        raise WriteFailed(path, code, getattr(exc, "strerror", None) or "") from exc
