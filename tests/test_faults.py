"""Faults survived, measured against uninterrupted runs: a training process killed (SIGKILL) at random
moments and inside its writes, then resumed; four runs started at once with default names; a sweep with
two workers stopped by SIGINT/SIGTERM at random moments, then resumed. Nothing lost, nothing mixed, and
the final weights bit-identical. Each test prints its counts (pytest -s shows them)."""

from __future__ import annotations

import contextlib
import csv
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest

from mnist_mlp.model import MLP
from mnist_mlp.rundir import RunDir
from mnist_mlp.study import open_storage, storage_url
from tests.conftest import child_env

pytestmark = pytest.mark.slow

# A small model on a slice of MNIST: each process spends its time mostly starting up, the rest in short
# epochs, so that 20 kills fit in a minute or two on 2 cores.
SMALL = ["--set", "data.train_limit=3000", "--set", "data.test_limit=1000", "--set", "model.hidden=[32]",
         "--set", "train.steps_per_call=20", "--set", "runtime.device=cpu", "--set", "runtime.threads=1"]  # fmt: skip
EPOCHS = 50  # more than 20 kills can use up: each lets the run progress by a few epochs at most
KILLS = 20
POLL = 0.001  # seconds between looks at the run folder


def start(*args: str, cwd: Path, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnist_mlp", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(child: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL `child` as soon as ready() holds; False when it exited first."""
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        if ready():
            child.kill()
            child.wait()
            return child.returncode == -signal.SIGKILL
        time.sleep(POLL)
    child.wait(timeout=timeout)
    return False


def appears(folder: Path, pattern: str, nth: int = 1) -> Callable[[], bool]:
    """True once `nth` distinct files or folders matching `pattern` have been seen in `folder`."""
    seen: set[str] = set()

    def look() -> bool:
        if folder.is_dir():
            seen.update(p.name for p in folder.glob(pattern))
        return len(seen) >= nth

    return look


def after(seconds: float) -> Callable[[], bool]:
    due = time.monotonic() + seconds
    return lambda: time.monotonic() >= due


def either(*conditions: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: any(condition() for condition in conditions)


def epochs(run: Path) -> int:
    """Rows in history.csv (0 when there is none yet)."""
    try:
        return max(0, len((run / "history.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def after_next_epoch(run: Path, seconds: float, epochs_later: int = 1) -> Callable[[], bool]:
    """True `seconds` after history.csv has gained `epochs_later` rows."""
    before, due = epochs(run), []

    def look() -> bool:
        if not due and epochs(run) >= before + epochs_later:
            due.append(time.monotonic() + seconds)
        return bool(due) and time.monotonic() >= due[0]

    return look


def weights(run: RunDir) -> list[np.ndarray]:
    config = run.read_config()
    model = MLP(config.model, config.seed)
    run.restore_checkpoint(model)
    return [v.numpy() for v in model.variables_in_order]


def without(rows: list[dict] | dict, *keys: str):
    if isinstance(rows, dict):
        return {k: v for k, v in rows.items() if k not in keys}
    return [without(row, *keys) for row in rows]


def leftovers(run: Path) -> list[str]:
    """Hidden temporary files and folders anywhere in a run folder (tb/ aside)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if "tb" not in p.relative_to(run).parts)


def test_sigkill_at_20_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, mnist_dir):
    env = child_env(MNIST_MLP_DATA_DIR=str(mnist_dir))
    fresh = ["train", "--out", "run", *SMALL, "--set", f"train.epochs={EPOCHS}", "--quiet"]
    started = time.monotonic()
    reference = start(*fresh[:2], "ref", *fresh[3:], cwd=tmp_path, env=env)
    epochs_done: dict[int, float] = {}  # epoch: when its history row appeared
    while reference.poll() is None:
        epochs_done.setdefault(epochs(tmp_path / "ref"), time.monotonic() - started)
        time.sleep(0.005)
    assert reference.returncode == 0, reference.stderr.read()
    reference_seconds = time.monotonic() - started
    first_epoch = epochs_done[1]
    epoch_seconds = float(np.median(np.diff([epochs_done[e] for e in sorted(epochs_done) if e > 0])))

    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    rng = random.Random(0)
    # What each kill waits for: a random moment (start-up, data, training, evaluation, any write), or the
    # moment a write of the checkpoint folder, state.json or history.csv is under way.
    moments = {
        # Random moments in time, counted from the child's start (start-up, loading, the first epoch) or
        # from the first epoch it finishes (training, evaluation, any write): a start-up much faster than
        # the reference's (a busy machine) cannot let the run race through all its epochs.
        "random": lambda: either(after(rng.uniform(0, first_epoch)), after_next_epoch(run, 0.0)),
        "random in training": lambda: after_next_epoch(run, rng.uniform(0, 2 * epoch_seconds)),
        "checkpoint folder being written": lambda: appears(checkpoints, ".tmp-*", nth=rng.randint(1, 3)),
        "state.json being replaced": lambda: appears(checkpoints, ".state.json.*.tmp", nth=rng.randint(1, 2)),
        "history.csv being replaced": lambda: appears(run, ".history.csv.*.tmp", nth=rng.randint(1, 2)),
    }
    # A write lasts milliseconds; a look that misses it (a busy machine) kills two epochs later instead,
    # and the kill is counted as random.
    hits: dict[str, int] = {}
    plan = [*["random"] * 6, *["random in training"] * 5, *[n for n in moments if not n.startswith("random")] * 3]
    rng.shuffle(plan)
    plan[-1] = "closing: SavedModel being written"  # the last kill: after the last epoch, before metrics.json
    moments[plan[-1]] = lambda: appears(run, ".saved_model-*")
    kills: dict[str, int] = {}
    for moment in plan:
        child = start(*(["train", "--resume", "run", "--quiet"] if (run / "config.yaml").exists() else fresh),
                      cwd=tmp_path, env=env)  # fmt: skip
        look = moments[moment]()
        if moment.startswith(("random", "closing")):
            ready = look
        else:
            ready = either(look, after_next_epoch(run, 2 * epoch_seconds, epochs_later=2))
        if not kill_when(child, ready):
            pytest.fail(f"exit {child.returncode} before the kill ({moment}): {child.stderr.read()}")
        if moment.startswith(("random", "closing")) or look():
            hits[moment] = hits.get(moment, 0) + 1
        kills[moment] = kills.get(moment, 0) + 1
    assert not (run / "metrics.json").exists()
    final = start("train", "--resume", "run", "--quiet", cwd=tmp_path, env=env)
    assert final.wait() == 0, final.stderr.read()

    ref, got = RunDir.open(tmp_path / "ref"), RunDir.open(run)
    mismatches = sum(not np.array_equal(a, b) for a, b in zip(weights(ref), weights(got), strict=True))
    assert mismatches == 0
    assert without(got.read_history(), "seconds") == without(ref.read_history(), "seconds")
    assert without(got.read_metrics(), "seconds_total") == without(ref.read_metrics(), "seconds_total")
    assert np.array_equal(np.load(run / "test_predictions.npy"), np.load(tmp_path / "ref" / "test_predictions.npy"))
    assert leftovers(run) == []
    total = sum(kills.values())
    print(f"\nSIGKILL: {total} kills survived ({kills}; the write under way when killed: {hits}); 1 run compared "
          f"with an uninterrupted one "
          f"({EPOCHS} epochs, {len(weights(ref))} tensors); mismatches: {mismatches}; "
          f"reference run {reference_seconds:.1f} s, first epoch after {first_epoch:.1f} s")  # fmt: skip
    assert total == KILLS


def test_four_runs_started_at_once_with_default_names_each_get_their_own_folder(tmp_path, mnist_dir):
    from mnist_mlp.data import load_mnist
    from mnist_mlp.run import train_and_evaluate

    env = child_env(MNIST_MLP_DATA_DIR=str(mnist_dir))
    children = [start("train", *SMALL, "--set", "train.epochs=2", "--set", f"seed={seed}", "--quiet",
                      cwd=tmp_path, env=env) for seed in range(4)]  # fmt: skip
    for child in children:
        assert child.wait(timeout=600) == 0, child.stderr.read()
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if p.name != "latest")
    assert len(folders) == 4
    assert (tmp_path / "runs" / "latest").resolve() in {f.resolve() for f in folders}  # one of them, finished
    runs = {RunDir.open(folder).read_config().seed: RunDir.open(folder) for folder in folders}
    assert sorted(runs) == [0, 1, 2, 3]  # every folder holds its own run's config
    config = runs[0].read_config()
    mnist = load_mnist(config.data)
    for seed, run in runs.items():  # and that run's history and metrics: as the same seed trained alone
        alone = train_and_evaluate(config.replace(seed=seed), RunDir.create(tmp_path / f"alone-{seed}", "t"),
                                   mnist=mnist)  # fmt: skip
        for got, expected in zip(run.read_history(), alone.history, strict=True):
            assert without(got, "seconds") == pytest.approx(without(expected, "seconds"), rel=1e-5)
        assert run.read_metrics()["test_loss"] == pytest.approx(alone.metrics["test_loss"], rel=1e-5)
        assert leftovers(run.path) == []
    suffixed = sum(folder.name.rsplit("-", 1)[-1].isdigit() for folder in folders)
    print(f"\n4 runs at once: {len(folders)} folders ({suffixed} with a -N suffix), 4 runs compared, mismatches: 0")


SWEEP = """
set:
  data.validation_size: 1000
  data.train_limit: 3000
  data.test_limit: 1000
  model.hidden: [32]
  train.epochs: 4
  train.steps_per_call: 20
  runtime.device: cpu
grid:
  train.learning_rate: [0.05, 0.1, 0.2, 0.4]
  seed: [0, 1]
"""


def after_an_epoch_of(child_started: float, trials: Path) -> Callable[[], bool]:
    """True once some trial's history.csv was written after `child_started` (time.time()): the child trains."""

    def look() -> bool:
        with contextlib.suppress(OSError):
            return any(p.stat().st_mtime >= child_started for p in trials.glob("*/history.csv"))
        return False

    return look


def test_a_sweep_stopped_by_sigint_and_sigterm_then_resumed_loses_and_mixes_nothing(tmp_path, mnist_dir):
    env = child_env(MNIST_MLP_DATA_DIR=str(mnist_dir))
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    reference = start("sweep", "sweep.yaml", "--out", "ref", "--workers", "2", cwd=tmp_path, env=env)
    assert reference.wait(timeout=900) == 0, reference.stderr.read()

    # Each signal comes at a random moment while the child is training, chosen against the work it has
    # left: counted from the first epoch this child finishes, within about 0.75 trial-epochs of it. Each
    # resumed child has less left, and a signal after the sweep's end would interrupt nothing; with 32
    # trial-epochs in all and each stop taking at most a few, every signal lands in a running sweep
    # (the exit codes below must say so). A trial-epoch's length is the reference's own (its epochs'
    # training seconds, median): the sweep's wall time is mostly its workers' start-up, which made an
    # estimate from it several epochs long, long enough for a resumed child to finish before its signal.
    trial_epoch_seconds = statistics.median(
        float(row["seconds"]) for trial in (tmp_path / "ref" / "trials").iterdir()
        for row in RunDir.open(trial).read_history()
    )  # fmt: skip
    rng = random.Random(1)
    stops = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        began = time.time()
        child = start("sweep", "sweep.yaml", "--out", "got", "--workers", "2", cwd=tmp_path, env=env)
        ready = after_an_epoch_of(child_started=began, trials=tmp_path / "got" / "trials")
        while not ready() and child.poll() is None:
            time.sleep(POLL)
        time.sleep(rng.uniform(0, 0.75 * trial_epoch_seconds))
        child.send_signal(signum)
        code = child.wait(timeout=300)
        assert code == 128 + signum, f"exit {code}: the {signal.Signals(signum).name} interrupted nothing"
        stops.append((signal.Signals(signum).name, code))
    final = start("sweep", "sweep.yaml", "--out", "got", "--workers", "2", cwd=tmp_path, env=env)
    assert final.wait(timeout=900) == 0, final.stderr.read()

    ids = sorted(p.name for p in (tmp_path / "ref" / "trials").iterdir())
    assert ids == sorted(p.name for p in (tmp_path / "got" / "trials").iterdir())  # no stray folders either
    mismatches = 0
    for trial in ids:
        ref, got = RunDir.open(tmp_path / "ref" / "trials" / trial), RunDir.open(tmp_path / "got" / "trials" / trial)
        same = (
            got.read_config() == ref.read_config()  # nothing mixed: each folder holds its own trial
            and without(got.read_history(), "seconds") == without(ref.read_history(), "seconds")
            and without(got.read_metrics(), "seconds_total") == without(ref.read_metrics(), "seconds_total")
            and all(np.array_equal(a, b) for a, b in zip(weights(ref), weights(got), strict=True))
            and leftovers(got.path) == []
        )
        mismatches += not same
    assert mismatches == 0
    assert results(tmp_path / "got" / "trials.csv") == results(tmp_path / "ref" / "trials.csv")
    # Nothing repeated: each trial finished once in the study; the ones stopped by a signal failed and ran again.
    # Once retries have used up trial numbers, the two workers can take one point at the same moment: the later
    # does not train, marked a duplicate (study.py); those are counted apart.
    study = optuna.load_study(study_name="sweep", storage=open_storage(storage_url(None, tmp_path / "got")))
    states: dict[str, list[str]] = {}
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    for trial in trained:
        states.setdefault(trial.user_attrs["id"], []).append(trial.state.name)
    assert sorted(states) == ids and all(s.count("COMPLETE") == 1 and s[-1] == "COMPLETE" for s in states.values())
    duplicates = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert all(t.state.name == "FAIL" and "curve" not in t.user_attrs for t in duplicates)  # none trained an epoch
    retried = sum(s.count("FAIL") for s in states.values())
    assert 1 <= retried <= 2 * len(stops)  # each signal stops the trials running then (two workers)
    print(f"\nsweep: stopped {len(stops)} times ({stops}), then resumed; {len(ids)} trials compared with an "
          f"uninterrupted sweep; mismatches: {mismatches}; {retried} stopped trials ran again, each trial finished "
          f"once; {len(duplicates)} caught duplicates; a trial-epoch {trial_epoch_seconds:.2f} s")  # fmt: skip


def results(path: Path) -> list[dict]:
    """trials.csv without what two runs of the same trials differ in: time, study trial number, folder."""
    with path.open(newline="") as file:
        return [{k: v for k, v in row.items() if k not in ("train_seconds", "number", "folder")}
                for row in csv.DictReader(file)]  # fmt: skip
