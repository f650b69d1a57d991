"""One process writes a run folder at a time: two `train --resume` of one interrupted run released at the same instant,
20 times; a second train or sweep on a folder in use refused in one line before it does anything; and the readers
(evaluate, plot, predict, serve), which take no lock, reading a run while it trains."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlp import cli
from mnist_mlp.data import DATA_DIR_ENV
from mnist_mlp.folder_lock import lock_folder
from mnist_mlp.rundir import RunDir
from tests.conftest import child_env
from tests.test_write_errors import SMALL, assert_same_run

ATTEMPTS = 20
REFUSAL = r"^error: {dir} is in use by process {pid} \(mnist-mlp train, since \d\d:\d\d:\d\d\)\n$"


def interrupted_copy(finished: Path, to: Path) -> Path:
    """A 2-epoch run as a kill after its first epoch's checkpoint leaves it: `finished` is the same config trained
    for 1 epoch (the learning rate of epoch 1 does not depend on train.epochs), without what only the end writes."""
    shutil.copytree(finished, to)
    config = (to / "config.yaml").read_text()
    (to / "config.yaml").write_text(config.replace("  epochs: 1\n", "  epochs: 2\n"))
    for name in ("metrics.json", "test_predictions.npy"):
        (to / name).unlink()
    for name in ("saved_model", "plots"):
        shutil.rmtree(to / name)
    return to


def resumer(connection, barrier) -> None:
    """A worker process: for each folder it is sent, wait for the other worker, then `train --resume` it in-process."""
    from mnist_mlp import import_tensorflow_quietly, plot_worker, plots
    from tests.test_write_errors import NoPlotProcesses

    import_tensorflow_quietly()
    # The plots are not what is tested here (and cost the most on 2 cores): predictions are kept, nothing drawn.
    plot_worker.PlotWorker, plots.write_plots = NoPlotProcesses, lambda *_args, **_kwargs: []
    for folder in iter(connection.recv, None):
        err = io.StringIO()
        barrier.wait(timeout=600)
        try:
            with contextlib.redirect_stderr(err):
                status = cli.main(["train", "--resume", folder, "--quiet"])
        except BaseException as exc:  # reported, so that the test fails instead of waiting
            status = repr(exc)
        connection.send((os.getpid(), status, err.getvalue()))


@pytest.mark.slow
def test_two_resumes_at_the_same_instant_one_trains_the_other_is_refused_20_times(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    straight = tmp_path / "straight"
    assert cli.main(["train", "--out", str(straight), *SMALL]) == 0
    one_epoch = tmp_path / "one-epoch"
    assert cli.main(["train", "--out", str(one_epoch), *SMALL, "--set", "train.epochs=1"]) == 0

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = []
    for _ in range(2):
        mine, theirs = context.Pipe()
        process = context.Process(target=resumer, args=(theirs, barrier))  # not daemonic: train starts plot processes
        process.start()
        workers.append((mine, process))
    trained = refused = mismatches = 0
    try:
        for attempt in range(ATTEMPTS):
            folder = interrupted_copy(one_epoch, tmp_path / f"run-{attempt}")
            for connection, _ in workers:
                connection.send(str(folder))
            results = sorted((connection.recv() for connection, _ in workers), key=lambda r: str(r[1]))
            (winner, won, _), (_, lost, line) = results
            assert won == 0 and lost == 2, results
            assert re.match(REFUSAL.format(dir=re.escape(str(folder)), pid=winner), line), line
            trained, refused = trained + 1, refused + 1
            try:
                assert_same_run(RunDir.open(folder), RunDir.open(straight))
            except AssertionError:
                mismatches += 1
    finally:
        for connection, process in workers:
            connection.send(None)
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    print(f"\ntwo resumes at once: {ATTEMPTS} attempts, {trained} trained, {refused} refused in one line, "
          f"{mismatches} final folders unlike the straight run")  # fmt: skip
    assert (trained, refused, mismatches) == (ATTEMPTS, ATTEMPTS, 0)


def test_a_second_train_is_refused_in_one_line_before_it_starts_tensorflow(tmp_path, mnist_dir, capsys):
    """--resume, --overwrite and sweep on a folder some process writes: the holder named, exit 2, nothing touched."""
    from tests.conftest import folder_digest

    run = tmp_path / "run"
    assert (
        cli.main(["train", "--out", str(run), *SMALL, "--set", "train.epochs=1", "--set", f"data.dir={mnist_dir}"]) == 0
    )
    capsys.readouterr()
    before = folder_digest(run)
    with lock_folder(run, "mnist-mlp train"):
        started = time.monotonic()
        child = subprocess.run([sys.executable, "-m", "mnist_mlp", "train", "--resume", str(run)], capture_output=True,
                               text=True, env=child_env(), timeout=120)  # fmt: skip
        seconds = time.monotonic() - started
        assert child.returncode == 2 and re.match(
            REFUSAL.format(dir=re.escape(str(run)), pid=os.getpid()), child.stderr
        )
        status = cli.main(["train", "--out", str(run), "--overwrite", *SMALL, "--set", f"data.dir={mnist_dir}"])
        err = capsys.readouterr().err
        assert status == 2 and re.match(REFUSAL.format(dir=re.escape(str(run)), pid=os.getpid()), err), err
        assert not list(tmp_path.glob(".run.overwrite-*"))  # no replacement begun
    assert folder_digest(run) == before
    print(
        f"\nsecond writer refused in {seconds:.1f} s (a child process, TensorFlow not started): {child.stderr.strip()}"
    )


def test_a_second_sweep_on_one_folder_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "sweep.yaml").write_text("grid:\n  seed: [0, 1]\n")
    sweeps = tmp_path / "sweeps" / "sweep"
    sweeps.mkdir(parents=True)
    with lock_folder(sweeps, "mnist-mlp sweep"):
        status = cli.main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(sweeps)])
    err = capsys.readouterr().err
    assert status == 2 and re.match(
        rf"^error: {re.escape(str(sweeps))} is in use by process {os.getpid()} \(mnist-mlp sweep, since [\d:]+\)\n$",
        err,
    ), err
    assert list(sweeps.iterdir()) == []


@pytest.mark.slow
def test_readers_never_see_a_half_written_run_while_it_trains(tmp_path, mnist_dir, mnist_splits, capsys):
    """evaluate, plot, predict and serve, over and over, on a run that trains (and finishes) meanwhile."""
    from mnist_mlp.serve import make_server

    run = tmp_path / "run"
    digit = tmp_path / "digit.png"
    Image.fromarray(mnist_splits[1].images[0]).save(digit)
    many = [*SMALL, "--set", "train.epochs=40", "--set", "data.train_limit=2000"]  # half a minute or more
    env = child_env(**{DATA_DIR_ENV: str(mnist_dir)})
    command = [sys.executable, "-m", "mnist_mlp", "train", "--out", str(run), *many]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    calls: dict[str, int] = {}
    try:
        while not (run / "checkpoints" / "state.json").exists():
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.01)
        rng = np.random.default_rng(0)
        while child.poll() is None:
            reader = str(rng.choice(["evaluate", "plot", "predict", "serve"], p=[0.4, 0.1, 0.3, 0.2]))
            if reader == "serve":
                make_server(RunDir.open(run), "127.0.0.1", 0).server_close()
                status = 0
            else:
                status = cli.main([reader, str(run), *([str(digit)] if reader == "predict" else [])])
            err = capsys.readouterr().err
            assert status == 0 and "error" not in err, f"{reader} while training: {err}"
            calls[reader] = calls.get(reader, 0) + 1
    finally:
        child.kill() if child.poll() is None else None
    assert child.wait() == 0, child.stderr.read()
    assert RunDir.open(run).read_metrics()["epochs"] == 40
    assert sorted(p.name for p in run.rglob(".*") if "tb" not in p.parts) == []  # no temporary file left behind
    print(f"\nreaders while training: {sum(calls.values())} calls, all answered ({calls})")
    assert sum(calls.values()) >= 10


def test_a_checkpoint_replaced_while_a_reader_reads_it_is_read_again_from_state_json(tmp_path, monkeypatch):
    """evaluate, predict and serve read state.json, then the checkpoint it names; a training run may write the next
    checkpoint and remove that one in between. The reader then reads the one state.json names now."""
    from mnist_mlp.config import Config
    from mnist_mlp.model import MLP
    from mnist_mlp.rundir import CheckpointState

    config = Config().replace(**{"model.hidden": [8]})
    run = RunDir.create(tmp_path / "run", "t", config=config)
    trained = MLP(config.model, config.seed)
    run.save_checkpoint(trained, CheckpointState(1, 0, 0.0, 0.0), best=True)
    run.save_checkpoint(trained, CheckpointState(2, 0, 0.0, 0.0))
    real_path, moves = RunDir.checkpoint_path, []

    def training_moves_on(self, which="last"):
        folder = real_path(self, which)
        if not moves:  # the writer, between the reader's two looks: epoch 3 written, epoch 2 removed
            moves.append(folder.name)
            run.save_checkpoint(trained, CheckpointState(3, 0, 0.0, 0.0))
        return folder

    monkeypatch.setattr(RunDir, "checkpoint_path", training_moves_on)
    reader = MLP(config.model, seed=9)
    assert RunDir.open(run.path).restore_checkpoint(reader).epoch == 3
    assert moves == ["epoch-0002"] and not (run.checkpoints / "epoch-0002").exists()
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(trained.variables, reader.variables, strict=True))
