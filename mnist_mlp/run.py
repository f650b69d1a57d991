"""A training run end to end: data, device, epochs, evaluation, convergence, files and checkpoints.

`train_and_evaluate` is what `mnist-mlp train` and every sweep trial call. After each epoch the run
evaluates train, validation and test, appends a row to history.csv, writes a checkpoint and the weights as NumPy;
Ctrl-C or SIGTERM finishes the current compiled call, checkpoints mid-epoch and raises Interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import tensorflow as tf

from mnist_mlp.config import Config, TrainConfig
from mnist_mlp.data import Mnist, load_mnist
from mnist_mlp.device import Device, available_memory
from mnist_mlp.errors import ConfigError, GpuFailure, UserError
from mnist_mlp.gpu_check import choose_device, cpu_after
from mnist_mlp.history import (
    BATCH_LOSS,
    DIGIT_ERROR_SPLITS,
    EPOCH,
    LEARNING_RATE,
    SECONDS,
    accuracy_column,
    dead_units_column,
    digit_error_column,
    loss_column,
    sparsity_column,
)
from mnist_mlp.progress import plural
from mnist_mlp.results import Evaluation, Listener, RunResult, Weights, headline_metrics
from mnist_mlp.rundir import CheckpointState, RunDir
from mnist_mlp.training import (
    Diverged,
    EpochProgress,
    Trainer,
    check_batches,
    learning_rate,
    memory_needed,
    train_epoch,
)


class Interrupted(Exception):
    """Training stopped on a signal after checkpointing; exit status 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(signum, message)  # both in args, so it pickles across sweep worker processes
        self.signum = signum

    def __str__(self) -> str:
        return self.args[1]

    @classmethod
    def at(cls, signum: int, run: RunDir, state: EpochProgress) -> Interrupted:
        return cls(
            signum,
            f"interrupted in epoch {state.epoch} after step {state.step}; checkpoint saved. "
            f"Resume with: mnist-mlp train --resume {run.path}",
        )


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop looks at it between compiled calls."""

    signum: int | None = None
    previous: dict = field(default_factory=dict)

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turn SIGINT and SIGTERM into a flag for the duration (main thread only; elsewhere a no-op)."""
    flag = StopFlag()

    def handler(signum, _frame):
        flag.signum = signum

    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        for signum in (signal.SIGINT, signal.SIGTERM):
            flag.previous[signum] = signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, previous in flag.previous.items():
            signal.signal(signum, previous)


def monitored_loss(row: dict) -> float:
    """What convergence and the best checkpoint watch: validation loss, else training loss; never test."""
    return row.get(loss_column("validation"), row[loss_column("train")])


def is_best(history: list[dict]) -> bool:
    """Whether the last epoch is the first to reach the lowest monitored loss so far (as best_epoch counts)."""
    losses = [monitored_loss(row) for row in history]
    return len(losses) == 1 or losses[-1] < min(losses[:-1])


def converged(history: list[dict], config: TrainConfig) -> bool:
    """No improvement of the monitored loss by more than min_delta for `patience` epochs."""
    if config.patience is None or not history:
        return False
    losses = [monitored_loss(row) for row in history]
    best, since = losses[0], 0
    for loss in losses[1:]:
        best, since = (loss, 0) if loss < best - config.min_delta else (best, since + 1)
    return since >= config.patience


def epoch_row(
    epoch: int, lr: float, progress: EpochProgress, evaluations: dict[str, Evaluation], weights: Weights
) -> dict:
    """One history.csv row: the epoch's training time and loss, each split's figures and per-digit errors, then
    each layer's share of near-zero weights and each hidden layer's share of units dead on the test set."""
    row = {
        EPOCH: epoch,
        LEARNING_RATE: lr,
        SECONDS: progress.seconds,
        BATCH_LOSS: progress.loss_sum / max(progress.step, 1),
    }
    for split, ev in evaluations.items():
        row[loss_column(split)], row[accuracy_column(split)] = ev.loss, ev.accuracy
    for split in DIGIT_ERROR_SPLITS:
        row.update({digit_error_column(split, d): float(e) for d, e in enumerate(evaluations[split].per_digit_error)})
    row.update({sparsity_column(layer): s for layer, s in enumerate(weights.sparsity(), 1)})
    row.update({dead_units_column(layer): d for layer, d in enumerate(evaluations["test"].dead_units, 1)})
    return row


def summary_metrics(
    history: list[dict], final: dict[str, Evaluation], status: str, model_epoch: int, extra: dict
) -> dict:
    """The metrics file: the figures of the exported model (from epoch `model_epoch`), per-digit test errors, totals."""
    metrics = {"status": status, **headline_metrics(final["test"])}
    for split in ("train", "validation"):
        if split in final:
            metrics[accuracy_column(split)] = final[split].accuracy
            metrics[loss_column(split)] = final[split].loss
    metrics |= {
        "epochs": len(history),
        "best_epoch": best_epoch(history),
        "model_epoch": model_epoch,
        "seconds_total": sum(row[SECONDS] for row in history),
        **extra,
    }
    return metrics


