"""What a run tells the person watching it: one line per epoch and a closing summary."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from mnist_mlp.run import RunResult


class Listener:
    """Hooks a training run calls; subclasses override what they need."""

    def on_start(self, info: dict) -> None: ...

    def on_call(self, epoch: int, step: int, steps_per_epoch: int, running_loss: float, seconds: float) -> None: ...

    def on_epoch(self, row: dict) -> None: ...

    def on_finish(self, result: RunResult) -> None: ...


class Console(Listener):
    """Plain lines on stdout: the set-up, one line per epoch, the headline figures. --quiet: only the figures."""

    def __init__(self, epochs: int, quiet: bool = False, stream: TextIO | None = None):
        self.epochs, self.quiet = epochs, quiet
        self.stream = stream or sys.stdout

    def say(self, text: str, always: bool = False) -> None:
        if always or not self.quiet:
            print(text, file=self.stream, flush=True)

    def on_start(self, info: dict) -> None:
        self.say(
            f"training {info['architecture']} on {info['device']}; data: {info['data']} "
            f"({info['train_images']:,} training images); output: {info['out']}"
        )

    def on_epoch(self, row: dict) -> None:
        validation = (
            f"  val {row['validation_accuracy']:.2%} (loss {row['validation_loss']:.4f})"
            if "validation_accuracy" in row
            else ""
        )
        self.say(
            f"epoch {row['epoch']:>3}/{self.epochs}  lr {row['learning_rate']:.3g}  "
            f"train {row['train_accuracy']:.2%} (loss {row['train_loss']:.4f}){validation}  "
            f"test {row['test_accuracy']:.2%} (loss {row['test_loss']:.4f})  {row['seconds']:.2f} s"
        )

    def on_finish(self, result: RunResult) -> None:
        metrics = result.metrics
        errors = metrics["per_digit_test_error"]
        worst = max(range(10), key=lambda d: errors[d])
        self.say(
            f"test accuracy {metrics['test_accuracy']:.2%}, test error {metrics['test_error']:.2%}, "
            f"mean per-digit error {metrics['mean_per_digit_test_error']:.2%}, "
            f"worst digit {worst} ({errors[worst]:.2%}) after {metrics['epochs']} epochs "
            f"({metrics['seconds_total']:.1f} s training)",
            always=True,
        )
