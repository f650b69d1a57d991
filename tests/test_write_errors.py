"""Every write of a run said as what failed: each write site of `mnist-mlp train` given an injected ENOSPC (EIO,
EROFS) in turn, then a real full file system (a small tmpfs, root only), then a folder removed under a running
training. One line naming the file, exit 1, never a traceback, and a resumed run equal to a straight one."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp import cli
from mnist_mlp.data import DATA_DIR_ENV
from mnist_mlp.rundir import RunDir
from mnist_mlp.write_errors import WriteFailed, as_write_failure, error_code
from tests.conftest import child_env
from tests.tmpfs import fill, mounted_tmpfs

SMALL = ["--set", "train.epochs=2", "--set", "data.train_limit=500", "--set", "data.test_limit=200",
         "--set", "model.hidden=[16]", "--set", "runtime.device=cpu", "--set", "runtime.jit_compile=false",
         "--set", "train.steps_per_call=5", "--quiet"]  # fmt: skip
# What TensorFlow raises for ENOSPC, as seen on a 1 MB tmpfs (SaveV2: checkpoints and the SavedModel's variables).
TF_DISK_FULL = ("{{function_node __wrapped__SaveV2_dtypes_7_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
                "{}/variables_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; No space left on device "
                "[Op:SaveV2]")  # fmt: skip
FULL_LINE = re.compile(r"^error: no space left on device writing (\S+) \([\d,]+\.\d MB free\); free space, then: (.+)$")


class NoPlotProcesses:
    """PlotWorker without processes (as when one fails): PlotWriter draws in this process, where faults are injected."""

    def submit(self, job) -> bool:
        return False

    def wait(self) -> None:
        return None  # as a failed worker: PlotWriter draws here

    def close(self) -> None: ...


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, mnist_dir) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    return tmp_path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, mnist_dir) -> RunDir:
    """The run every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli.main(["train", "--out", str(out), "--set", f"data.dir={mnist_dir}", *SMALL]) == 0
    return RunDir.open(out)


def train(capsys, *argv) -> tuple[int, str]:
    status = cli.main(["train", *map(str, argv)])
    return status, capsys.readouterr().err


def checkpoint_weights(run: RunDir) -> list[np.ndarray]:
    from mnist_mlp.model import MLP

    config = run.read_config()
    model = MLP(config.model, config.seed)
    run.restore_checkpoint(model)
    return [v.numpy() for v in model.variables_in_order]


def without(mapping: dict, *keys: str) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


