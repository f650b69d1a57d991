"""The sweep: parsing and checking sweep files, trials on synthetic data, outputs, resuming, divergence, workers."""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mnist_mlp import sweep as sweep_module
from mnist_mlp.cli import main
from mnist_mlp.config import Config, load_config
from mnist_mlp.data import Mnist, split
from mnist_mlp.errors import ConfigError, UserError
from mnist_mlp.folder_lock import LOCK_FILE, SWEEP_COMMAND, lock_folder
from mnist_mlp.run import Interrupted
from mnist_mlp.study import Place, open_storage, open_study, sweep_place
from mnist_mlp.sweep import run_sweep, threads_per_worker
from mnist_mlp.sweep_file import load_sweep, trial_id
from mnist_mlp.sweep_report import best_per_value
from tests.conftest import synthetic_mnist

# A network and data small enough that a trial trains in about a second on the CPU.
TINY = {
    "model.hidden": [16, 12],
    "train.epochs": 2,
    "train.batch_size": 20,
    "train.steps_per_call": 3,
    "runtime.device": "cpu",
    "data.validation_size": 60,
}


def write_sweep(folder: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def synthetic_loader(data) -> Mnist:
    """Random images split as the data config says (validation held out of the end of the training set)."""
    raw = synthetic_mnist(n_train=300, n_test=80)
    return split(raw.train, raw.test, data, source="synthetic")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def place(out: Path, study: str = "sweep") -> Place:
    """The sweep folder `out` with its default study database, out/study.db."""
    return sweep_place(out, None, study)


def results(rows: list[dict]) -> list[dict]:
    """trials.csv rows without what differs between two runs of the same trials: time, study number, folder."""
    return [{k: v for k, v in row.items() if k not in ("train_seconds", "number", "folder")} for row in rows]


def trials_of(out: Path, study: str = "sweep") -> list:
    import optuna

    return optuna.load_study(study_name=study, storage=open_storage(place(out).url)).trials


# ---------------------------------------------------------------------------------------------------
# The sweep file


def test_grid_is_every_combination_in_file_order(tmp_path):
    path = write_sweep(
        tmp_path, {"set": TINY, "grid": {"train.learning_rate": [0.01, 0.1], "model.init": ["he", "normal"]}}
    )
    sweep = load_sweep(path)
    assert [t.values for t in sweep.trials] == [
        {"train.learning_rate": 0.01, "model.init": "he"},
        {"train.learning_rate": 0.01, "model.init": "normal"},
        {"train.learning_rate": 0.1, "model.init": "he"},
        {"train.learning_rate": 0.1, "model.init": "normal"},
    ]
    assert sweep.trials[3].config.train.learning_rate == 0.1 and sweep.trials[3].config.model.init == "normal"
    assert sweep.trials[3].config.model.hidden == [16, 12]  # the fixed `set` applies to every trial


def test_numbers_in_e_notation_are_floats_in_a_sweep_file(tmp_path):
    """Written by hand, as people write rates: 1e-5 in a grid, a distribution's bounds and `set`."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "set:\n  train.epochs: 2\n  train.momentum: 5E-1\n"
        "grid:\n  train.l1: [0, 1e-5]\n"
        "random:\n  trials: 2\n  params:\n    train.learning_rate: {log_uniform: [1e-3, .5]}\n"
    )
    sweep = load_sweep(path, ["train.epsilon=1e-8"])
    assert [t.values["train.l1"] for t in sweep.trials] == [0.0, 0.0, 1e-5, 1e-5]
    assert all(1e-3 <= t.config.train.learning_rate <= 0.5 for t in sweep.trials)
    assert {(t.config.train.momentum, t.config.train.epsilon) for t in sweep.trials} == {(0.5, 1e-8)}


def test_random_draws_are_seeded_and_within_bounds(tmp_path):
    spec = {
        "set": TINY,
        "random": {
            "trials": 12,
            "seed": 3,
            "params": {
                "train.learning_rate": {"log_uniform": [0.001, 1.0]},
                "train.lr_decay_epochs": {"int_uniform": [1, 3]},
                "model.init": {"choice": ["he", "normal"]},
            },
        },
    }
    first = load_sweep(write_sweep(tmp_path, spec))
    again = load_sweep(write_sweep(tmp_path, spec))
    other = load_sweep(write_sweep(tmp_path, {**spec, "random": {**spec["random"], "seed": 4}}))
    rates = [t.values["train.learning_rate"] for t in first.trials]
    assert [t.id for t in first.trials] == [t.id for t in again.trials]
    assert rates != [t.values["train.learning_rate"] for t in other.trials]
    assert all(0.001 <= r <= 1.0 for r in rates)
    assert min(rates) < 0.03 and max(rates) > 0.03  # log-uniform: both decades below and above √(0.001·1)
    assert {t.values["train.lr_decay_epochs"] for t in first.trials} <= {1, 2, 3}
    assert {t.values["model.init"] for t in first.trials} == {"he", "normal"}


def test_grid_and_random_combine_and_precedence(tmp_path):
    spec = {
        "set": {**TINY, "train.epochs": 5},
        "grid": {"train.l1": [0.0, 1e-5]},
        "random": {"trials": 2, "params": {"train.learning_rate": {"uniform": [0.01, 0.1]}}},
    }
    sweep = load_sweep(write_sweep(tmp_path, spec), ["train.epochs=7"])
    assert len(sweep.trials) == 4
    assert all(t.config.train.epochs == 7 for t in sweep.trials)  # --set wins over the file's set
    # Each random draw is tried at each grid point.
    assert sweep.trials[0].values["train.learning_rate"] == sweep.trials[2].values["train.learning_rate"]


def test_base_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("train:\n  learning_rate: 0.003\n  l1: 0.001\n")
    path = write_sweep(tmp_path / "configs", {"base": "base.yaml", "set": TINY, "grid": {"model.init": ["he"]}})
    assert load_sweep(path).trials[0].config.train.l1 == 0.001


def test_without_a_validation_size_the_sweep_holds_out_10000(tmp_path):
    tiny = {k: v for k, v in TINY.items() if k != "data.validation_size"}
    sweep = load_sweep(write_sweep(tmp_path, {"set": tiny, "grid": {"train.learning_rate": [0.1]}}))
    assert sweep.trials[0].config.data.validation_size == 10000
    assert any("10000" in note for note in sweep.notes)


@pytest.mark.parametrize(
    ("spec", "overrides", "says"),
    [
        ({"grid": {"train.learning_rat": [0.1]}}, [], "unknown config key train.learning_rat"),
        ({"grid": {"train.learning_rate": []}}, [], "grid train.learning_rate must be a non-empty list"),
        ({"grid": {"train.learning_rate": 0.1}}, [], "must be a non-empty list"),
        ({"grid": {"train.learning_rate": [-1.0]}}, [], "train.learning_rate must be a positive number"),
        ({"grid": {"data.validation_size": [0]}}, [], "data.validation_size is 0"),
        ({"grid": {"train.l1": [0.0]}}, ["data.validation_size=0"], "data.validation_size is 0"),
        ({"grid": {"train.l1": [0.0]}, "random": {"trials": 2}}, [], "random params must name at least one key"),
        ({"random": {"trials": 0, "params": {"train.l1": {"choice": [0.0]}}}}, [], "positive integer"),
        ({"random": {"trials": 2, "params": {"train.l1": {"gauss": [0, 1]}}}}, [], "unknown distribution gauss"),
        ({"random": {"trials": 2, "params": {"train.l1": {"log_uniform": [0, 1]}}}}, [], "log_uniform needs low > 0"),
        ({"random": {"trials": 2, "params": {"train.l1": {"uniform": [1, 0]}}}}, [], "low <= high"),
        ({"random": {"trials": 2, "params": {"train.l1": {"choice": []}}}}, [], "non-empty list"),
        ({"random": {"trials": 2, "params": {"train.l1": [0.1]}}}, [], "expected one of"),
        (
            {"grid": {"train.l1": [0.0]}, "random": {"trials": 1, "params": {"train.l1": {"choice": [0.1]}}}},
            [],
            "in both grid and random",
        ),
        ({"grid": {"train.l1": [0.0]}}, ["train.l1=0.1"], "varies this key"),
        ({"grid": {"train.l1": [0.0]}}, ["train.l1"], "expected section.key=value"),
        ({"set": {"train.l1": 0.0}, "grid": {"train.l1": [0.0]}}, [], "both fixed in set and swept"),
        ({"set": {"train.epochs": 1}}, [], "nothing to sweep"),
        ({"grid": {"train.l1": [0.0]}, "trials": 3}, [], "unknown section trials"),
        ({"base": "missing.yaml", "grid": {"train.l1": [0.0]}}, [], "base config"),
        ({"grid": {"train.l1": [0.0]}, "sampler": "bogus"}, [], "sampler must be one of grid, random, tpe"),
        ({"grid": {"train.l1": [0.0]}, "sampler": "tpe"}, [], "sampler tpe searches the random section alone"),
        ({"set": {"train.l1": 0.0}, "sampler": "tpe"}, [], "nothing to sweep"),
        ({"grid": {"train.l1": [0.0]}, "pruner": "fast"}, [], "pruner must be one of none, median, hyperband"),
        ({"grid": {"train.l1": [0.0]}, "pruner": {"median": {"bogus": 1}}}, [], "pruner median: unknown setting bogus"),
        ({"grid": {"train.l1": [0.0]}, "pruner": {"median": {"n_warmup_steps": "x"}}}, [], "must be an integer"),
        (
            {"random": {"trials": 2, "params": {"train.learning_rate": {"uniform": [-1.0, 0.1]}}}, "sampler": "tpe"},
            [],
            "train.learning_rate must be a positive number",
        ),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, spec, overrides, says):
    path = write_sweep(tmp_path, spec)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path, overrides)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
    assert str(path) in message or message.startswith("--set")


def test_a_missing_or_malformed_sweep_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(bad)


def test_the_cli_prints_one_error_line_for_a_bad_sweep_file(tmp_path, capsys):
    path = write_sweep(tmp_path, {"grid": {"train.nope": [1]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: unknown config key train.nope") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_trial_ids_depend_on_the_config_not_on_threads_or_data_folder():
    config = Config()
    assert trial_id(config) == trial_id(config.replace(**{"runtime.threads": 3, "data.dir": "/elsewhere"}))
    assert trial_id(config) != trial_id(config.replace(**{"train.learning_rate": 0.2}))
    assert trial_id(config) != trial_id(config.replace(**{"seed": 1}))


def test_workers_share_the_cores():
    assert threads_per_worker(1, cores=4) == 4
    assert threads_per_worker(2, cores=4) == 2
    assert threads_per_worker(3, cores=4) == 1
    with pytest.raises(UserError, match="more than the 2 CPU cores"):
        threads_per_worker(3, cores=2)
    with pytest.raises(UserError, match="at least 1"):
        threads_per_worker(0, cores=2)


# ---------------------------------------------------------------------------------------------------
# Running a sweep (synthetic data, in this process)


@pytest.fixture
def two_trials(tmp_path) -> Path:
    """A sweep of one trial that trains and one whose learning rate diverges."""
    return write_sweep(tmp_path, {"set": TINY, "grid": {"train.learning_rate": [0.05, 1.0e4]}})


def test_a_two_trial_sweep_writes_its_outputs_and_records_divergence(tmp_path, two_trials):
    sweep = load_sweep(two_trials)
    out = tmp_path / "out"
    printed = io.StringIO()
    best = run_sweep(sweep, place(out), stream=printed, load=synthetic_loader)

    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == [t.id for t in sweep.trials]  # the file's order, whatever ran first
    good, diverged = rows
    assert good["status"] in ("finished", "converged") and good["rank"] == "1"
    assert float(good["validation_accuracy"]) >= 0 and float(good["test_accuracy"]) >= 0
    assert good["train.learning_rate"] == "0.05" and int(good["epochs"]) == 2
    assert diverged["status"] == "diverged" and diverged["rank"] == ""
    assert best[0]["trial"] == sweep.trials[0].id
    assert good["folder"] == str((out / "trials" / good["trial"]).resolve()) and good["host"]
    assert (out / "study.db").is_file()

    chosen = load_config(out / "best.yaml")  # a complete config, usable as --config
    assert chosen == sweep.trials[0].config
    summary = (out / "summary.md").read_text()
    assert f"| 1 | `{sweep.trials[0].id}` | 0.05 |" in summary
    assert f"`{sweep.trials[1].id}` | 10000 | diverged |" in summary
    for plot in ("accuracy_vs_rate.png", "learning_curves.png"):
        assert (out / "plots" / plot).read_bytes()[:4] == b"\x89PNG"

    lines = printed.getvalue().splitlines()
    assert sum(line.startswith("[") for line in lines) == 2  # one progress line per trial
    assert any("diverged" in line and "| best:" in line for line in lines)
    states = [t.state.name for t in trials_of(out)]
    assert states == ["COMPLETE", "COMPLETE"]


def test_best_per_value_takes_the_best_usable_trial_of_each_value():
    def row(trial, optimizer, accuracy, status="finished"):
        return {
            "trial": trial,
            "train.optimizer": optimizer,
            "status": status,
            "validation_accuracy": accuracy,
            "validation_loss": 1 - accuracy,
            "epochs": 3,
        }

    rows = [
        row("a", "sgd", 0.90),
        row("b", "adam", 0.95),
        row("c", "sgd", 0.97),
        row("d", "adam", 0.99, "diverged"),
        row("e", "momentum", 0.93),
        row("f", "momentum", 0.995, "pruned"),
    ]
    assert [r["trial"] for r in best_per_value(rows, "train.optimizer")] == ["c", "b", "e"]


def test_with_two_swept_keys_the_first_one_gets_curves_per_value(tmp_path):
    grid = {"train.optimizer": ["adam", "sgd"], "train.learning_rate": [0.003, 0.05]}
    out = tmp_path / "out"
    sweep = load_sweep(write_sweep(tmp_path, {"set": TINY, "grid": grid}))
    run_sweep(sweep, place(out), stream=io.StringIO(), load=synthetic_loader)
    assert (out / "plots" / "learning_curves_by_optimizer.png").read_bytes()[:4] == b"\x89PNG"
    assert "plots/learning_curves_by_optimizer.png" in (out / "summary.md").read_text()


def test_resuming_repeats_no_finished_trial(tmp_path, two_trials, monkeypatch):
    sweep = load_sweep(two_trials)
    out = tmp_path / "out"
    run_sweep(sweep, place(out), stream=io.StringIO(), load=synthetic_loader)
    before = (out / "trials.csv").read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished trial was run again")

    monkeypatch.setattr(sweep_module, "run_trial", must_not_run)
    printed = io.StringIO()
    run_sweep(load_sweep(two_trials), place(out), stream=printed, load=synthetic_loader)
    assert "2 already done, 0 to run" in printed.getvalue()
    assert (out / "trials.csv").read_text() == before
    assert len(trials_of(out)) == 2


def test_an_interrupted_trial_is_queued_again_and_run_from_scratch_on_resume(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, {"set": TINY, "grid": {"train.learning_rate": [0.05, 0.1, 0.2]}})
    sweep = load_sweep(path)
    run_sweep(sweep, place(tmp_path / "ref"), stream=io.StringIO(), load=synthetic_loader)

    real_run_trial, calls = sweep_module.run_trial, []

    def interrupted_in_the_second(run_dir, config, listeners, load=None):
        calls.append(run_dir.name)
        if len(calls) == 2:  # after an epoch, as Ctrl-C would: a partial folder is left behind
            real_run_trial(run_dir, config.replace(**{"train.epochs": 1}), listeners, load)
            raise Interrupted(2, "interrupted")
        return real_run_trial(run_dir, config, listeners, load)

    monkeypatch.setattr(sweep_module, "run_trial", interrupted_in_the_second)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        run_sweep(sweep, place(out), stream=io.StringIO(), load=synthetic_loader)
    assert [t.state.name for t in trials_of(out)] == ["COMPLETE", "FAIL", "WAITING"]  # the retry waits

    printed = io.StringIO()
    run_sweep(sweep, place(out), stream=printed, load=synthetic_loader)
    assert "1 already done, 2 to run" in printed.getvalue()
    assert calls[2] == calls[1]  # the interrupted trial first, into its own folder, from scratch
    assert results(read_csv(out / "trials.csv")) == results(read_csv(tmp_path / "ref" / "trials.csv"))
    states = [t.state.name for t in trials_of(out)]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1
    assert "1 trial(s) stopped unfinished" in (out / "summary.md").read_text()


def test_a_trial_whose_folder_another_worker_holds_is_a_duplicate_that_trains_and_writes_nothing(tmp_path):
    """Two workers of one machine that took one grid point at the same moment: the one that finds the trial's folder
    locked (the other trains there) marks its trial a duplicate, trains nothing, writes nothing there and queues
    no retry."""
    sweep = load_sweep(write_sweep(tmp_path, {"set": TINY, "grid": {"train.learning_rate": [0.05]}}))
    out = tmp_path / "out"
    folder = out / "trials" / sweep.trials[0].id
    folder.mkdir(parents=True)
    study = open_study(sweep, open_storage(place(out).url), "sweep")
    objective = functools.partial(sweep_module._objective, sweep=sweep, out=out, stop=lambda: False,
                                  load=synthetic_loader)  # fmt: skip
    with lock_folder(folder, SWEEP_COMMAND):  # the other worker, training there
        study.optimize(objective, n_trials=1, catch=(sweep_module.Duplicate,))  # as the sweep's workers call it
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # the holder's lock alone
    (frozen,) = study.trials  # no retry queued
    assert frozen.state.name == "FAIL" and "curve" not in frozen.user_attrs
    assert re.match(rf"{folder} is in use by process \d+ \(mnist-mlp sweep", frozen.user_attrs["duplicate_of"])


def test_a_pruned_trial_stops_keeps_its_folder_and_is_reported_as_pruned(tmp_path, monkeypatch):
    import optuna

    class PruneTheSlowRate(optuna.pruners.BasePruner):
        """Prunes the trial at α = 0.001 after its second epoch (the real pruners are tested on MNIST)."""

        def prune(self, study, trial) -> bool:
            return trial.params["train.learning_rate"] == 0.001 and trial.last_step == 2

    monkeypatch.setattr("mnist_mlp.study.pruner_for", lambda sweep: PruneTheSlowRate())
    spec = {"set": {**TINY, "train.epochs": 4}, "grid": {"train.learning_rate": [0.05, 0.001]}}
    sweep = load_sweep(write_sweep(tmp_path, spec))
    out = tmp_path / "out"
    printed = io.StringIO()
    run_sweep(sweep, place(out), stream=printed, load=synthetic_loader)

    good, pruned = read_csv(out / "trials.csv")
    assert (good["status"], good["epochs"], good["rank"]) == ("finished", "4", "1")
    assert (pruned["status"], pruned["epochs"], pruned["rank"]) == ("pruned", "2", "")
    folder = out / "trials" / pruned["trial"]
    assert len((folder / "history.csv").read_text().splitlines()) == 3  # header and two epochs
    assert json.loads((folder / "metrics.json").read_text())["status"] == "pruned"
    assert (folder / "checkpoints").is_dir()
    assert "pruned after 2 epochs" in printed.getvalue()
    summary = (out / "summary.md").read_text()
    assert "1 pruned" in summary and "epochs trained: 6; pruning left out 2 more" in summary
    assert [t.state.name for t in sorted(trials_of(out), key=lambda t: t.params["train.learning_rate"])] == [
        "PRUNED",
        "COMPLETE",
    ]


def test_tpe_runs_its_budget_with_values_in_the_space(tmp_path):
    spec = {
        "set": {k: v for k, v in TINY.items() if k != "model.hidden"},
        "random": {
            "trials": 4,
            "seed": 5,
            "params": {"train.learning_rate": {"log_uniform": [0.01, 0.1]}, "model.hidden": {"choice": [[8], [16]]}},
        },
        "sampler": {"tpe": {"n_startup_trials": 2}},
    }
    out = tmp_path / "out"
    run_sweep(load_sweep(write_sweep(tmp_path, spec)), place(out), stream=io.StringIO(), load=synthetic_loader)
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 4 and all(row["status"] == "finished" for row in rows)
    assert all(0.01 <= float(row["train.learning_rate"]) <= 0.1 for row in rows)
    assert {row["model.hidden"] for row in rows} <= {"[8]", "[16]"}
    assert "tpe sampler" in (out / "summary.md").read_text()


def test_the_report_is_written_from_the_study_alone(tmp_path, two_trials):
    out = tmp_path / "out"
    run_sweep(load_sweep(two_trials), place(out), stream=io.StringIO(), load=synthetic_loader)
    shutil.rmtree(out / "trials")  # as on another machine: the trial folders are not here
    url = place(out).url
    elsewhere = tmp_path / "report"
    assert main(["sweep", "--report", "--storage", url, "--study", "sweep", "--out", str(elsewhere)]) == 0
    assert read_csv(elsewhere / "trials.csv") == read_csv(out / "trials.csv")
    assert (elsewhere / "best.yaml").read_text() == (out / "best.yaml").read_text()
    assert (elsewhere / "summary.md").read_text() == (out / "summary.md").read_text()
    assert (elsewhere / "plots" / "learning_curves.png").is_file()


def test_report_and_storage_errors_are_one_line(tmp_path, two_trials, capsys):
    cases = [
        (["sweep", "--report", "--out", str(tmp_path / "none")], "no study.db here"),
        (["sweep", "--report", "--storage", "nonsense://x", "--study", "s"], "--storage nonsense://x"),
        (["sweep"], "give a sweep file"),
    ]
    for argv, says in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    run_sweep(load_sweep(two_trials), place(tmp_path / "out"), stream=io.StringIO(), load=synthetic_loader)
    assert main(["sweep", "--report", "--out", str(tmp_path / "out"), "--study", "other"]) == 2
    assert "no study other" in capsys.readouterr().err


def test_a_study_of_another_sweep_is_refused(tmp_path, two_trials):
    out = tmp_path / "out"
    run_sweep(load_sweep(two_trials), place(out), stream=io.StringIO(), load=synthetic_loader)
    other = load_sweep(two_trials, ["train.epochs=3"])
    with pytest.raises(UserError, match="study sweep in sqlite:///.* runs another search"):
        run_sweep(other, place(out), stream=io.StringIO(), load=synthetic_loader)


def test_a_sweep_whose_trials_all_diverge_writes_no_best_config(tmp_path):
    path = write_sweep(tmp_path, {"set": TINY, "grid": {"train.learning_rate": [1.0e4, 1.0e5]}})
    printed = io.StringIO()
    run_sweep(load_sweep(path), place(tmp_path / "out"), stream=printed, load=synthetic_loader)
    assert not (tmp_path / "out" / "best.yaml").exists()
    assert [r["status"] for r in read_csv(tmp_path / "out" / "trials.csv")] == ["diverged", "diverged"]
    assert "no trial trained without diverging" in printed.getvalue()


# ---------------------------------------------------------------------------------------------------
# Real MNIST: worker processes, pruning


def mnist_set(mnist_dir: Path, **more) -> dict:
    """A slice of real MNIST and a small network: a trial trains in seconds. Without XLA, whose matmuls sum in
    an order that depends on the thread count (docs/performance.md), so that runs with other thread counts agree."""
    return {
        "data.dir": str(mnist_dir),
        "data.train_limit": 2000,
        "data.test_limit": 1000,
        "data.validation_size": 1000,
        "model.hidden": [32],
        "train.epochs": 2,
        "train.steps_per_call": 20,
        "runtime.device": "cpu",
        "runtime.jit_compile": False,
        **more,
    }


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(tmp_path, mnist_dir):
    """One process (two threads) and two spawned workers (one thread each) run the same trials to the same
    figures, up to the last bits of the evaluation's sums, whose order follows the thread count."""
    spec = {"set": mnist_set(mnist_dir), "grid": {"train.learning_rate": [0.05, 0.2]}}
    sweep = load_sweep(write_sweep(tmp_path, spec))
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        run_sweep(sweep, place(out), workers=workers, stream=io.StringIO())
        tables.append(results(read_csv(out / "trials.csv")))
    figures = [column for column in tables[0][0] if column.endswith(("_accuracy", "_loss"))]
    for one, two in zip(*tables, strict=True):
        assert {k: v for k, v in one.items() if k not in figures} == {k: v for k, v in two.items() if k not in figures}
        assert [float(one[k]) for k in figures] == pytest.approx([float(two[k]) for k in figures], rel=1e-6)
    assert all(row["status"] == "finished" for row in tables[0])
    assert float(tables[0][0]["validation_accuracy"]) > 0.8  # it did train on real digits


@pytest.mark.slow
def test_the_median_pruner_saves_epochs_on_the_same_draws(tmp_path, mnist_dir):
    """One random search (the same 12 draws) without and with the median pruner: the pruner stops the trials
    whose validation loss is behind the median after an epoch; the trials it lets run train exactly as
    without it."""
    spec = {
        "set": mnist_set(mnist_dir, **{"train.epochs": 6, "train.optimizer": "momentum"}),
        "random": {"trials": 12, "seed": 0, "params": {"train.learning_rate": {"log_uniform": [0.0003, 0.3]}}},
    }
    pruned_spec = {**spec, "pruner": {"median": {"n_startup_trials": 3, "n_warmup_steps": 1}}}
    runs = {}
    for name, written in (("none", spec), ("median", pruned_spec)):
        sweep = load_sweep(write_sweep(tmp_path, written, f"{name}.yaml"))
        best = run_sweep(sweep, place(tmp_path / name), stream=io.StringIO())
        runs[name] = (read_csv(tmp_path / name / "trials.csv"), best[0])
    (plain, plain_best), (pruning, pruning_best) = runs["none"], runs["median"]
    epochs = {name: sum(int(row["epochs"]) for row in rows) for name, (rows, _) in runs.items()}
    kept = [row for row in pruning if row["status"] != "pruned"]
    by_trial = {row["trial"]: row for row in results(plain)}
    assert [row["trial"] for row in plain] == [row["trial"] for row in pruning]  # the same draws
    assert all(results([row])[0] | {"rank": ""} == by_trial[row["trial"]] | {"rank": ""} for row in kept)
    assert 0 < len(kept) < 12 and epochs["median"] < epochs["none"] == 12 * 6
    print(f"\npruning, 12 trials of 6 epochs (same draws): without a pruner {epochs['none']} epochs, best "
          f"{plain_best['trial']} validation loss {plain_best['validation_loss']:.4f}; with the median pruner "
          f"{epochs['median']} epochs ({12 - len(kept)} pruned), best {pruning_best['trial']} validation loss "
          f"{pruning_best['validation_loss']:.4f}")  # fmt: skip