def best_epoch(history: list[dict]) -> int:
    """The first epoch with the lowest monitored loss."""
    return min(history, key=monitored_loss)[EPOCH]


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, every check passed, before its folder is made or anything is touched."""

    config: Config  # with the data source recorded (data.dir or data.tfds_version, data.digest)
    mnist: Mnist
    device: Device


def plan_run(config: Config, mnist: Mnist | None = None, device: Device | None = None) -> RunPlan:
    """Load the data and check the device, the batch count and the memory the model's tensors need.

    Each failure is a UserError (one line, exit 2). `mnist` given: that data (loaded already, or made
    in memory by tests); `device` given: that device, else gpu_check.choose_device's (GpuMismatch: exit 1).
    """
    mnist = mnist or load_mnist(config.data)
    if mnist.origin is not None:
        config = config.replace(**mnist.origin.recorded())
    device = device or choose_device(config, mnist.train)  # the GPU's self-check, once, before any folder
    check_batches(config.train, len(mnist.train))
    check_memory(config, mnist)
    return RunPlan(config, mnist, device)


def check_memory(config: Config, mnist: Mnist) -> None:
    """Refuse a model whose tensors cannot fit in the memory there is (estimated from the layer sizes)."""
    splits = [s for s in (mnist.train, mnist.validation, mnist.test) if s is not None]
    needed = memory_needed(config, sum(len(s) for s in splits))
    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"model.hidden={config.model.hidden} with train.batch_size={config.train.batch_size} needs about "
            f"{needed / 1e9:,.1f} GB for the model's tensors, more than the {available / 1e9:,.1f} GB of memory "
            "available; choose smaller layers"
        )


def train_and_evaluate(
    config: Config,
    run: RunDir,
    listeners: list[Listener] = (),
    resume: bool = False,
    mnist: Mnist | None = None,
    device: Device | None = None,
) -> RunResult:
    """plan_run, then train: what sweeps and tests call (the command line checks before making a folder).
    `device`: as chosen by gpu_check.choose_device (which plan_run calls when not given)."""
    return train(plan_run(config, mnist, device), run, listeners, resume)


def train(plan: RunPlan, run: RunDir, listeners: list[Listener] = (), resume: bool = False) -> RunResult:
    """Train per `plan`, writing the run's files into `run`; listeners see progress and the result.

    A GPU that raises an error (GpuFailure) under `runtime.device: auto` is left for the CPU, which resumes
    the run from its last checkpoint: nothing finished is lost. With `gpu` the error stops the run.
    """
    try:
        return _train(plan, run, listeners, resume)
    except GpuFailure as failure:
        if plan.config.runtime.device != "auto":
            raise
        cpu = cpu_after(failure, plan.config, "training")
        return _train(dataclasses.replace(plan, device=cpu), run, listeners, resume=True)


def _train(plan: RunPlan, run: RunDir, listeners: list[Listener] = (), resume: bool = False) -> RunResult:
    """train() on the plan's device.

    resume: continue from the last checkpoint, up to the plan's train.epochs (which may exceed the
    run's own: a finished run is continued). A run built beside the one it replaces takes its place
    when its first epoch is done. With train.patience the exported model and metrics.json come from the
    best epoch. Raises Diverged (history and metrics written, status "diverged") or Interrupted
    (checkpointed).
    """
    config, mnist, device = plan.config, plan.mnist, plan.device
    if resume:
        run.remove_leftovers()
    trainer = Trainer(config, mnist.train, device)
    splits = {"train": (trainer.images, trainer.labels)}
    if mnist.validation is not None:
        splits["validation"] = trainer.to_device(mnist.validation)
    splits["test"] = trainer.to_device(mnist.test)
    history, progress = _starting_point(run, trainer, config, resume)

    info = {
        "architecture": "-".join(map(str, trainer.model.sizes)),
        "device": device.describe(),
        "data": mnist.source,
        "train_images": len(mnist.train),
        "out": str(run.target),
        "resumed_from": (progress.epoch, progress.step) if resume else None,
    }
    for listener in listeners:
        listener.on_start(info)

    def on_call(state: EpochProgress, steps_per_epoch: int) -> None:
        for listener in listeners:
            listener.on_call(state.epoch, state.step, steps_per_epoch, state.loss_sum / state.step, state.seconds)

    extra = {"device": device.describe(), "tensorflow": tf.__version__, "data": mnist.source}
    if mnist.origin is not None:
        extra["data_digest"] = mnist.origin.digest
    final = None  # the last finished epoch's evaluations
    with stop_on_signals() as stop:
        while progress.epoch <= config.train.epochs and not converged(history, config.train):
            try:
                train_epoch(trainer, progress, on_call, should_stop=stop)
            except Diverged:  # metrics of the last finished epoch, not of the diverged weights
                if final:
                    run.write_metrics(summary_metrics(history, final, "diverged", len(history), extra))
                else:
                    run.write_metrics({"status": "diverged", "epochs": len(history), **extra})
                raise
            if progress.step < trainer.steps_per_epoch:  # stopped by a signal mid-epoch
                if progress.step:  # else nothing of this epoch ran: the last epoch's checkpoint stands
                    state = CheckpointState(progress.epoch, progress.step, progress.loss_sum, progress.seconds)
                    run.save_checkpoint(trainer.model, state, optimizer=trainer.optimizer)
                raise Interrupted.at(stop.signum, run, progress)
            lr = learning_rate(config.train, progress.epoch)
            final, weights = _evaluate(trainer, splits), Weights.of(trainer.model)
            history.append(epoch_row(progress.epoch, lr, progress, final, weights))
            run.write_history(history)
            position = CheckpointState(progress.epoch, 0, 0.0, 0.0)
            run.save_checkpoint(trainer.model, position, best=is_best(history), optimizer=trainer.optimizer)
            run.write_weights(weights.to_arrays())
            run.commit()  # a replacement run takes the old one's place now that it has an epoch
            for listener in listeners:
                listener.on_epoch(history[-1])
                listener.on_weights(progress.epoch, weights)
            if stop() and progress.epoch < config.train.epochs:  # after the last epoch: just finish
                raise Interrupted.at(stop.signum, run, EpochProgress(progress.epoch + 1))
            progress = EpochProgress(progress.epoch + 1)

    status = "converged" if converged(history, config.train) else "finished"
    model_epoch = history[-1][EPOCH]
    if config.train.patience is not None and best_epoch(history) != model_epoch:  # early stopping: the best
        model_epoch = best_epoch(history)
        run.restore_checkpoint(trainer.model, "best")
        final = None
    final = final or _evaluate(trainer, splits)  # also after a kill that came between the last epoch and here
    metrics = summary_metrics(history, final, status, model_epoch, extra)
    result = RunResult(run, config, metrics, history, final, mnist, trainer.model)
    for listener in listeners:
        listener.on_finish(result)
    for listener in listeners:
        listener.on_close()
    run.write_metrics(metrics)  # last: a run with metrics.json has its SavedModel, predictions and plots
    return result


def _evaluate(trainer: Trainer, splits: dict) -> dict[str, Evaluation]:
    return {name: trainer.evaluate(*tensors) for name, tensors in splits.items()}


def _starting_point(run: RunDir, trainer: Trainer, config: Config, resume: bool) -> tuple[list, EpochProgress]:
    """Fresh: write config.yaml, start at epoch 1. Resume: restore the last checkpoint and its history,
    check that there is something left to do, and record a changed config (train.epochs, data.dir)."""
    if not resume:
        run.write_config(config)
        return [], EpochProgress(epoch=1)
    state = run.restore_checkpoint(trainer.model, optimizer=trainer.optimizer) if run.has_checkpoint() else None
    finished = 0 if state is None else state.epoch - 1 if state.step else state.epoch
    rows = run.read_history()
    # history.csv is written just before its epoch's checkpoint: a kill between the two leaves one row more.
    if len(rows) > finished + 1 or [row[EPOCH] for row in rows[:finished]] != list(range(1, finished + 1)):
        named = f"names epoch {finished}" if state else "is missing"
        raise UserError(f"{run.checkpoints / 'state.json'} {named}, but {run.history_file} has {len(rows)} epochs")
    history = rows[:finished]
    if state is None:  # stopped before its first checkpoint: start again
        _record_config(run, config)
        return [], EpochProgress(epoch=1)
    metrics = run.read_metrics()
    done = metrics.get("epochs") == finished  # metrics.json describes this very checkpoint
    if done and metrics.get("status") == "diverged":
        raise UserError(f"{run.path}: the run diverged; nothing to resume (train anew with a lower learning rate)")
    if done and metrics.get("status") == "converged":
        raise UserError(
            f"{run.path}: the run converged (train.patience) after {plural(finished, 'epoch')}; nothing to resume"
        )
    if config.train.epochs < finished:
        raise UserError(f"train.epochs={config.train.epochs}: the run has already trained {plural(finished, 'epoch')}")
    if done and config.train.epochs == finished:
        raise UserError(
            f"{run.path}: the run has already finished ({plural(finished, 'epoch')}); to continue it, "
            f"add --set train.epochs=N with N > {finished}"
        )
    _record_config(run, config)
    if state.step:
        return history, EpochProgress(state.epoch, state.step, state.loss_sum, state.seconds)
    return history, EpochProgress(state.epoch + 1)


def _record_config(run: RunDir, config: Config) -> None:
    """Rewrite config.yaml when a resumed run changes it (more epochs, or the data found elsewhere)."""
    if run.read_config() != config:
        run.write_config(config)
