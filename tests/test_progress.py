"""The console: a one-line bar in a terminal, plain periodic lines elsewhere, --quiet, and the closing lines."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mnist_mlp.progress import Console
from mnist_mlp.rundir import RunDir
from tests.conftest import child_env

STEPS = 1100  # 55,000 images in batches of 50, reported after every call of 200 steps
CALLS = [*range(200, STEPS, 200), STEPS]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def epoch_row(epoch: int) -> dict:
    return {"epoch": epoch, "learning_rate": 0.1, "train_accuracy": 0.9, "train_loss": 0.3, "test_accuracy": 0.89,
            "test_loss": 0.35, "seconds": 0.5}  # fmt: skip


def play(console: Console, epochs: int = 2) -> None:
    """What a run calls: start, each compiled call, each epoch's row."""
    console.on_start({"architecture": "784-100-100-10", "device": "CPU", "data": "test", "train_images": 55000,
                      "out": "runs/x"})  # fmt: skip
    for epoch in range(1, epochs + 1):
        for step in CALLS:
            console.on_call(epoch, step, STEPS, running_loss=1.0 / step, seconds=step / 2000)
        console.on_epoch(epoch_row(epoch))


def finished(tmp_path, plots: tuple[str, ...] = ()) -> SimpleNamespace:
    """A stand-in for RunResult: a run folder (with the given plot files) and its metrics."""
    run = RunDir(tmp_path)
    if plots:
        run.plots.mkdir()
        for name in plots:
            (run.plots / name).write_bytes(b"png")
    errors = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.02]
    metrics = {"test_accuracy": 0.95, "test_error": 0.05, "mean_per_digit_test_error": 0.047,
               "per_digit_test_error": errors, "epochs": 2, "seconds_total": 1.0}  # fmt: skip
    return SimpleNamespace(run=run, metrics=metrics)


def test_without_a_terminal_progress_is_plain_lines_at_most_three_per_epoch():
    stream = io.StringIO()
    play(Console(2, stream=stream, batch_size=50))
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    progress = [line for line in text.splitlines() if " step " in line]
    assert len(progress) == 6  # 400 (36%), 600 (55%), 1000 (91%) of each epoch: the quarters crossed
    pattern = r"epoch +[12]/2  step \d+/1100 \(\d+%\)  100,000 images/s  running loss \d\.\d{4}"
    assert all(re.fullmatch(pattern, line) for line in progress), progress
    epoch_lines = [i for i, line in enumerate(text.splitlines()) if re.match(r"epoch +\d/2  lr", line)]
    assert len(epoch_lines) == 2


def test_in_a_terminal_the_bar_stays_on_one_line_until_the_epoch_line():
    stream = Terminal()
    console = Console(2, stream=stream, batch_size=50)
    play(console, epochs=1)
    text = stream.getvalue()
    start, epoch_line = text.split("\n")[0], text.split("\n")[1]
    assert start.startswith("training ")
    frames = epoch_line.split("\r")
    bars = [frame for frame in frames if "[" in frame]
    assert len(bars) == len(CALLS) - 1  # one redraw per call; the epoch's last call is followed by its line
    assert all(re.match(r"epoch +1/2 \[#*\.*\] \d+/1100 steps  100,000 images/s  loss ", bar) for bar in bars)
    assert "[" + "#" * 5 in bars[0] and frames[-1].startswith("epoch   1/2  lr")  # wiped, then the epoch line
    assert frames[-2].strip() == ""


def test_steps_per_second_when_the_batch_size_is_unknown():
    stream = io.StringIO()
    play(Console(1, stream=stream), epochs=1)
    assert "2,000 steps/s" in stream.getvalue()


def test_quiet_prints_only_the_closing_summary(tmp_path):
    stream = Terminal()
    console = Console(2, quiet=True, stream=stream, batch_size=50)
    play(console)
    console.on_finish(finished(tmp_path, plots=("loss.png", "summary.png")))
    console.on_close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        f"plots in {tmp_path / 'plots'}: loss.png, summary.png",
        "test accuracy 95.00%, test error 5.00%, mean per-digit error 4.70%, worst digit 8 (9.00%) "
        "after 2 epochs (1.0 s training)",
    ]


def test_the_last_lines_name_the_plots_and_tensorboard_then_the_headline(tmp_path):
    (tmp_path / "tb").mkdir()
    stream = io.StringIO()
    console = Console(2, stream=stream)
    console.on_finish(finished(tmp_path, plots=("summary.png", "accuracy.png")))
    assert stream.getvalue() == ""  # the closing lines wait until every listener has finished
    console.on_close()
    plots_line, tensorboard_line, headline = stream.getvalue().splitlines()
    assert plots_line == f"plots in {tmp_path / 'plots'}: accuracy.png, summary.png"
    assert f"tensorboard --logdir {tmp_path / 'tb'}" in tensorboard_line  # bare or with the venv's path
    assert headline.startswith("test accuracy 95.00%, test error 5.00%, mean per-digit error 4.70%, worst digit 8")


def test_end_line_wipes_a_bar_before_an_error_is_printed():
    stream = Terminal()
    console = Console(1, stream=stream, batch_size=50)
    console.on_call(1, 200, STEPS, 0.5, 0.1)
    console.end_line()
    shown = stream.getvalue()
    bar = shown.split("\r")[1]
    assert bar.startswith("epoch   1/1 [") and shown == "\r" + bar + "\r" + " " * len(bar) + "\r"
    console.end_line()  # nothing on screen: nothing written
    assert stream.getvalue() == shown


@pytest.mark.slow
def test_train_with_stdout_in_a_pipe_prints_lines_and_no_tensorflow_noise(tmp_path, mnist_dir):
    """A real `mnist-mlp train` with stdout and stderr captured, as in CI."""
    command = [sys.executable, "-m", "mnist_mlp", "train", "--out", str(tmp_path / "run"), "--set", "train.epochs=2",
               "--set", "data.train_limit=20000", "--set", "train.steps_per_call=50"]  # fmt: skip
    env = child_env(MNIST_MLP_DATA_DIR=str(mnist_dir))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\r" not in done.stdout
    lines = done.stdout.splitlines()
    assert sum(" step " in line for line in lines) == 6  # 400 steps per epoch, calls of 50: 25/50/75%
    assert lines[-3].startswith("plots in ") and lines[-2].startswith("TensorBoard logs in ")
    assert lines[-1].startswith("test accuracy ")


def close(console: Console, result) -> None:
    """The run's end as the console sees it: the result, then the closing lines once every listener is done."""
    console.on_finish(result)
    console.on_close()


def test_the_closing_line_counts_one_epoch_in_the_singular_and_names_an_earlier_exported_epoch(tmp_path):
    stream = io.StringIO()
    one = finished(tmp_path)
    one.metrics["epochs"] = 1
    close(Console(1, stream=stream), one)
    assert "after 1 epoch (1.0 s training)" in stream.getvalue()
    stopped = finished(tmp_path)
    stopped.metrics |= {"epochs": 7, "model_epoch": 4, "validation_loss": 0.1}
    close(Console(9, stream=stream), stopped)
    assert "after 7 epochs, the model of epoch 4 (lowest validation loss) (1.0 s training)" in stream.getvalue()
