"""The plots at the end of a run: the worker processes draw the same PNGs as the training process would, each plot
once; a dead worker leaves the drawing to the training process; the training process never imports matplotlib."""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import sys
import textwrap

import pytest

from mnist_mlp.plot_worker import PlotWorker, PlotWriter, claim_in_turn
from mnist_mlp.results import Weights
from mnist_mlp.rundir import RunDir
from tests.conftest import ALL_PLOTS, child_env


def replay_finish(result, writer: PlotWriter, folder) -> RunDir:
    """The run's end once more, into another folder of the same name (the name titles the figures)."""
    run = RunDir.create(folder / "run", "t")
    writer.on_finish(dataclasses.replace(result, run=run))
    writer.on_close()
    return run


def test_the_plot_workers_draw_the_same_pngs_as_the_main_process(finished_run, tmp_path):
    original, result, _ = finished_run
    run = replay_finish(result, PlotWriter(PlotWorker()), tmp_path)
    assert sorted(p.name for p in run.plots.iterdir()) == sorted(ALL_PLOTS)
    for name in ALL_PLOTS:
        assert (run.plots / name).read_bytes() == (original.plots / name).read_bytes(), name
    assert run.test_predictions_file.read_bytes() == original.test_predictions_file.read_bytes()


@pytest.mark.parametrize("processes", [1, 3])
def test_the_processes_draw_each_plot_once(finished_run, tmp_path, processes):
    _, result, _ = finished_run
    run = RunDir.create(tmp_path / "run", "t")
    worker = PlotWorker(processes)
    assert worker.submit((run, result.history, result.mnist.test, result.final["test"].predictions, result.config,
                          Weights.of(result.model), result.metrics))  # fmt: skip
    written = worker.wait()
    assert sorted(path.name for path in written) == sorted(ALL_PLOTS)
    assert sorted(p.name for p in run.plots.iterdir()) == sorted(ALL_PLOTS)


def test_processes_sharing_the_plots_each_take_the_next_one_none_has_taken():
    """Each asks about every plot in the same order, about the next one once it has drawn the last it took."""
    taken = multiprocessing.get_context("spawn").Value("i", 0)
    first, second = claim_in_turn(taken), claim_in_turn(taken)
    assert first("a") and not second("a") and second("b")  # both free: first takes a, second b
    assert not first("b") and first("c")  # first is done with a: b is taken, c is not
    assert not second("c") and second("d") and not first("d") and first("e")
    assert taken.value == 5


@pytest.mark.parametrize("dead", [0, 1])
def test_a_dead_plot_process_leaves_the_drawing_to_the_main_process(finished_run, tmp_path, dead):
    _, result, _ = finished_run
    worker = PlotWorker()
    worker.processes[dead].kill()
    worker.processes[dead].join()
    run = replay_finish(result, PlotWriter(worker), tmp_path)
    assert sorted(p.name for p in run.plots.iterdir()) == sorted(ALL_PLOTS)


def test_the_training_process_does_not_import_matplotlib():
    """Neither through the modules `mnist-mlp train` uses around the training (the command line, the plot worker, the
    other listeners' data) nor through TensorFlow, whose Keras would load it for its own plots: about 0.5 s that is
    the plot worker's alone. matplotlib still imports afterwards, as the in-process fallback needs."""
    modules = ("cli", "plot_worker", "progress", "results", "rundir", "data", "config")
    imports = "; ".join(f"import mnist_mlp.{name}" for name in modules)
    check = textwrap.dedent(f"""
        import sys
        {imports}
        before = 'matplotlib' in sys.modules
        mnist_mlp.import_tensorflow_quietly()
        print(before, 'tensorflow' in sys.modules, 'matplotlib' in sys.modules)
        import matplotlib
        print(matplotlib.__name__)
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=child_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "False", "matplotlib"]
