"""The sweep's study: storage URLs, and a real PostgreSQL server shared by two workers in their own folders, as
on two machines: every grid point once, the winner a single SQLite worker finds, and a worker SIGKILLed
mid-trial whose trial the other runs again. The PostgreSQL tests need a server: .ci/run starts a throwaway one
and sets MNIST_MLP_TEST_POSTGRES to its URL; without one they skip, saying why (under CI=true they fail)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mnist_mlp.errors import UserError
from mnist_mlp.study import fingerprint, open_storage, rows, shown, storage_url
from mnist_mlp.sweep_file import load_sweep
from tests.conftest import child_env

POSTGRES_ENV = "MNIST_MLP_TEST_POSTGRES"


def test_storage_urls(tmp_path):
    assert storage_url(None, tmp_path / "out") == f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}"
    assert storage_url("postgresql://u:secret@db:5432/s", tmp_path) == "postgresql+psycopg://u:secret@db:5432/s"
    assert storage_url("postgresql+psycopg2://u@db/s", tmp_path) == "postgresql+psycopg2://u@db/s"  # as given
    assert "secret" not in shown("postgresql+psycopg://u:secret@db:5432/s")


def test_an_unreachable_database_is_a_one_line_error(tmp_path):
    """With the postgres extra (make test POSTGRES=1, as CI runs): the server cannot be reached; without it (a plain
    make test): the driver is missing, and the line says how to install it."""
    import importlib.util

    said = "cannot open" if importlib.util.find_spec("psycopg") else r"the database driver is not installed: pip inst"
    with pytest.raises(UserError, match=rf"--storage postgresql\+psycopg://u:\*\*\*@127.0.0.1:9/s: {said}") as e:
        open_storage("postgresql+psycopg://u:pw@127.0.0.1:9/s")  # port 9: nothing listens there
    assert "\n" not in str(e.value)


def test_a_trial_another_worker_has_only_begun_to_record_is_left_out_of_the_rows_until_it_has():
    """Two workers: one reads the study's rows (its progress line) while the other's new trial has some of its
    attributes; that trial must not crash the reader (a KeyError once did)."""
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("id", "abc")
    assert rows(study) == []
    for key, value in (("order", 0), ("values", {"seed": 0}), ("config", {})):
        trial.set_user_attr(key, value)
    assert [(row["trial"], row["status"]) for row in rows(study)] == [("abc", "running")]


def test_the_fingerprint_follows_the_search_not_the_data_folder(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"set": {"data.validation_size": 100}, "grid": {"train.l1": [0.0, 1e-5]}}))
    same = fingerprint(load_sweep(path))
    assert fingerprint(load_sweep(path, ["data.dir=/elsewhere"])) == same  # another machine's data folder
    assert fingerprint(load_sweep(path, ["train.epochs=3"])) != same


# ---------------------------------------------------------------------------------------------------
# PostgreSQL: two workers, as on two machines


@pytest.fixture(scope="module")
def postgres() -> str:
    """The test server's URL; skips with the reason when there is none (fails under CI=true)."""
    url, problem = os.environ.get(POSTGRES_ENV), None
    if not url:
        problem = f"no PostgreSQL server: set {POSTGRES_ENV} to its URL (.ci/run starts one)"
    else:
        try:
            open_storage(storage_url(url, Path()))
        except UserError as exc:
            problem = f"the PostgreSQL server of {POSTGRES_ENV} cannot be reached: {exc}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem}: CI must run the PostgreSQL tests")
        pytest.skip(problem)
    return url


