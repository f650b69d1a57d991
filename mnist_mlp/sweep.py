"""Hyperparameter search: the trials of a sweep file (sweep_file.py) run on an Optuna study (study.py), chosen on
a validation split.

Each worker, in this process or one of `--workers N` processes (on this machine or, sharing a database, on
several), asks the study for a trial, trains it into its own run folder DIR/trials/<id> (its id a hash of
its complete config), reports its validation loss after every epoch (the pruner may stop it there) and
records the result; it stops when the study has nothing left to start and nothing running. Trials are
ranked by validation accuracy (then validation loss, then fewer epochs); test figures are recorded and
reported but never used to choose. What a sweep writes is sweep_report.py's.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import optuna
import tensorflow as tf
from optuna.trial import FrozenTrial

from mnist_mlp import sweep_worker_process
from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import Mnist, load_mnist
from mnist_mlp.device import configure_threads
from mnist_mlp.errors import GpuFailure, UserError
from mnist_mlp.folder_lock import SWEEP_COMMAND, FolderInUse
from mnist_mlp.history import EPOCH, SECONDS, accuracy_column, loss_column
from mnist_mlp.results import Listener
from mnist_mlp.run import Interrupted, StopFlag, best_epoch, monitored_loss, stop_on_signals, train_and_evaluate
from mnist_mlp.rundir import RunDir
from mnist_mlp.study import (
    Place,
    counts,
    fail_stale_trials,
    open_storage,
    open_study,
    retry,
    rows,
    shown,
    start_trial,
    suggest,
)
from mnist_mlp.sweep_file import Sweep, trial_id
from mnist_mlp.sweep_report import METRIC_COLUMNS, header, progress_line, ranked, report, say
from mnist_mlp.training import Diverged

POLL_SECONDS = 2.0  # how often an idle worker looks at the study while others' trials run


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads for each of `workers` processes so that workers × threads <= cores."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if workers > cores:
        raise UserError(f"--workers {workers} is more than the {cores} CPU cores here")
    return cores // workers


def run_sweep(
    sweep: Sweep,
    place: Place,
    workers: int = 1,
    stream: TextIO | None = None,
    load: Callable[[DataConfig], Mnist] | None = None,
) -> list[dict]:
    """Run the study's trials not yet done, with `workers` workers on this machine, then write the report.

    `load` maps a DataConfig to Mnist in this process (tests pass synthetic data); workers load MNIST
    themselves. Returns the report's rows, best first. Interrupted when stopped by SIGINT or SIGTERM
    (finished trials are kept; unfinished ones run again, from scratch, on resume).
    """
    stream = stream or sys.stdout
    threads = threads_per_worker(workers)
    out = Path(place.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    (load or cached_mnist)(sweep.base.data)  # bad data fails here, before any folder or study is made
    (out / "trials").mkdir(parents=True, exist_ok=True)
    study = open_study(sweep, open_storage(place.url), place.study)
    left, waiting, running = counts(study, sweep)
    done = sweep.budget - left - waiting - running
    say(stream, header(sweep, out, done, left + waiting, workers, threads))
    say(stream, f"  study {place.study} in {shown(place.url)}" + (f"; {running} running elsewhere" if running else ""))
    if workers == 1:
        configure_threads(threads)
        with stop_on_signals() as stop, _no_retracing_warnings():
            work(sweep, place, stop, stream, load)
    else:
        if load is not None:
            raise ValueError("a custom data loader works only with one worker (workers load MNIST themselves)")
        _run_processes(sweep, place, workers, threads)
    return report(study, out, stream)


@functools.lru_cache(maxsize=2)
def cached_mnist(data: DataConfig) -> Mnist:
    """MNIST per data config, read once per process however many trials use it."""
    return load_mnist(data)


# ---------------------------------------------------------------------------------------------------
# A worker


def work(
    sweep: Sweep,
    place: Place,
    stop: StopFlag,
    stream: TextIO,
    load: Callable[[DataConfig], Mnist] | None = None,
    worker: int = 0,
) -> None:
    """Run the study's trials until none is left to start or running anywhere; Interrupted on a signal."""
    study = open_study(sweep, open_storage(place.url), place.study, worker)
    objective = functools.partial(_objective, sweep=sweep, out=Path(place.out), stop=stop, load=load)

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        """A line for the trial this worker has just finished, with the study's count and best so far."""
        found = rows(study)
        mine = [row for row in found if row["number"] == trial.number]
        if mine:
            finished = sum(row["status"] != "running" for row in found)
            say(stream, progress_line(finished, sweep.budget, mine[0], ranked(found)[0], sweep.keys))

    while not stop():
        fail_stale_trials(study)  # dead workers' trials: failed and queued again
        left, waiting, running = counts(study, sweep)
        if left + waiting:
            study.optimize(objective, n_trials=1, catch=(Duplicate,), callbacks=[progress], gc_after_trial=False)
        elif running:
            time.sleep(POLL_SECONDS)
        else:
            return
    raise Interrupted(stop.signum, "interrupted")


class Duplicate(Exception):
    """A trial whose config an earlier live trial has (two workers raced for one point): it does not train."""


