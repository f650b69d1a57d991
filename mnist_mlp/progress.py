"""What a run tells the person watching it: a progress bar, one line per epoch and a closing summary."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TextIO

from mnist_mlp.history import EPOCH, LEARNING_RATE, SECONDS, accuracy_column, loss_column
from mnist_mlp.results import Listener, RunResult


class Console(Listener):
    """Lines on stdout: the set-up, progress within the epoch, one line per epoch, the closing summary.

    In a terminal the progress is one bar rewritten in place ('\\r'); elsewhere (CI logs, pipes) it is a
    plain line at each quarter of an epoch. --quiet: only the closing summary.
    """

    BAR_WIDTH = 30
    REPORTS_PER_EPOCH = 4  # plain-line progress when stdout is not a terminal

    def __init__(self, epochs: int, quiet: bool = False, stream: TextIO | None = None, batch_size: int | None = None):
        self.epochs, self.quiet, self.batch_size = epochs, quiet, batch_size
        self.stream = stream or sys.stdout
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar_length = 0  # characters of the bar now on screen (terminal only)
        self._reported = (0, 0)  # (epoch, quarter) of the last plain progress line
        self.result: RunResult | None = None

    def say(self, text: str, always: bool = False) -> None:
        if always or not self.quiet:
            self.end_line()
            print(text, file=self.stream, flush=True)

    def end_line(self) -> None:
        """Wipe the progress bar, so what comes next (a line, an error on stderr) starts on a clean line."""
        if self._bar_length:
            self.stream.write("\r" + " " * self._bar_length + "\r")
            self.stream.flush()
            self._bar_length = 0

    def on_call(self, epoch: int, step: int, steps_per_epoch: int, running_loss: float, seconds: float) -> None:
        if self.quiet or step >= steps_per_epoch:  # the epoch line follows at once
            return
        if self.terminal:
            done = self.BAR_WIDTH * step // steps_per_epoch
            bar = f"[{'#' * done}{'.' * (self.BAR_WIDTH - done)}]"
            text = (
                f"epoch {epoch:>3}/{self.epochs} {bar} {step}/{steps_per_epoch} steps  "
                f"{self._speed(step, seconds)}  loss {running_loss:.4f}"
            )
            self.stream.write("\r" + text.ljust(self._bar_length))
            self.stream.flush()
            self._bar_length = len(text)
            return
        quarter = self.REPORTS_PER_EPOCH * step // steps_per_epoch
        if quarter > 0 and (epoch, quarter) > self._reported:
            self._reported = (epoch, quarter)
            self.say(
                f"epoch {epoch:>3}/{self.epochs}  step {step}/{steps_per_epoch} ({step / steps_per_epoch:.0%})  "
                f"{self._speed(step, seconds)}  running loss {running_loss:.4f}"
            )

    def _speed(self, steps: int, seconds: float) -> str:
        """Images per second when the batch size is known, else steps per second."""
        rate = steps / max(seconds, 1e-9)
        return f"{rate * self.batch_size:,.0f} images/s" if self.batch_size else f"{rate:,.0f} steps/s"

    def on_start(self, info: dict) -> None:
        self.say(
            f"training {info['architecture']} on {info['device']}; data: {info['data']} "
            f"({info['train_images']:,} training images); output: {info['out']}"
        )

    def on_epoch(self, row: dict) -> None:
        def figures(split: str) -> str:
            return f"{row[accuracy_column(split)]:.2%} (loss {row[loss_column(split)]:.4f})"

        validation = f"  val {figures('validation')}" if accuracy_column("validation") in row else ""
        self.say(
            f"epoch {row[EPOCH]:>3}/{self.epochs}  lr {row[LEARNING_RATE]:.3g}  "
            f"train {figures('train')}{validation}  test {figures('test')}  {row[SECONDS]:.2f} s"
        )

    def on_finish(self, result: RunResult) -> None:
        self.result = result  # the closing lines wait for on_close: other listeners may still be writing

    def on_close(self) -> None:
        result = self.result
        plots = sorted(p.name for p in result.run.plots.glob("*.png")) if result.run.plots.is_dir() else []
        if plots:
            self.say(f"plots in {result.run.plots}: {', '.join(plots)}", always=True)
        tensorboard = result.run.tensorboard
        if tensorboard.is_dir():
            self.say(
                f"TensorBoard logs in {tensorboard} (view: {tensorboard_command()} --logdir {tensorboard})", always=True
            )
        metrics = result.metrics
        errors = metrics["per_digit_test_error"]
        worst = max(range(10), key=lambda d: errors[d])
        model = metrics.get("model_epoch", metrics["epochs"])
        best = f", the model of epoch {model} (lowest {monitored_name(metrics)})" if model != metrics["epochs"] else ""
        self.say(
            f"test accuracy {metrics['test_accuracy']:.2%}, test error {metrics['test_error']:.2%}, "
            f"mean per-digit error {metrics['mean_per_digit_test_error']:.2%}, "
            f"worst digit {worst} ({errors[worst]:.2%}) after {plural(metrics['epochs'], 'epoch')}{best} "
            f"({metrics['seconds_total']:.1f} s training)",
            always=True,
        )


def plural(count: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def monitored_name(metrics: dict) -> str:
    return "validation loss" if loss_column("validation") in metrics else "training loss"


def tensorboard_command() -> str:
    """`tensorboard`, spelled with its path when it sits beside this Python (a venv the shell has not activated)."""
    beside = Path(sys.executable).parent / "tensorboard"
    return str(beside) if beside.is_file() and shutil.which("tensorboard") != str(beside) else "tensorboard"
