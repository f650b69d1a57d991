"""The sweep: parsing and checking sweep files, trials on synthetic data, outputs, resuming, divergence, workers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from mnist_mlp import sweep as sweep_module
from mnist_mlp.cli import main
from mnist_mlp.config import Config, load_config
from mnist_mlp.data import Mnist, split
from mnist_mlp.errors import ConfigError, UserError
from mnist_mlp.sweep import finished_status, run_sweep, threads_per_worker
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
    best = run_sweep(sweep, out, stream=printed, load=synthetic_loader)

    rows = read_csv(out / "trials.csv")
    assert [r["trial"] for r in rows] == [t.id for t in sweep.trials]
    good, diverged = rows
    assert good["status"] in ("finished", "converged") and good["rank"] == "1"
    assert float(good["validation_accuracy"]) >= 0 and float(good["test_accuracy"]) >= 0
    assert good["train.learning_rate"] == "0.05" and int(good["epochs"]) == 2
    assert diverged["status"] == "diverged" and diverged["rank"] == ""
    assert best[0]["trial"] == sweep.trials[0].id

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
    ]
    assert [r["trial"] for r in best_per_value(rows, "train.optimizer")] == ["c", "b", "e"]


def test_with_two_swept_keys_the_first_one_gets_curves_per_value(tmp_path):
    grid = {"train.optimizer": ["adam", "sgd"], "train.learning_rate": [0.003, 0.05]}
    out = tmp_path / "out"
    run_sweep(
        load_sweep(write_sweep(tmp_path, {"set": TINY, "grid": grid})), out, stream=io.StringIO(), load=synthetic_loader
    )
    assert (out / "plots" / "learning_curves_by_optimizer.png").read_bytes()[:4] == b"\x89PNG"
    assert "plots/learning_curves_by_optimizer.png" in (out / "summary.md").read_text()


def test_resuming_repeats_no_finished_trial(tmp_path, two_trials, monkeypatch):
    sweep = load_sweep(two_trials)
    out = tmp_path / "out"
    run_sweep(sweep, out, stream=io.StringIO(), load=synthetic_loader)
    before = (out / "trials.csv").read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished trial was run again")

    monkeypatch.setattr(sweep_module, "run_trial", must_not_run)
    printed = io.StringIO()
    run_sweep(load_sweep(two_trials), out, stream=printed, load=synthetic_loader)
    assert "2 already done, 0 to run" in printed.getvalue()
    assert (out / "trials.csv").read_text() == before


def test_an_unfinished_trial_is_run_again_from_scratch(tmp_path, two_trials):
    sweep = load_sweep(two_trials)
    out = tmp_path / "out"
    run_sweep(sweep, out, stream=io.StringIO(), load=synthetic_loader)
    before = read_csv(out / "trials.csv")
    interrupted = out / "trials" / sweep.trials[0].id
    (interrupted / "metrics.json").unlink()  # as if killed before the trial finished
    assert finished_status(interrupted) is None

    printed = io.StringIO()
    run_sweep(sweep, out, stream=printed, load=synthetic_loader)
    assert "1 already done, 1 to run" in printed.getvalue()
    after = read_csv(out / "trials.csv")
    results = [c for c in before[0] if c != "train_seconds"]
    assert [{c: r[c] for c in results} for r in after] == [{c: r[c] for c in results} for r in before]


def test_a_sweep_whose_trials_all_diverge_writes_no_best_config(tmp_path):
    path = write_sweep(tmp_path, {"set": TINY, "grid": {"train.learning_rate": [1.0e4, 1.0e5]}})
    printed = io.StringIO()
    run_sweep(load_sweep(path), tmp_path / "out", stream=printed, load=synthetic_loader)
    assert not (tmp_path / "out" / "best.yaml").exists()
    assert [r["status"] for r in read_csv(tmp_path / "out" / "trials.csv")] == ["diverged", "diverged"]
    assert "no trial trained without diverging" in printed.getvalue()


# ---------------------------------------------------------------------------------------------------
# Real MNIST: worker processes


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(tmp_path, mnist_dir):
    """Each trial is deterministic on the CPU, so one process and two spawned workers agree exactly: without XLA.
    XLA's matmuls sum in an order that depends on the thread count, and two workers get one thread each, so
    with XLA (auto on Linux) they agree to float rounding only (docs/performance.md)."""
    spec = {
        "set": {
            "data.dir": str(mnist_dir),
            "data.train_limit": 2000,
            "data.test_limit": 1000,
            "data.validation_size": 1000,
            "train.epochs": 2,
            "runtime.device": "cpu",
            "runtime.jit_compile": False,
        },
        "grid": {"train.learning_rate": [0.05, 0.2]},
    }
    sweep = load_sweep(write_sweep(tmp_path, spec))
    tables = []
    for workers in (1, 2):
        run_sweep(sweep, tmp_path / f"workers{workers}", workers=workers, stream=io.StringIO())
        rows = read_csv(tmp_path / f"workers{workers}" / "trials.csv")
        tables.append([{k: v for k, v in row.items() if k != "train_seconds"} for row in rows])
    assert tables[0] == tables[1]
    assert all(row["status"] == "finished" for row in tables[0])
    assert float(tables[0][0]["validation_accuracy"]) > 0.8  # it did train on real digits


def test_a_worker_sends_failures_back_as_text(tmp_path, monkeypatch):
    """Worker results must survive pickling: a bad data folder comes back as a user error, a crash as a traceback."""
    config = Config().replace(**{"data.dir": str(tmp_path / "no-mnist"), "data.validation_size": 100})
    index, status, detail = sweep_module._run_job((7, tmp_path / "trial", config, 1))
    assert (index, status) == (7, "user_error") and "no-mnist" in detail and "\n" not in detail

    def crash(*args):
        raise ValueError("boom")

    monkeypatch.setattr(sweep_module, "run_trial", crash)
    index, status, detail = sweep_module._run_job((3, tmp_path / "trial", config, 1))
    assert (index, status) == (3, "error") and "ValueError: boom" in detail
