"""The plots at the end of `mnist-mlp train`, drawn in worker processes: PlotWriter, the listener that hands them
over, and PlotWorker, the spawned processes that draw them.

This module does not import matplotlib (nor plots.py, which does): the training process never loads it, the
workers load it as soon as they start, and PlotWriter draws in-process only without workers or when one failed.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import multiprocessing
import signal
from collections.abc import Callable
from pathlib import Path

from mnist_mlp.results import Listener, RunResult, Weights

PLOT_PROCESSES = 2  # at the end of a run both cores are free: training is over
PROCESS_NAME = "mnist-mlp plots"


class PlotWriter(Listener):
    """At the end of a run: keep the test predictions and draw every plot into DIR/plots/.

    With a PlotWorker the drawing happens in its processes while the other listeners finish (the SavedModel
    export): on_finish hands them the figures' data, on_close waits until every plot is written.
    """

    def __init__(self, worker: PlotWorker | None = None):
        self.worker = worker
        self.job: tuple | None = None

    def on_finish(self, result: RunResult) -> None:
        predictions = result.final["test"].predictions
        result.run.write_predictions(predictions)
        weights = Weights.of(result.model)
        self.job = (result.run, result.history, result.mnist.test, predictions, result.config, weights, result.metrics)
        if self.worker is None or not self.worker.submit(self.job):
            self.on_close()

    def on_close(self) -> None:
        job, self.job = self.job, None
        if job is not None and (self.worker is None or self.worker.wait() is None):
            from mnist_mlp.plots import write_plots  # matplotlib, only now that it is needed here

            write_plots(*job)  # no worker, or one failed: draw here (an error is raised from here)


class PlotWorker:
    """Spawned processes that import matplotlib at once and then share the drawing of one run's plots: each draws
    the next plot that none has taken, until every plot is taken.

    Started before TensorFlow, they load matplotlib and its fonts while the main process starts TensorFlow and
    trains; at the end they draw while the main process exports the SavedModel. Spawned, not forked: forking a
    process that runs TensorFlow's threads is unsafe. If one fails, the caller draws them all (PlotWriter draws
    in-process).
    """

    def __init__(self, processes: int = PLOT_PROCESSES):
        context = multiprocessing.get_context("spawn")
        # How many of the run's plots the processes have taken so far; held here for the processes' lifetime, as its
        # lock vanishes with the last reference in this process (a process still starting could not open it then).
        self.taken = context.Value("i", 0)
        self.connections, self.processes = [], []
        for _ in range(processes):
            connection, child = context.Pipe()
            process = context.Process(target=_serve_plots, args=(child, self.taken), daemon=True, name=PROCESS_NAME)
            process.start()
            child.close()
            self.connections.append(connection)
            self.processes.append(process)

    def submit(self, job: tuple) -> bool:
        """Hand over write_plots' arguments to every process; False if one is gone (then all are stopped)."""
        try:
            for connection in self.connections:
                connection.send(job)
            return True
        except (OSError, ValueError):
            for process in self.processes:
                process.kill()  # the caller draws them all
            self.close()
            return False

    def wait(self) -> list[Path] | None:
        """The plots written, once all are; None if a process failed (the plots may then be incomplete)."""
        replies = []
        for connection in self.connections:
            try:
                replies.append(connection.recv())
            except (EOFError, OSError):
                replies.append(("error", None))
        self.close()
        if any(status != "ok" for status, _ in replies):
            return None
        return [path for _, written in replies for path in written]

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def claim_in_turn(taken) -> Callable[[str], bool]:
    """write_plots' `mine` for processes that go through the same plots in the same order: each claims the plot it
    is asked about when no process has taken it yet. A plot is taken once, by whichever process is free first."""
    asked = itertools.count()

    def mine(filename: str) -> bool:
        index = next(asked)
        with taken.get_lock():
            if taken.value > index:
                return False
            taken.value = index + 1
            return True

    return mine


def _serve_plots(connection, taken) -> None:
    """A worker's main: warm up, wait for one job (or the pipe closing: the run ended without plots), draw its share."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    from mnist_mlp.plots import new_figure, save_figure_to, write_plots

    save_figure_to(new_figure(1, 1), io.BytesIO())  # loads matplotlib, the fonts and the PNG writer before it matters
    try:
        job = connection.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        return
    try:
        reply = ("ok", write_plots(*job, mine=claim_in_turn(taken)))
    except Exception as exc:  # reported as a failure; the main process draws and raises the error itself
        reply = ("error", repr(exc))
    with contextlib.suppress(OSError):  # the main process no longer listens: another worker failed
        connection.send(reply)
