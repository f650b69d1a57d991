"""A whole run: files, convergence, checkpoints, interruption and bit-identical resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp import rundir
from mnist_mlp.cli import main
from mnist_mlp.config import Config
from mnist_mlp.errors import UserError
from mnist_mlp.model import MLP
from mnist_mlp.plots import plot_run
from mnist_mlp.results import Listener
from mnist_mlp.run import Interrupted, converged, train_and_evaluate
from mnist_mlp.rundir import RunDir
from mnist_mlp.training import Diverged
from tests.conftest import child_env, synthetic_mnist


class RaiseSignalAt(Listener):
    """Sends this process a signal after a given compiled call, as Ctrl-C or `kill` would."""

    def __init__(self, epoch: int, step: int, signum: int = signal.SIGINT):
        self.epoch, self.step, self.signum = epoch, step, signum

    def on_call(self, epoch, step, steps_per_epoch, running_loss, seconds):
        if (epoch, step) == (self.epoch, self.step):
            signal.raise_signal(self.signum)


def final_weights(run: RunDir, config: Config) -> list[np.ndarray]:
    model = MLP(config.model, config.seed)
    run.restore_checkpoint(model)
    return [v.numpy() for v in model.variables_in_order]


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture
def config(tiny_config: Config) -> Config:
    return tiny_config.replace(**{"train.epochs": 3})


def test_converged_counts_epochs_without_improvement(config):
    rows = [{"train_loss": loss} for loss in (1.0, 0.5, 0.49, 0.495, 0.5)]
    train = config.train
    assert not converged(rows, train)  # patience null: never
    assert converged(rows, train.__class__(patience=2))
    assert not converged(rows, train.__class__(patience=3))
    assert converged(rows, train.__class__(patience=3, min_delta=0.1))  # 0.5 -> 0.49 is not enough
    assert not converged(rows[:3], train.__class__(patience=2, min_delta=0.1))
    val = [{"train_loss": 9.0, "validation_loss": loss} for loss in (1.0, 0.9, 0.8)]
    assert not converged(val, train.__class__(patience=1))


OPTIMIZER_SETTINGS = [
    {},  # plain SGD, the step schedule, no shifts: as before there was a choice
    {"train.optimizer": "momentum", "train.learning_rate": 0.02},
    {"train.optimizer": "nesterov", "train.learning_rate": 0.02, "train.augment_shift": 1},
    {"train.optimizer": "adam", "train.learning_rate": 0.003, "train.augment_shift": 2, "train.lr_schedule": "cosine"},
]


@pytest.mark.parametrize("settings", OPTIMIZER_SETTINGS, ids=["sgd", "momentum", "nesterov+shift", "adam+shift+cosine"])
def test_interrupted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, config, settings):
    """Mid-epoch: the optimizer's slots (velocities, moments, step count) must come back with the weights."""
    config = config.replace(**settings)
    mnist = synthetic_mnist()
    straight = RunDir.create(tmp_path / "straight", "t")
    train_and_evaluate(config, straight, mnist=mnist)

    broken = RunDir.create(tmp_path / "broken", "t")
    with pytest.raises(Interrupted, match="Resume with: mnist-mlp train --resume") as caught:
        train_and_evaluate(config, broken, [RaiseSignalAt(epoch=2, step=3)], mnist=mnist)
    assert caught.value.signum == signal.SIGINT
    assert [row["epoch"] for row in broken.read_history()] == [1]  # every finished epoch kept
    assert not broken.metrics_file.exists()
    train_and_evaluate(broken.read_config(), broken, resume=True, mnist=mnist)

    assert all(
        np.array_equal(a, b)
        for a, b in zip(final_weights(straight, config), final_weights(broken, config), strict=True)
    )
    assert without_seconds(straight.read_history()) == without_seconds(broken.read_history())


