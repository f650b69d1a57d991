"""folder_lock: one writer per folder, the holder named in the refusal, nothing left behind, and the kernel's release
of a killed holder's lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mnist_mlp.errors import UserError
from mnist_mlp.folder_lock import LOCK_FILE, FolderInUse, folder_locked, in_use, lock_folder
from tests.conftest import child_env
from tests.tmpfs import mounted_tmpfs

REFUSAL = re.compile(r"^(\S+) is in use by process (\d+) \((mnist-mlp \w+), since \d\d:\d\d:\d\d\)$")

HOLD = """
import sys, time
from mnist_mlp.folder_lock import lock_folder
lock = lock_folder(sys.argv[1], "mnist-mlp train")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_lock_is_refused_naming_the_holder_and_the_first_release_removes_the_file(tmp_path):
    with lock_folder(tmp_path, "mnist-mlp train"):
        assert in_use(tmp_path)
        with pytest.raises(FolderInUse) as refused:
            lock_folder(tmp_path, "mnist-mlp sweep")
        match = REFUSAL.match(str(refused.value))
        assert match, str(refused.value)
        assert match[1] == str(tmp_path) and int(match[2]) == os.getpid() and match[3] == "mnist-mlp train"
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not in_use(tmp_path)
    assert list(tmp_path.iterdir()) == []  # a released lock leaves nothing in the folder
    lock_folder(tmp_path, "mnist-mlp train").release()  # and can be taken again


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=child_env())  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=rf"in use by process {holder.pid} \(mnist-mlp train, since "):
            lock_folder(tmp_path, "mnist-mlp train")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the dead holder's record stays...
    assert not in_use(tmp_path)
    with lock_folder(tmp_path, "mnist-mlp train"):  # ...but its lock went with it
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_taken_just_as_the_holder_lets_go_is_one_lock_not_two(tmp_path):
    """A contender that opened the file before the holder removed it must not hold that removed file's lock."""
    first = lock_folder(tmp_path, "mnist-mlp train")
    stale_fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)  # what a contender opened a moment before the release
    first.release()
    second = lock_folder(tmp_path, "mnist-mlp train")
    try:
        import fcntl

        fcntl.flock(stale_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the removed file: lockable, but no longer the lock
        assert in_use(tmp_path)
        with pytest.raises(FolderInUse):
            lock_folder(tmp_path, "mnist-mlp train")
    finally:
        os.close(stale_fd)
        second.release()


def test_folder_locked_makes_the_folder_and_removes_it_when_nothing_was_written(tmp_path):
    with folder_locked(tmp_path / "new" / "sweep", "mnist-mlp sweep"):
        assert in_use(tmp_path / "new" / "sweep")
    assert not (tmp_path / "new" / "sweep").exists()
    with folder_locked(tmp_path / "kept", "mnist-mlp sweep"):
        (tmp_path / "kept" / "trials.csv").write_text("x\n")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["trials.csv"]
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="exists and is not a folder"), folder_locked(tmp_path / "file", "x"):
        pass


def test_a_holder_that_has_not_yet_said_who_it_is_is_waited_for_briefly(tmp_path, monkeypatch):
    """Between taking the lock and recording itself a holder's file is empty: the refusal still names it."""
    import mnist_mlp.folder_lock as folder_lock

    with lock_folder(tmp_path, "mnist-mlp train"):
        record = (tmp_path / LOCK_FILE).read_text()
        (tmp_path / LOCK_FILE).write_text("")
        started = time.monotonic()
        with pytest.raises(FolderInUse, match="in use by another process"):
            lock_folder(tmp_path, "mnist-mlp train")
        assert time.monotonic() - started >= folder_lock.HOLDER_WAIT
        (tmp_path / LOCK_FILE).write_text(record)
        with pytest.raises(FolderInUse, match=f"process {os.getpid()} "):
            lock_folder(tmp_path, "mnist-mlp train")


def test_a_read_only_folder_cannot_be_locked_in_one_line(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", read_only=True) as folder, pytest.raises(UserError) as refused:
        lock_folder(folder, "mnist-mlp train")
    assert str(refused.value) == f"{folder}: cannot lock it for writing (Read-only file system)"
