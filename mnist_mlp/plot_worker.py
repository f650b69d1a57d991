"""The plots at the end of `mnist-mlp train`, drawn in a worker process: PlotWriter, the listener that hands them
over, and PlotWorker, the spawned process that draws them.

This module does not import matplotlib (nor plots.py, which does): the training process never loads it, the
worker loads it as soon as it starts, and PlotWriter draws in-process only without a worker or when it failed.
"""

from __future__ import annotations

import io
import multiprocessing
import signal
from pathlib import Path

from mnist_mlp.results import Listener, RunResult, Weights


class PlotWriter(Listener):
    """At the end of a run: keep the test predictions and draw every plot into DIR/plots/.

    With a PlotWorker the drawing happens in that process while the other listeners finish (the SavedModel
    export): on_finish hands it the figures' data, on_close waits until every plot is written.
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

            write_plots(*job)  # no worker, or it failed: draw here (an error is raised from here)


class PlotWorker:
    """A spawned process that imports matplotlib at once and then draws one run's plots on request.

    Started before TensorFlow, it loads matplotlib and its fonts while the main process starts TensorFlow
    and trains; at the end it draws while the main process exports the SavedModel. Spawned, not forked:
    forking a process that runs TensorFlow's threads is unsafe. A worker that fails leaves the drawing to
    the caller (PlotWriter draws in-process).
    """

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve_plots, args=(child,), daemon=True, name="mnist-mlp plots")
        self.process.start()
        child.close()

    def submit(self, job: tuple) -> bool:
        """Hand over write_plots' arguments; False if the worker is gone."""
        try:
            self.connection.send(job)
            return True
        except (OSError, ValueError):
            return False

    def wait(self) -> list[Path] | None:
        """The plots written, once all are; None if the worker failed (it has then written nothing final)."""
        try:
            status, value = self.connection.recv()
        except (EOFError, OSError):
            status, value = "error", None
        self.close()
        return value if status == "ok" else None

    def close(self) -> None:
        self.connection.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def _serve_plots(connection) -> None:
    """The worker's main: warm up, wait for one job (or the pipe closing: the run ended without plots), draw."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    from mnist_mlp.plots import new_figure, save_figure_to, write_plots

    save_figure_to(new_figure(1, 1), io.BytesIO())  # loads matplotlib, the fonts and the PNG writer before it matters
    try:
        job = connection.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        return
    try:
        connection.send(("ok", write_plots(*job)))
    except Exception as exc:  # reported as a failure; the main process draws and raises the error itself
        connection.send(("error", repr(exc)))
