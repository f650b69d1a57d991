"""Hyperparameter search: train every trial of a sweep file (sweep_file.py) and choose on a validation split.

Trials are ranked by validation accuracy (then validation loss, then fewer epochs); test figures are
recorded and reported but never used to choose. Each trial is a run folder DIR/trials/<id>, its id a hash
of its complete config, so a second run skips finished trials and the results do not depend on how many
worker processes ran them (each trial is deterministic on the CPU). What a sweep writes is sweep_report.py's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import tensorflow as tf

from mnist_mlp import import_tensorflow_quietly
from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import Mnist, load_mnist
from mnist_mlp.device import configure_threads
from mnist_mlp.errors import UserError
from mnist_mlp.run import train_and_evaluate
from mnist_mlp.rundir import RunDir
from mnist_mlp.sweep_file import Sweep, Trial
from mnist_mlp.sweep_report import (
    DONE,
    closing_line,
    header,
    progress_line,
    ranked,
    say,
    trial_dir,
    trial_row,
    usable,
    write_outputs,
    write_trials_csv,
)
from mnist_mlp.training import Diverged


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
    out: Path,
    workers: int = 1,
    stream: TextIO | None = None,
    load: Callable[[DataConfig], Mnist] | None = None,
) -> list[dict]:
    """Run the trials not yet finished in `out`, then write trials.csv, best.yaml, summary.md and plots.

    `load` maps a DataConfig to Mnist in this process (tests pass synthetic data); workers load MNIST
    themselves. Returns the rows of trials.csv, best first.
    """
    stream = stream or sys.stdout
    threads = threads_per_worker(workers)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    pending = [t for t in sweep.trials if finished_status(trial_dir(out, t)) is None]
    if pending:
        (load or cached_mnist)(sweep.base.data)  # bad data fails here, before any folder is made
    (out / "trials").mkdir(parents=True, exist_ok=True)
    say(stream, header(sweep, out, len(pending), workers, threads))
    waiting = {t.id for t in pending}
    rows = {t.id: trial_row(t, trial_dir(out, t)) for t in sweep.trials if t.id not in waiting}
    for count, (trial, _status) in enumerate(_execute(pending, out, workers, threads, load), start=1):
        rows[trial.id] = trial_row(trial, trial_dir(out, trial))
        ordered = [rows[t.id] for t in sweep.trials if t.id in rows]
        say(stream, progress_line(count, len(pending), rows[trial.id], ranked(ordered)[0], sweep.keys))
        write_trials_csv(out / "trials.csv", ordered, sweep.keys)
    ordered = [rows[t.id] for t in sweep.trials]
    write_outputs(sweep, out, ordered)
    best = ranked(ordered)
    say(stream, closing_line(best[0], out) if usable(best[0]) else "no trial trained without diverging")
    return best


def finished_status(run_dir: Path) -> str | None:
    """The status of a finished trial folder; None when it has not finished (never run, or interrupted)."""
    try:
        status = RunDir(run_dir).read_metrics().get("status")
    except UserError:  # damaged: run it again
        return None
    return status if status in DONE else None


@functools.lru_cache(maxsize=2)
def cached_mnist(data: DataConfig) -> Mnist:
    """MNIST per data config, read once per process however many trials use it."""
    return load_mnist(data)


def run_trial(run_dir: Path, config: Config, load: Callable[[DataConfig], Mnist] | None = None) -> str:
    """Train one trial from scratch in `run_dir` (a partial run there is replaced); returns its status."""
    run = RunDir.create(run_dir, run_dir.name, overwrite=True, config=config)
    try:
        result = train_and_evaluate(config, run, [], mnist=(load or cached_mnist)(config.data))
    except Diverged:  # history and metrics are written with status "diverged"; the sweep goes on
        run.commit()  # a trial that diverged in its first epoch replaces a partial one too: it is a result
        return "diverged"
    except BaseException:
        run.abandon()  # a replacement that did not get through an epoch; the partial trial stays as it was
        raise
    return result.metrics["status"]


def _execute(
    trials: list[Trial], out: Path, workers: int, threads: int, load: Callable[[DataConfig], Mnist] | None
) -> Iterator[tuple[Trial, str]]:
    """Run the trials, yielding each as it finishes: in this process for one worker, else a spawn pool.

    Ctrl-C: in this process the trial stops at its next compiled call (Interrupted); with workers the
    parent stops and terminates them. Either way unfinished trials run again, from scratch, on resume.
    """
    jobs = [(index, trial_dir(out, trial), trial.config, threads) for index, trial in enumerate(trials)]
    if workers == 1:
        configure_threads(threads)
        with _no_retracing_warnings():
            for index, run_dir, config, _ in jobs:
                yield trials[index], run_trial(run_dir, config, load)
        return
    if load is not None:
        raise ValueError("a custom data loader works only with one worker (workers load MNIST themselves)")
    # The initializer lives outside this module so that TensorFlow is imported quietly before the
    # workers unpickle _run_job (which imports this module, and TensorFlow with it).
    with _sigint_ignored():  # inherited: Ctrl-C reaches the workers too, and is the parent's to handle
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=import_tensorflow_quietly)
    with pool:  # on leaving, even by Ctrl-C, terminate() ends the workers
        for index, status, detail in pool.imap_unordered(_run_job, jobs):
            if status == "user_error":
                raise UserError(detail)
            if status == "error":
                raise RuntimeError(f"trial {trials[index].id} failed in a worker process:\n{detail}")
            yield trials[index], status


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the duration (processes started meanwhile keep ignoring it); main thread only."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _no_retracing_warnings() -> Iterator[None]:
    """Every trial builds its own Trainer and traces its tf.functions once; TF's retracing warning is noise here."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_job(job: tuple[int, Path, Config, int]) -> tuple[int, str, str]:
    """A worker's trial: (index, status, "") or, when it failed, (index, "error" or "user_error", the reason).

    The trial runs in a helper thread, where train_and_evaluate leaves signals alone, so the parent's
    terminate() ends the worker at once. Failures travel as text: not every exception survives pickling.
    """
    index, run_dir, config, threads = job
    configure_threads(threads)  # takes effect before the first trial; later calls change nothing
    tf.get_logger().setLevel(logging.ERROR)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
            return index, thread.submit(run_trial, run_dir, config).result(), ""
    except UserError as exc:
        return index, "user_error", str(exc)
    except Exception:
        return index, "error", traceback.format_exc()