def _objective(
    trial: optuna.Trial, sweep: Sweep, out: Path, stop: StopFlag, load: Callable[[DataConfig], Mnist] | None
) -> float:
    """Train one trial and return its validation error (1 − accuracy; 1 when it diverged)."""
    values = suggest(trial, sweep)
    config = sweep.config_for(values)
    folder = out / "trials" / trial_id(config)
    if (earlier := start_trial(trial, sweep, values, folder)) is not None:
        raise Duplicate(f"trial {trial.number} has the config of trial {earlier}")
    try:
        run, status = run_trial(folder, config, [EpochReporter(trial, stop)], load)
    except FolderInUse as exc:  # another worker of this machine took the same point at the same moment
        trial.set_user_attr("duplicate_of", str(exc))  # "trials/ID is in use by process 4242 (mnist-mlp sweep, …)"
        raise Duplicate(f"trial {trial.number}: {exc}") from None
    except optuna.TrialPruned:
        trial.set_user_attr("status", "pruned")
        trial.set_user_attr("metrics", _figures(RunDir(folder).read_metrics()))
        raise
    except BaseException:
        retry(trial.study, trial.number)  # stopped unfinished: the next worker to look runs it again
        raise
    metrics = run.read_metrics()
    trial.set_user_attr("status", status)
    trial.set_user_attr("metrics", _figures(metrics))
    accuracy = metrics.get(accuracy_column("validation"))
    return 1.0 if status == "diverged" or accuracy is None else 1.0 - accuracy


def _figures(metrics: dict) -> dict:
    """What the study keeps of a trial's metrics: the report's figures."""
    return {**{name: metrics.get(name) for name in METRIC_COLUMNS}, "train_seconds": metrics.get("seconds_total")}


class EpochReporter(Listener):
    """Tells the study each epoch's validation loss and curve; stops the trial when the pruner says so, or
    when a signal came before training began (training's own handler takes signals from then on)."""

    def __init__(self, trial: optuna.Trial, stop: StopFlag):
        self.trial, self.stop, self.curve = trial, stop, []

    def on_start(self, info: dict) -> None:
        self._stop_if_signalled()

    def on_call(self, epoch: int, step: int, steps_per_epoch: int, running_loss: float, seconds: float) -> None:
        self._stop_if_signalled()

    def _stop_if_signalled(self) -> None:
        if self.stop():
            raise Interrupted(self.stop.signum, "interrupted")

    def on_epoch(self, row: dict) -> None:
        epoch, loss = row[EPOCH], monitored_loss(row)
        self.curve.append([epoch, loss, row.get(accuracy_column("validation"))])
        self.trial.set_user_attr("curve", self.curve)
        self.trial.report(loss, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (validation loss {loss:.4f})")


def run_trial(
    run_dir: Path, config: Config, listeners: list[Listener], load: Callable[[DataConfig], Mnist] | None = None
) -> tuple[RunDir, str]:
    """Train one trial from scratch in `run_dir` (a partial run there is replaced); the run and its status.

    A pruned trial keeps what it trained (history, checkpoint, weights) with metrics.json saying "pruned".
    FolderInUse when another worker of this machine trains in `run_dir`: the folder's lock is held meanwhile."""
    run = RunDir.create(run_dir, run_dir.name, overwrite=True, config=config, lock_as=SWEEP_COMMAND)
    try:
        result = train_and_evaluate(config, run, listeners, mnist=(load or cached_mnist)(config.data))
    except Diverged:  # history and metrics are written with status "diverged"; the sweep goes on
        run.commit()  # a trial that diverged in its first epoch replaces a partial one too: it is a result
        return run, "diverged"
    except optuna.TrialPruned:
        run.write_metrics(pruned_metrics(run.read_history()))
        raise
    except BaseException:
        run.abandon()  # a replacement that did not get through an epoch; the partial trial stays as it was
        raise
    finally:
        run.unlock()
    return run, result.metrics["status"]


def pruned_metrics(history: list[dict]) -> dict:
    """A pruned trial's metrics.json: its last epoch's figures (the model it stopped with)."""
    last = history[-1]
    figures = {name: last[name] for split in ("train", "validation", "test")
               for name in (accuracy_column(split), loss_column(split)) if name in last}  # fmt: skip
    return {"status": "pruned", **figures, "epochs": len(history), "best_epoch": best_epoch(history),
            "model_epoch": last[EPOCH], "seconds_total": sum(row[SECONDS] for row in history)}  # fmt: skip


@contextmanager
def _no_retracing_warnings() -> Iterator[None]:
    """Every trial builds its own Trainer and traces its tf.functions once; TF's retracing warning is noise here."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------
# Worker processes


def _run_processes(sweep: Sweep, place: Place, workers: int, threads: int) -> None:
    """`workers` spawned processes, each a worker on the study; SIGINT and SIGTERM are passed on to them
    (each stops its trial, which is queued again) and raise Interrupted once they have exited."""
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=sweep_worker_process, args=(sweep, place, threads, n)) for n in range(workers)]
    received: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        received.append(signum)
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        for child in children:
            child.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Interrupted(received[0], "interrupted")
    failed = [child.exitcode for child in children if child.exitcode]
    if failed:
        raise UserError(f"{len(failed)} of {workers} worker processes failed (exit {failed[0]}); see above")


def worker_main(sweep: Sweep, place: Place, threads: int, worker: int) -> None:
    """A worker process: its trials one after another; exits 128 + signal when stopped, 2 on a user error."""
    code = 0
    try:
        configure_threads(threads)
        tf.get_logger().setLevel(logging.ERROR)
        with stop_on_signals() as stop:
            work(sweep, place, stop, sys.stdout, worker=worker)
    except Interrupted as exc:
        code = 128 + exc.signum
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except GpuFailure as exc:  # runtime.device: gpu, and the GPU raised an error (auto went on on the CPU)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    os._exit(code)