def test_interrupt_at_an_epoch_boundary_resumes_at_the_next_epoch(tmp_path, config):
    mnist = synthetic_mnist()
    run = RunDir.create(tmp_path / "run", "t")
    last_step = 10  # 200 training images / batch 20, in calls of 3, 3, 3, 1
    with pytest.raises(Interrupted):
        train_and_evaluate(config, run, [RaiseSignalAt(1, last_step, signal.SIGTERM)], mnist=mnist)
    assert json.loads((run.checkpoints / "state.json").read_text())["last"] == "epoch-0001"
    result = train_and_evaluate(config, run, resume=True, mnist=mnist)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]


def test_run_writes_its_files_and_keeps_last_and_best_checkpoints(tmp_path, config):
    run = RunDir.create(tmp_path / "run", "t")
    result = train_and_evaluate(config, run, mnist=synthetic_mnist(n_validation=40))
    assert run.config_file.is_file() and run.history_file.is_file() and run.metrics_file.is_file()
    pointers = json.loads((run.checkpoints / "state.json").read_text())
    assert pointers["last"] == "epoch-0003"
    best_epoch = min(result.history, key=lambda r: r["validation_loss"])["epoch"]
    assert pointers["best"] == f"epoch-{best_epoch:04d}"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == sorted({*pointers.values(), "state.json"})
    assert result.metrics["best_epoch"] == best_epoch
    saved = run.read_weights()  # the last epoch's weights as NumPy, named as the checkpoint names them
    for name, checkpointed in zip(saved, final_weights(run, config), strict=True):
        np.testing.assert_array_equal(saved[name], checkpointed)
    assert list(saved) == ["W1", "W0_1", "W2", "W0_2", "W3", "W0_3"]


class Watch(Listener):
    """Calls `look(epoch, "call" or "epoch")` during each epoch and after it (its files written)."""

    def __init__(self, look):
        self.look = look

    def on_call(self, epoch, step, steps_per_epoch, running_loss, seconds):
        self.look(epoch, "call")

    def on_epoch(self, row):
        self.look(row["epoch"], "epoch")


def test_an_existing_run_is_replaced_only_when_asked_and_only_after_the_new_one_finished_an_epoch(tmp_path, config):
    run = RunDir.create(tmp_path / "run", "t")
    train_and_evaluate(config, run, mnist=synthetic_mnist())
    before = run.history_file.read_text()
    with pytest.raises(UserError, match="already holds a run .* --overwrite"):
        RunDir.create(tmp_path / "run", "t")
    assert run.history_file.read_text() == before

    failed = RunDir.create(tmp_path / "run", "t", overwrite=True)  # built beside, then given up
    assert failed.replaces == run.path and failed.path.parent == tmp_path and failed.path.name.startswith(".run.")
    failed.abandon()
    assert run.history_file.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    new = RunDir.create(tmp_path / "run", "t", overwrite=True)
    seen = set()

    def old_until_the_first_epoch_is_done(epoch, when):
        seen.add((epoch, when, run.history_file.read_text() == before, new.path == run.path))

    watch = Watch(old_until_the_first_epoch_is_done)
    result = train_and_evaluate(config.replace(**{"seed": 5}), new, [watch], mnist=synthetic_mnist())
    assert (1, "call", True, False) in seen  # during epoch 1: the old run intact, the new one beside it
    assert {(e, w) for e, w, old, moved in seen if old or not moved} == {(1, "call")}  # then replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or retired folder left
    assert run.read_config().seed == 5 and run.read_history() == result.history
    assert set(run.read_weights()) == {"W1", "W0_1", "W2", "W0_2", "W3", "W0_3"}  # the new run's, moved with it


def test_a_run_from_before_the_weight_columns_resumes_with_nan_in_its_old_rows(tmp_path, config):
    """history.csv from an older version (no sparsity_l, dead_units_l), interrupted at an epoch boundary: the
    resumed epochs add the columns, the old rows hold nan there, and the history still reads and plots."""
    run = RunDir.create(tmp_path / "run", "t")
    mnist = synthetic_mnist()
    with pytest.raises(Interrupted):
        train_and_evaluate(config, run, [RaiseSignalAt(1, 10)], mnist=mnist)
    new_columns = ("sparsity_", "dead_units_")
    run.write_history([{k: v for k, v in row.items() if not k.startswith(new_columns)} for row in run.read_history()])
    history = train_and_evaluate(config, run, resume=True, mnist=mnist).history
    assert run.read_history()[0]["sparsity_1"] != run.read_history()[0]["sparsity_1"]  # nan
    assert [row["epoch"] for row in history] == [1, 2, 3] and 0 <= run.read_history()[-1]["dead_units_2"] <= 1
    assert "sparsity.png" in [p.name for p in plot_run(run.path).written]


