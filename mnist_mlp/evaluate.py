"""A saved run, evaluated again: its model restored from a checkpoint and scored on the test set.

The figures come from the code that scored the run at the end of training (Trainer.evaluate on the
run's own device, data and config), so a finished run evaluates to the numbers in its metrics file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from mnist_mlp.config import Config
from mnist_mlp.data import Mnist, load_mnist
from mnist_mlp.device import CPU, Device
from mnist_mlp.errors import GpuFailure
from mnist_mlp.gpu_check import choose_device, cpu_after
from mnist_mlp.model import MLP
from mnist_mlp.results import Evaluation, headline_metrics
from mnist_mlp.rundir import CheckpointState, RunDir
from mnist_mlp.training import Trainer


@dataclass(frozen=True)
class RunEvaluation:
    """The test figures of one checkpoint of a run, and where they came from."""

    run: RunDir
    which: str  # "last" or "best"
    checkpoint: CheckpointState
    data: str
    test: Evaluation

    @property
    def metrics(self) -> dict:
        """The test figures under the metrics file's names."""
        return headline_metrics(self.test)

    def to_dict(self) -> dict:
        """What `evaluate --json` prints: the checkpoint, the number of test images and the figures."""
        position = {"epoch": self.checkpoint.epoch, "step": self.checkpoint.step}
        return {"checkpoint": self.which, **position, "test_images": int(self.test.confusion.sum()), **self.metrics}

    def summary(self) -> str:
        """Three lines for a person: what was scored, the headline figures, the per-digit errors."""
        m = self.metrics
        where = f"epoch {self.checkpoint.epoch}"
        if self.checkpoint.step:  # an interrupted run: weights from the middle of an epoch
            where += f", after step {self.checkpoint.step} (interrupted mid-epoch)"
        per_digit = "  ".join(f"{d}: {e:.2%}" for d, e in enumerate(m["per_digit_test_error"]))
        return (
            f"{self.run.path}: {self.which} checkpoint ({where}) on {self.test.confusion.sum():,} test images "
            f"({self.data})\n"
            f"test accuracy {m['test_accuracy']:.2%}, test error {m['test_error']:.2%}, "
            f"mean per-digit error {m['mean_per_digit_test_error']:.2%}, test loss {m['test_loss']:.4f}\n"
            f"per-digit test error: {per_digit}"
        )


def restore_model(run: RunDir, which: str = "last") -> tuple[Config, MLP, CheckpointState]:
    """The run's config and an MLP built from it holding the `which` checkpoint's weights."""
    config = run.read_config()
    with tf.device(CPU):  # predict and serve classify on the CPU: an image at a time, no GPU to check
        model = MLP(config.model, config.seed)
    return config, model, run.restore_checkpoint(model, which)


def evaluate_run(run: RunDir, which: str | None = None, data_dir: Path | None = None) -> RunEvaluation:
    """Score the `which` checkpoint of `run` on its test set, the data loaded from where the run recorded
    (`data_dir` replaces it; the content must still match the recorded digest). which None: the one
    metrics.json describes, the best with early stopping (train.patience), else the last."""
    config = run.read_config()
    which = which or ("best" if config.train.patience is not None else "last")
    if data_dir is not None:
        config = config.replace(**{"data.dir": str(data_dir), "data.tfds_version": None})
    mnist = load_mnist(config.data)
    device = choose_device(config, mnist.train)
    try:
        state, test = _evaluate_on(device, run, which, config, mnist)
    except GpuFailure as failure:
        if config.runtime.device != "auto":
            raise
        state, test = _evaluate_on(cpu_after(failure, config, "evaluating"), run, which, config, mnist)
    return RunEvaluation(run, which, state, mnist.source, test)


def _evaluate_on(device: Device, run: RunDir, which: str, config: Config, mnist: Mnist) -> tuple:
    trainer = Trainer(config, mnist.train, device)
    state = run.restore_checkpoint(trainer.model, which)
    return state, trainer.evaluate(*trainer.to_device(mnist.test))