GRID = {"train.learning_rate": [0.05, 0.1, 0.2, 0.4], "seed": [0, 1]}


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory, mnist_dir) -> Path:
    """8 trials of 3 epochs on a slice of MNIST, one thread each, without XLA (its sums depend on the thread
    count, and the single-worker reference has other threads)."""
    folder = tmp_path_factory.mktemp("grid")
    spec = {
        "set": {
            "data.train_limit": 2000,
            "data.test_limit": 1000,
            "data.validation_size": 1000,
            "model.hidden": [32],
            "train.epochs": 3,
            "train.steps_per_call": 20,
            "runtime.device": "cpu",
            "runtime.jit_compile": False,
            "runtime.threads": 1,
        },
        "grid": GRID,
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "grid.yaml"


def sweep_command(grid_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mnist_mlp", "sweep", str(grid_file), "--out", "sweep", *args]


def start_machine(folder: Path, grid_file: Path, mnist_dir: Path, *args: str) -> subprocess.Popen:
    """`mnist-mlp sweep` in its own working folder, as on a machine of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    env = child_env(MNIST_MLP_DATA_DIR=str(mnist_dir), MNIST_MLP_CACHE_DIR=str(folder / "cache"))
    command = sweep_command(grid_file, *args)
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen) -> str:
    out, err = child.communicate(timeout=1200)
    assert child.returncode == 0, err
    return out


def results(path: Path) -> list[dict]:
    """trials.csv without what two runs of the same trials differ in: time, study number, folder."""
    with path.open(newline="") as file:
        skip = ("train_seconds", "number", "folder")
        return [{k: v for k, v in row.items() if k not in skip} for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def single(tmp_path_factory, grid_file, mnist_dir) -> Path:
    """The same grid run by one worker on its own SQLite study: the reference."""
    folder = tmp_path_factory.mktemp("single")
    finish(start_machine(folder, grid_file, mnist_dir))
    return folder / "sweep"


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(storage_url(url, Path()))).trials


def kill_after_a_first_epoch(child: subprocess.Popen, folder: Path, url: str, name: str):
    """SIGKILLs `child` while one of its trials (those it trains in `folder`) is past its first epoch and not
    yet ended; that trial, or None when the child ended first. This grid's epochs after the first take some
    10 ms, less than a read of the study, and polling once missed every trial (CI): so the child runs in 10 ms
    slices and is stopped (SIGSTOP) while the study is read, and no state of its trials goes unseen."""
    storage, deadline = open_storage(storage_url(url, Path())), time.monotonic() + 600
    while child.poll() is None and time.monotonic() < deadline:
        child.send_signal(signal.SIGSTOP)
        try:
            running = storage.get_all_trials(storage.get_study_id_from_name(name), states=(TrialState.RUNNING,))
        except KeyError:  # the study is still to be made
            running = []
        for trial in running:
            if trial.user_attrs.get("curve") and trial.user_attrs.get("folder", "").startswith(str(folder)):
                child.send_signal(signal.SIGKILL)  # while stopped: after its trial's first epoch, before its last
                return trial
        child.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    return None


def per_point(trials: list) -> dict[str, list]:
    """The trials of each grid point (its config id), by state."""
    points: dict[str, list] = {}
    for trial in trials:
        points.setdefault(trial.user_attrs["id"], []).append(trial.state.name)
    return points


@pytest.mark.slow
def test_two_machines_share_one_postgresql_study(tmp_path, postgres, grid_file, mnist_dir, single):
    study = f"two-{uuid.uuid4().hex[:8]}"
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    children = [start_machine(m, grid_file, mnist_dir, "--storage", postgres, "--study", study) for m in machines]
    printed = [finish(child) for child in children]

    trials = trials_of(postgres, study)
    points = per_point(trials)
    assert len(points) == 8 and all(states == ["COMPLETE"] for states in points.values())  # each point once
    duplicates = sum(len(states) - 1 for states in points.values())
    retries = sum("failed_trial" in t.system_attrs for t in trials)
    ran = {m.name: [t for t in trials if t.user_attrs["folder"].startswith(str(m))] for m in machines}
    assert sum(len(r) for r in ran.values()) == 8 and all(ran.values())  # both machines trained trials
    for machine, mine in ran.items():  # each in its own local folder, holding that trial's run
        assert all(Path(t.user_attrs["folder"], "metrics.json").is_file() for t in mine), machine
    # Both machines wrote the report of the whole study; it is the single worker's, winner included.
    for machine in machines:
        assert results(machine / "sweep" / "trials.csv") == results(single / "trials.csv")
    assert all(line.startswith("best: ") for line in (p.splitlines()[-1] for p in printed))
    winner = next(row for row in results(single / "trials.csv") if row["rank"] == "1")
    print(f"\nPostgreSQL, 2 workers: {len(trials)} trials for 8 grid points ({len(ran['machine-a'])} on machine-a, "
          f"{len(ran['machine-b'])} on machine-b); retries: {retries}; duplicates: {duplicates}; winner "
          f"{winner['trial']} (lr {winner['train.learning_rate']}, seed {winner['seed']}) as SQLite's")  # fmt: skip
    assert retries == 0 and duplicates == 0


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_run_again_by_the_other(
    tmp_path, postgres, grid_file, mnist_dir, single
):
    study = f"kill-{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    child_a = start_machine(a, grid_file, mnist_dir, "--storage", postgres, "--study", study)
    child_b = start_machine(b, grid_file, mnist_dir, "--storage", postgres, "--study", study)
    try:
        killed = kill_after_a_first_epoch(child_a, a, postgres, study)
        assert killed is not None, f"machine-a ended (exit {child_a.poll()}) before any of its trials had an epoch"
        assert child_a.wait(timeout=60) == -signal.SIGKILL
        finish(child_b)
    finally:
        for child in (child_a, child_b):
            if child.poll() is None:
                child.kill()
                child.communicate()

    trials = trials_of(postgres, study)
    points = per_point(trials)
    assert len(points) == 8 and all(states.count("COMPLETE") == 1 for states in points.values())
    assert points[killed.user_attrs["id"]] == ["FAIL", "COMPLETE"]  # failed by its heartbeat, then run again
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["folder"].startswith(str(b))
    assert retry.params == killed.params
    assert results(b / "sweep" / "trials.csv") == results(single / "trials.csv")  # nothing lost, nothing mixed
    duplicates = sum(states.count("COMPLETE") - 1 for states in points.values())
    print(f"\nPostgreSQL, machine-a SIGKILLed in trial {killed.number} after its first epoch: {len(trials)} trials "
          f"for 8 grid points; retries: 1 (trial {retry.number} on machine-b); duplicates: {duplicates}; "
          "results as the SQLite run's")  # fmt: skip