def test_resume_refuses_a_finished_run_and_a_folder_that_is_not_a_run(tmp_path, config):
    run = RunDir.create(tmp_path / "run", "t")
    train_and_evaluate(config, run, mnist=synthetic_mnist())
    with pytest.raises(UserError, match="already finished"):
        train_and_evaluate(config, run, resume=True, mnist=synthetic_mnist())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run folder"):
        RunDir.open(tmp_path / "empty")


def test_a_checkpoint_from_another_architecture_is_refused(tmp_path, config):
    run = RunDir.create(tmp_path / "run", "t")
    train_and_evaluate(config, run, mnist=synthetic_mnist())
    other = MLP(config.model.__class__(hidden=[5]), seed=0)
    with pytest.raises(UserError, match="does not fit this model"):
        run.restore_checkpoint(other)


def test_a_checkpoint_from_another_optimizer_is_refused_and_evaluation_ignores_slots(tmp_path, config):
    adam = config.replace(**{"train.optimizer": "adam", "train.learning_rate": 0.003, "train.epochs": 3})
    run = RunDir.create(tmp_path / "run", "t")
    with pytest.raises(Interrupted):
        train_and_evaluate(adam, run, [RaiseSignalAt(epoch=2, step=3)], mnist=synthetic_mnist())
    momentum = adam.replace(**{"train.optimizer": "momentum"})
    with pytest.raises(UserError) as caught:
        train_and_evaluate(momentum, run, resume=True, mnist=synthetic_mnist())
    message = str(caught.value)
    assert "written by train.optimizer adam, this config trains with momentum" in message and "\n" not in message
    weights = final_weights(run, adam)  # the model alone, as evaluate and predict restore it: slots unread
    assert len(weights) == 6 and all(np.isfinite(w).all() for w in weights)


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_one_in_charge(tmp_path, config, monkeypatch):
    """Simulates a kill during a checkpoint write: the partial files never become the `last` checkpoint."""
    run = RunDir.create(tmp_path / "run", "t")
    train_and_evaluate(config, run, mnist=synthetic_mnist())
    before = final_weights(run, config)
    real_checkpoint = rundir._checkpoint

    def dying_checkpoint(*args):
        checkpoint, position = real_checkpoint(*args)

        def write(prefix):
            Path(prefix + ".index").write_bytes(b"partial")
            raise OSError("killed mid-write")

        checkpoint.write = write
        return checkpoint, position

    monkeypatch.setattr(rundir, "_checkpoint", dying_checkpoint)
    model = MLP(config.model, seed=7)  # other weights, which must not end up as `last`
    with pytest.raises(OSError, match="killed mid-write"):
        run.save_checkpoint(model, rundir.CheckpointState(4, 0, 0.0, 0.0))
    monkeypatch.undo()
    assert json.loads((run.checkpoints / "state.json").read_text())["last"] == "epoch-0003"
    assert all(np.array_equal(a, b) for a, b in zip(before, final_weights(run, config), strict=True))


def test_a_signal_during_the_last_epoch_lets_the_run_finish(tmp_path, config):
    run = RunDir.create(tmp_path / "run", "t")
    result = train_and_evaluate(config, run, [RaiseSignalAt(epoch=3, step=10)], mnist=synthetic_mnist())
    assert result.metrics["status"] == "finished" and run.metrics_file.is_file()