def assert_same_run(got: RunDir, expected: RunDir) -> None:
    """The same weights, history, metrics, predictions and weights file as `expected` (timings aside)."""
    for a, b in zip(checkpoint_weights(got), checkpoint_weights(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [without(r, "seconds") for r in got.read_history()] == [
        without(r, "seconds") for r in expected.read_history()
    ]
    assert without(got.read_metrics(), "seconds_total") == without(expected.read_metrics(), "seconds_total")
    np.testing.assert_array_equal(np.load(got.test_predictions_file), np.load(expected.test_predictions_file))
    for name, array in expected.read_weights().items():
        np.testing.assert_array_equal(got.read_weights()[name], array)
    assert (got.saved_model / "saved_model.pb").is_file()
    hidden = sorted(str(p.relative_to(got.path)) for p in got.path.rglob(".*") if "tb" not in p.parts)
    assert hidden == [], hidden  # no temporary file or folder left


def nth_call(n: int, matches: Callable[..., bool], fault: Callable[..., BaseException], real: Callable):
    """`real`, but raising fault(*args) at the n-th call whose arguments `matches`."""
    calls = []

    def wrapper(*args, **kwargs):
        if matches(*args, **kwargs):
            calls.append(args)
            if len(calls) == n:
                raise fault(*args)
        return real(*args, **kwargs)

    return wrapper


def os_error(code: int) -> Callable[..., OSError]:
    return lambda src, dst, *_: OSError(code, os.strerror(code), str(src), None, str(dst))


def replacing(name: str, n: int = 1, code: int = errno.ENOSPC):
    """(os.replace's stand-in, which fails the n-th rename onto a file or folder called `name`)."""
    return nth_call(n, lambda src, dst, *_, **__: Path(dst).name == name, os_error(code), os.replace)


def tf_disk_full(where: str) -> Callable[..., BaseException]:
    import tensorflow as tf

    return lambda *_args, **_kwargs: tf.errors.ResourceExhaustedError(None, None, TF_DISK_FULL.format(where))


def inject(monkeypatch, site: str, code: int = errno.ENOSPC) -> str:
    """Make `site` fail once (in the second epoch where it is written every epoch); returns the file it names."""
    import tensorflow as tf

    from mnist_mlp import tensorboard

    if site in ("history.csv", "weights.npz", "state.json"):
        monkeypatch.setattr(os, "replace", replacing(site, n=2, code=code))
        return f"run/{'checkpoints/' if site == 'state.json' else ''}{site}"
    if site in ("test_predictions.npy", "metrics.json", "loss.png"):
        monkeypatch.setattr(os, "replace", replacing(site, code=code))
        return f"run/{'plots/' if site.endswith('.png') else ''}{site}"
    if site == "checkpoint folder":  # the rename of the complete folder into place
        monkeypatch.setattr(os, "replace", replacing("epoch-0002", code=code))
        return "run/checkpoints/epoch-0002"
    if site == "checkpoint files":  # TensorFlow writing the files
        real = tf.train.Checkpoint.write
        fault = tf_disk_full("run/checkpoints/.tmp-x/ckpt")
        monkeypatch.setattr(tf.train.Checkpoint, "write", nth_call(2, lambda *_: True, fault, real))
        return "run/checkpoints/epoch-0002"
    if site == "saved_model":
        monkeypatch.setattr(tf.saved_model, "save", nth_call(1, lambda *_, **__: True, tf_disk_full("x"), None))
        return "run/saved_model"
    if site == "tb":
        message = (
            "{{function_node __wrapped__WriteSummary}} run/tb/train/events; No space left on device [Op:WriteSummary]"
        )
        fault = lambda *_args, **_kwargs: tf.errors.ResourceExhaustedError(None, None, message)  # noqa: E731
        real = tensorboard.write_histogram
        monkeypatch.setattr(tensorboard, "write_histogram", nth_call(2, lambda *_: True, fault, real))
        return "run/tb"
    raise AssertionError(site)


SITES = ["history.csv", "checkpoint files", "checkpoint folder", "state.json", "weights.npz", "tb",
         "test_predictions.npy", "loss.png", "saved_model", "metrics.json"]  # fmt: skip


@pytest.mark.parametrize("site", SITES)
def test_a_full_disk_at_each_write_is_one_line_and_the_run_resumes_to_a_straight_runs_end(
    site, in_tmp, capsys, monkeypatch, straight
):
    monkeypatch.setattr("mnist_mlp.plot_worker.PlotWorker", NoPlotProcesses)
    with monkeypatch.context() as faults:
        path = inject(faults, site)
        status, err = train(capsys, "--out", "run", *SMALL)
    assert status == 1 and err.count("\n") == 1, err
    match = FULL_LINE.match(err.strip())
    assert match and match[1] == path and match[2] == "mnist-mlp train --resume run", err
    line = err.strip()
    status, err = train(capsys, "--resume", "run", "--quiet")
    assert status == 0, err
    assert_same_run(RunDir.open(in_tmp / "run"), straight)
    print(f"\n{site}: {line}")


@pytest.mark.parametrize(
    ("code", "says", "then"),
    [
        (errno.EIO, "input/output error writing run/history.csv (the disk or its connection failed)",
         "once the disk is writable again: mnist-mlp train --resume run"),
        (errno.EROFS, "read-only file system writing run/history.csv (the disk was mounted or remounted read-only)",
         "once the disk is writable again: mnist-mlp train --resume run"),
        (errno.EDQUOT, "disk quota exceeded writing run/history.csv (",
         "free space, then: mnist-mlp train --resume run"),
    ],
)  # fmt: skip
def test_a_failing_or_read_only_disk_is_one_line_too(code, says, then, in_tmp, capsys, monkeypatch):
    monkeypatch.setattr("mnist_mlp.plot_worker.PlotWorker", NoPlotProcesses)
    with monkeypatch.context() as faults:
        inject(faults, "history.csv", code)
        status, err = train(capsys, "--out", "run", *SMALL)
    assert status == 1 and err.startswith(f"error: {says}") and err.strip().endswith(f"; {then}"), err
    assert err.count("\n") == 1
    print(f"\n{errno.errorcode[code]}: {err.strip()}")


def test_a_full_disk_before_anything_was_kept_says_to_train_again_and_leaves_nothing(in_tmp, capsys, monkeypatch):
    monkeypatch.setattr("mnist_mlp.plot_worker.PlotWorker", NoPlotProcesses)
    with monkeypatch.context() as faults:
        faults.setattr(os, "link", nth_call(1, lambda *_: True, os_error(errno.ENOSPC), os.link))  # config.yaml
        status, err = train(capsys, "--out", "run", *SMALL)
    assert status == 1 and err.count("\n") == 1
    assert FULL_LINE.match(err.strip()).groups() == ("run/config.yaml", "run the same command again")
    with monkeypatch.context() as faults:
        faults.setattr(os, "replace", replacing("history.csv"))  # the first epoch's
        status, err = train(capsys, "--out", "run", *SMALL)
    assert status == 1 and err.count("\n") == 1
    assert FULL_LINE.match(err.strip()).groups() == (
        "run/history.csv",
        "run the same command again (nothing of this run was kept)",
    )
    assert not (in_tmp / "run").exists()
    print(f"\nconfig.yaml, history.csv of epoch 1: {err.strip()}")


def test_a_full_disk_when_resuming_keeps_the_run_resumable(in_tmp, capsys, monkeypatch, straight):
    monkeypatch.setattr("mnist_mlp.plot_worker.PlotWorker", NoPlotProcesses)
    assert train(capsys, "--out", "run", *SMALL, "--set", "train.epochs=1")[0] == 0
    with monkeypatch.context() as faults:  # config.yaml records train.epochs=2 first
        faults.setattr(os, "replace", replacing("config.yaml"))
        status, err = train(capsys, "--resume", "run", "--set", "train.epochs=2")
    assert status == 1 and FULL_LINE.match(err.strip()).groups() == ("run/config.yaml", "mnist-mlp train --resume run")
    assert train(capsys, "--resume", "run", "--set", "train.epochs=2")[0] == 0
    assert_same_run(RunDir.open(in_tmp / "run"), straight)


def test_resource_exhausted_is_memory_only_when_it_is_about_memory():
    import tensorflow as tf

    memory = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [784,100000]")
    disk = tf.errors.ResourceExhaustedError(None, None, TF_DISK_FULL.format("runs/x/saved_model"))
    quota = tf.errors.ResourceExhaustedError(None, None, "runs/x/tb/events; Disk quota exceeded [Op:WriteSummary]")
    assert error_code(memory) is None and as_write_failure(memory, Path("runs/x")) is None
    assert error_code(disk) == errno.ENOSPC and error_code(quota) == errno.EDQUOT
    failure = as_write_failure(disk, Path("runs/x"))
    assert isinstance(failure, WriteFailed) and str(failure).startswith("no space left on device writing runs/x (")
    assert as_write_failure(OSError(errno.EPIPE, "Broken pipe"), Path("runs/x")) is None  # not a disk's


def test_a_run_folder_removed_under_a_training_is_one_line(in_tmp, capsys, monkeypatch):
    """Removed between two epochs, and removed while TensorFlow wrote a checkpoint (which makes its folders again)."""
    import tensorflow as tf

    monkeypatch.setattr("mnist_mlp.plot_worker.PlotWorker", NoPlotProcesses)
    real_write = RunDir.write_history

    def removed_then_written(run, rows):
        if len(rows) == 2:
            shutil.rmtree(run.path)
        real_write(run, rows)

    with monkeypatch.context() as faults:
        faults.setattr(RunDir, "write_history", removed_then_written)
        status, err = train(capsys, "--out", "run", *SMALL)
    assert (status, err) == (
        1,
        "error: run no longer exists (removed while writing run/history.csv); then: train again\n",
    )
    real_checkpoint_write = tf.train.Checkpoint.write

    def removed_meanwhile(checkpoint, prefix, *args, **kwargs):
        if "epoch" not in prefix and (in_tmp / "run" / "history.csv").is_file():  # epoch 1's, with the run set up
            shutil.rmtree(in_tmp / "run")
        return real_checkpoint_write(checkpoint, prefix, *args, **kwargs)

    with monkeypatch.context() as faults:
        faults.setattr(tf.train.Checkpoint, "write", removed_meanwhile)
        status, err = train(capsys, "--out", "run", *SMALL)
    assert (status, err) == (
        1,
        "error: run no longer exists (removed while writing run/checkpoints/epoch-0001); then: train again\n",
    )
    print(f"\nremoved: {err.strip()}")


# A real full file system: a small tmpfs, filled but for some free bytes, so that the run fails wherever its next
# write no longer fits; then the space is freed and the run resumed.

FREE = [4096 * pages for pages in (1, 3, 14, 18, 30, 45, 60, 120)]
# Nothing may complain on stderr after the one line (a half-written file object collected later, say).
NO_LATE_COMPLAINTS = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.slow
@NO_LATE_COMPLAINTS
def test_a_real_full_disk_at_many_points_then_resume_equals_a_straight_run(tmp_path, capsys, monkeypatch, mnist_dir,
                                                                           straight):  # fmt: skip
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    lines, finished = {}, []
    with mounted_tmpfs(tmp_path / "disk", size="4m") as disk:
        monkeypatch.chdir(disk)
        for free in FREE:
            filler = fill(disk, leave=free)
            status, err = train(capsys, "--out", "run", *SMALL)
            filler.unlink()
            if status == 0:
                finished.append(free)
            else:
                assert status == 1 and err.count("\n") == 1 and "Traceback" not in err, err
                match = FULL_LINE.match(err.strip())
                assert match, err
                lines[free] = err.strip()
                again = (
                    ["--resume", "run"] if match[2].startswith("mnist-mlp train --resume") else ["--out", "run", *SMALL]
                )
                status, err = train(capsys, *again, "--quiet")
                assert status == 0, err
            assert_same_run(RunDir.open(disk / "run"), straight)
            shutil.rmtree(disk / "run")
    sites = {FULL_LINE.match(line)[1] for line in lines.values()}
    print(f"\ntmpfs: {len(lines)} full-disk failures at {len(sites)} sites, each resumed to the straight run's end:")
    for free, line in lines.items():
        print(f"  {free // 1024} KB free: {line}")
    assert len(sites) >= 4  # the fill levels reach several write sites, not one


@pytest.mark.slow
@NO_LATE_COMPLAINTS
def test_the_plot_processes_on_a_full_disk_are_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch, mnist_dir,
                                                                            straight):  # fmt: skip
    """The plots are drawn by worker processes: a full disk there, then the in-process redraw, is still one line."""
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    with mounted_tmpfs(tmp_path / "disk", size="4m") as disk:
        monkeypatch.chdir(disk)
        real_write = RunDir.write_predictions

        def then_full(run, predictions):  # the last file before the plots: the disk fills right after it
            real_write(run, predictions)
            fill(disk, leave=0)

        with monkeypatch.context() as faults:
            faults.setattr(RunDir, "write_predictions", then_full)
            faults.setattr("mnist_mlp.export.SavedModelWriter.on_finish", lambda *_: None)  # only the plots write
            status, err = train(capsys, "--out", "run", *SMALL)
        (disk / "filler").unlink()
        assert status == 1 and err.count("\n") == 1, err
        match = FULL_LINE.match(err.strip())
        assert match and match[1].startswith("run/plots/") and match[2] == "mnist-mlp train --resume run", err
        assert train(capsys, "--resume", "run", "--quiet")[0] == 0
        assert_same_run(RunDir.open(disk / "run"), straight)
    print(f"\nplot processes: {match[0]}")


@pytest.mark.slow
def test_rm_rf_of_a_training_run_folder_at_random_moments_is_one_line(tmp_path, mnist_dir):
    """The folder removed by another process (rm -rf) while the run trains, five times at random moments."""
    env = child_env(**{DATA_DIR_ENV: str(mnist_dir)})
    many = [*SMALL, "--set", "train.epochs=200"]
    rng = np.random.default_rng(0)
    outcomes = []
    for attempt in range(5):
        run = tmp_path / f"run{attempt}"
        child = subprocess.Popen([sys.executable, "-m", "mnist_mlp", "train", "--out", str(run), *many],
                                 stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        while not (run / "history.csv").exists() and child.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 1.0))
        while run.exists():  # as rm -rf, again while the run makes new files in it
            shutil.rmtree(run, ignore_errors=True)
        try:
            err = child.communicate(timeout=120)[1]
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGKILL)
        assert child.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        # The outermost folder gone when the run noticed: the run's, or one inside it while rm -rf, which removes
        # the deepest first, has not reached the run's own yet (CI once saw run1/checkpoints).
        assert re.match(rf"^error: {run}(/\S+)? no longer exists \(removed while writing {run}/\S+\); then: train "
                        "again$", err.strip()), err  # fmt: skip
        outcomes.append(err.strip().split("writing ")[1].split(")")[0].removeprefix(f"{run}/"))
    print(f"\nrm -rf while training, 5 times: one line each, written when it noticed: {outcomes}")
