"""The plots at the end of a run: the worker process draws the same PNGs as the training process would, a dead
worker leaves the drawing to the training process, and the training process never imports matplotlib."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

from mnist_mlp.plot_worker import PlotWorker, PlotWriter
from mnist_mlp.rundir import RunDir
from tests.conftest import ALL_PLOTS, child_env


def replay_finish(result, writer: PlotWriter, folder) -> RunDir:
    """The run's end once more, into another folder of the same name (the name titles the figures)."""
    run = RunDir.create(folder / "run", "t")
    writer.on_finish(dataclasses.replace(result, run=run))
    writer.on_close()
    return run


def test_the_plot_worker_draws_the_same_pngs_as_the_main_process(finished_run, tmp_path):
    original, result, _ = finished_run
    run = replay_finish(result, PlotWriter(PlotWorker()), tmp_path)
    assert sorted(p.name for p in run.plots.iterdir()) == sorted(ALL_PLOTS)
    for name in ALL_PLOTS:
        assert (run.plots / name).read_bytes() == (original.plots / name).read_bytes(), name
    assert (run.test_predictions_file).read_bytes() == (original.test_predictions_file).read_bytes()


def test_a_dead_plot_worker_leaves_the_drawing_to_the_main_process(finished_run, tmp_path):
    _, result, _ = finished_run
    worker = PlotWorker()
    worker.process.kill()
    worker.process.join()
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