def test_divergence_is_recorded_not_crashed(tmp_path, config):
    run = RunDir.create(tmp_path / "run", "t")
    with pytest.raises(Diverged):
        train_and_evaluate(config.replace(**{"train.learning_rate": 1e4}), run, mnist=synthetic_mnist())
    assert json.loads(run.metrics_file.read_text())["status"] == "diverged"


@pytest.mark.slow
def test_sigterm_to_a_training_process_checkpoints_exits_143_and_resumes(tmp_path, mnist_dir, monkeypatch):
    """A real `mnist-mlp train` child process, killed politely after its first epoch, then resumed."""
    out = tmp_path / "run"
    env = child_env(MNIST_MLP_DATA_DIR=str(mnist_dir))
    command = [sys.executable, "-m", "mnist_mlp", "train", "--out", str(out), "--set", "train.epochs=3",
               "--set", "train.steps_per_call=50"]  # fmt: skip
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "history.csv").exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 143, stderr
    assert f"mnist-mlp train --resume {out}" in stderr
    run = RunDir.open(out)
    history = run.read_history()
    assert history and [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    state = run.restore_checkpoint(MLP(run.read_config().model, 0))
    assert state.epoch in (len(history), len(history) + 1)
    monkeypatch.setenv("MNIST_MLP_DATA_DIR", str(mnist_dir))
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert [row["epoch"] for row in run.read_history()] == [1, 2, 3]
    assert json.loads(run.metrics_file.read_text())["epochs"] == 3


def test_run_exceptions_survive_pickling_across_worker_processes():
    """Sweep workers send these back to the parent process; a lost argument used to hang the pool."""
    import pickle

    interrupted = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM, "stopped")))
    assert (interrupted.signum, str(interrupted)) == (signal.SIGTERM, "stopped")
    diverged = pickle.loads(pickle.dumps(Diverged(3, float("inf"), 0.5)))
    assert diverged.epoch == 3 and "diverged in epoch 3" in str(diverged)


def weights_of(run: RunDir, config: Config, which: str = "last") -> list[np.ndarray]:
    model = MLP(config.model, config.seed)
    run.restore_checkpoint(model, which)
    return [v.numpy() for v in model.variables_in_order]


def test_a_finished_run_continued_to_more_epochs_equals_one_trained_straight(tmp_path, config):
    mnist = synthetic_mnist()
    straight = RunDir.create(tmp_path / "straight", "t")
    train_and_evaluate(config.replace(**{"train.epochs": 4}), straight, mnist=mnist)

    run = RunDir.create(tmp_path / "run", "t")
    train_and_evaluate(config.replace(**{"train.epochs": 2}), run, mnist=mnist)
    with pytest.raises(UserError, match=r"already finished \(2 epochs\); to continue it, add --set train.epochs=N"):
        train_and_evaluate(run.read_config(), run, resume=True, mnist=mnist)
    with pytest.raises(UserError, match="train.epochs=1: the run has already trained 2 epochs"):
        train_and_evaluate(run.read_config().replace(**{"train.epochs": 1}), run, resume=True, mnist=mnist)
    result = train_and_evaluate(run.read_config().replace(**{"train.epochs": 4}), run, resume=True, mnist=mnist)

    assert result.metrics["epochs"] == 4 and run.read_config().train.epochs == 4
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight, config), weights_of(run, config), strict=True))
    assert without_seconds(straight.read_history()) == without_seconds(run.read_history())
    same = ("test_accuracy", "test_loss", "train_loss", "per_digit_test_error", "best_epoch")
    assert {k: result.metrics[k] for k in same} == {k: json.loads(straight.metrics_file.read_text())[k] for k in same}


