"""The run folder: exclusive creation, replacement beside the old run, output-path checks, damaged state."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp import rundir
from mnist_mlp.config import Config
from mnist_mlp.errors import UserError
from mnist_mlp.rundir import CheckpointState, RunDir, check_out_path

FIXED_TIME = "20260101-120000"


def create_at_the_same_second(args: tuple[str, int, object]) -> str:
    """In a fresh process: wait for the others, then make a default-named run folder at one fixed time."""
    cwd, seed, barrier = args
    os.chdir(cwd)
    rundir.time.strftime = lambda _format: FIXED_TIME
    barrier.wait()
    run = RunDir.create(None, "default", config=Config().replace(seed=seed))
    return str(run.path)


def test_runs_started_at_the_same_second_each_get_their_own_folder(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(4)
    with context.Pool(4) as pool:
        paths = pool.map(create_at_the_same_second, [(str(tmp_path), seed, barrier) for seed in range(4)])
    names = sorted(Path(p).name for p in paths)
    assert names == [f"{FIXED_TIME}-default{suffix}" for suffix in ("", "-2", "-3", "-4")]
    seeds = {RunDir.open(tmp_path / p).read_config().seed for p in paths}
    assert seeds == {0, 1, 2, 3}  # each folder holds its own run's config


def claim(args: tuple[str, int, object]) -> str:
    folder, seed, barrier = args
    barrier.wait()
    try:
        RunDir.create(Path(folder), "t", config=Config().replace(seed=seed))
    except UserError as exc:
        return str(exc)
    return "claimed"


def test_of_several_runs_given_one_empty_out_folder_one_gets_it(tmp_path):
    (tmp_path / "out").mkdir()
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(4)
    with context.Pool(4) as pool:
        answers = pool.map(claim, [(str(tmp_path / "out"), seed, barrier) for seed in range(4)])
    assert answers.count("claimed") == 1
    refused = [a for a in answers if a != "claimed"]
    assert all("another run has just started here" in a or "already holds a run" in a for a in refused)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml"]


def test_an_abandoned_replacement_of_a_killed_process_is_removed_by_the_next_one(tmp_path):
    old = RunDir.create(tmp_path / "run", "t", config=Config())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".run{rundir.STAGING}{int(dead.stdout)}-abc"
    leftover.mkdir()
    mine = tmp_path / f".run{rundir.STAGING}{os.getpid()}-def"  # a live process's: left alone
    mine.mkdir()
    new = RunDir.create(tmp_path / "run", "t", overwrite=True, config=Config())
    assert not leftover.exists() and mine.exists() and old.config_file.is_file()
    new.abandon()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", mine.name])


def test_a_new_run_that_records_nothing_is_removed_again(tmp_path):
    run = RunDir.create(tmp_path / "new", "t", config=Config())
    run.abandon()
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    run = RunDir.create(tmp_path / "mine", "t", config=Config())
    run.abandon()  # a folder this run did not make: only its config.yaml goes
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("afile/sub", "afile is a file, not a folder"),
        ("afile/a/b", "afile is a file, not a folder"),
        ("/proc/run", "cannot make a run folder in /proc"),
    ],
)
def test_an_impossible_out_path_is_one_line(tmp_path, out, says):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=says):
        check_out_path(tmp_path / out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_read_only_folder_is_refused():
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # traversable by every user, unlike pytest's tmp_path under root
    try:
        base.chmod(0o755)
        (base / "ro").mkdir(mode=0o555)
        assert "Permission denied" in refusal_as_a_user(base / "ro" / "run")
        assert not (base / "ro" / "run").exists()
    finally:
        shutil.rmtree(base)


def refusal_as_a_user(out: Path) -> str:
    """check_out_path's error line for a user who may not write everywhere. Root may, so under root (as CI runs)
    the check runs in a forked child that has dropped to the `nobody` user first."""

    def attempt() -> str:
        try:
            check_out_path(out)
        except UserError as exc:
            return str(exc)
        return "accepted"

    if os.geteuid() != 0:
        return attempt()
    read, write = os.pipe()
    if (pid := os.fork()) == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        return answer.read()


def test_config_yaml_is_written_atomically(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", "t", config=Config())
    before = run.config_file.read_text()

    def dies(_fd):
        raise OSError("disk gone")

    monkeypatch.setattr(rundir.os, "fsync", dies)
    with pytest.raises(OSError, match="disk gone"):
        run.write_config(Config().replace(seed=3))
    assert run.config_file.read_text() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml"]  # no temporary file left


@pytest.fixture
def saved(tmp_path) -> tuple[RunDir, object]:
    """A run folder with one checkpoint of a small model."""
    from mnist_mlp.model import MLP

    config = Config().replace(**{"model.hidden": [8]})
    run = RunDir.create(tmp_path / "run", "t", config=config)
    model = MLP(config.model, config.seed)
    run.save_checkpoint(model, CheckpointState(1, 0, 0.0, 0.0), best=True)
    return run, model


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda c: (c / "state.json").write_text("[1, 2]"), "state.json: damaged (expected"),
        (lambda c: (c / "state.json").write_text("{"), "state.json: damaged (not JSON)"),
        (lambda c: (c / "state.json").unlink(), "state.json: missing"),
        (lambda c: shutil.rmtree(c / "epoch-0001"), "epoch-0001: missing (state.json names it as the last"),
        (lambda c: (c / "epoch-0001" / "ckpt.index").unlink(), "ckpt.index: missing"),
        (lambda c: (c / "epoch-0001" / "ckpt.data-00000-of-00001").unlink(), "ckpt.data-00000-of-00001: missing"),
        (lambda c: (c / "epoch-0001" / "ckpt.data-00000-of-00001").write_bytes(b"x" * 10), "damaged checkpoint"),
        (lambda c: (c / "epoch-0001" / "ckpt.index").write_bytes(b"garbage"), "damaged checkpoint"),
        (lambda c: shutil.rmtree(c), "checkpoints: missing"),
    ],
)
def test_damaged_checkpoint_state_names_the_file(saved, damage, says):
    run, model = saved
    damage(run.checkpoints)
    with pytest.raises(UserError, match=re.escape(says)):
        run.restore_checkpoint(model)


def test_a_checkpoint_restores_what_was_saved(saved):
    from mnist_mlp.model import MLP

    run, model = saved
    other = MLP(Config().replace(**{"model.hidden": [8]}).model, seed=9)
    assert run.restore_checkpoint(other).epoch == 1
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.variables, other.variables, strict=True))
    assert json.loads((run.checkpoints / "state.json").read_text()) == {"last": "epoch-0001", "best": "epoch-0001"}