def test_a_run_killed_after_its_last_epoch_is_finished_by_resume_without_training_again(tmp_path, config):
    mnist = synthetic_mnist()
    run = RunDir.create(tmp_path / "run", "t")
    finished = train_and_evaluate(config, run, mnist=mnist).metrics
    history = run.history_file.read_text()
    run.metrics_file.unlink()  # as if killed between the last checkpoint and metrics.json (written last)
    resumed = train_and_evaluate(run.read_config(), run, resume=True, mnist=mnist).metrics
    assert run.history_file.read_text() == history
    assert {k: v for k, v in resumed.items() if k != "seconds_total"} == {
        k: v for k, v in finished.items() if k != "seconds_total"
    }


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path, config):
    mnist = synthetic_mnist()
    straight = RunDir.create(tmp_path / "straight", "t")
    expected = without_seconds(train_and_evaluate(config, straight, mnist=mnist).history)
    run = RunDir.create(tmp_path / "run", "t", config=config)  # killed right after making its folder
    run.write_history(straight.read_history()[:1])  # or after epoch 1's history row, before its checkpoint
    (run.checkpoints / ".tmp-x").mkdir(parents=True)  # ... in the middle of writing it
    result = train_and_evaluate(run.read_config(), run, resume=True, mnist=mnist)
    assert without_seconds(result.history) == expected and not (run.checkpoints / ".tmp-x").exists()

    (run.checkpoints / "state.json").unlink()  # damage: no checkpoint named, yet three epochs recorded
    with pytest.raises(UserError, match=r"state.json is missing, but .*history.csv has 3 epochs"):
        train_and_evaluate(run.read_config().replace(**{"train.epochs": 4}), run, resume=True, mnist=mnist)


@pytest.mark.parametrize(
    "settings",
    [{"train.learning_rate": 0.05}, {"train.optimizer": "adam", "train.learning_rate": 0.01}],
    ids=["sgd", "adam"],
)
def test_with_early_stopping_the_best_epoch_is_exported_and_reported(tmp_path, config, settings):
    """Also with an optimizer's slots in the checkpoints: the export reads the best checkpoint's weights alone."""
    from mnist_mlp.export import SavedModelWriter, load_saved_model
    from mnist_mlp.plot_worker import PlotWriter

    config = config.replace(**{"train.epochs": 8, "train.patience": 2, **settings})
    run = RunDir.create(tmp_path / "run", "t")
    mnist = synthetic_mnist(n_validation=60)  # random labels: the validation loss soon rises again
    result = train_and_evaluate(config, run, [PlotWriter(), SavedModelWriter()], mnist=mnist)
    metrics, history = json.loads(run.metrics_file.read_text()), run.read_history()
    best = min(history, key=lambda row: row["validation_loss"])
    assert metrics["status"] == "converged" and metrics["epochs"] == len(history) > best["epoch"]
    assert metrics["best_epoch"] == metrics["model_epoch"] == best["epoch"]
    for key in ("test_accuracy", "test_loss", "validation_loss", "train_loss"):
        assert metrics[key] == best[key]  # the best epoch's figures, bit for bit, not the last epoch's
    assert metrics["validation_loss"] < history[-1]["validation_loss"]
    best_weights = weights_of(run, config, "best")
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(result.model.variables_in_order, best_weights, strict=True))
    weights_file = run.read_weights()  # what `plot DIR` draws: the exported (best) epoch's weights, not the last's
    assert all(np.array_equal(weights_file[v.name.split(":")[0]], b)
               for v, b in zip(result.model.variables_in_order, best_weights, strict=True))  # fmt: skip
    serve = load_saved_model(run.saved_model).signatures["serving_default"]
    served = serve(images=mnist.test.images)["digit"].numpy()
    assert np.array_equal(served, np.load(run.test_predictions_file))
    assert np.mean(served == mnist.test.labels) == best["test_accuracy"]
    with pytest.raises(UserError, match="converged"):
        train_and_evaluate(run.read_config().replace(**{"train.epochs": 20}), run, resume=True, mnist=mnist)


def test_a_model_too_large_for_memory_is_refused_before_anything_starts(config):
    from mnist_mlp.errors import ConfigError
    from mnist_mlp.run import plan_run

    with pytest.raises(ConfigError, match=r"model.hidden=\[100000000\] .* needs about [\d,.]+ GB .* available"):
        plan_run(config.replace(**{"model.hidden": [100000000]}), synthetic_mnist())
    assert plan_run(config, synthetic_mnist()).device.kind == "cpu"
