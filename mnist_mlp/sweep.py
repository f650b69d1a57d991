"""Hyperparameter search: train a base config at many settings and choose on a validation split.

A sweep file (YAML) names a base config, fixed overrides and the values to try:

    base: seed.yaml            # a config file, relative to the sweep file; omitted: the built-in defaults
    set:                       # applied to every trial
      train.epochs: 10
    grid:                      # every combination of these values
      train.learning_rate: [0.001, 0.01, 0.1]
      model.init: [normal, he]
    random:                    # `trials` seeded draws, one value per key per draw
      trials: 8
      seed: 0
      params:
        train.l1: {log_uniform: [1.0e-6, 1.0e-3]}   # also uniform, int_uniform (inclusive), choice

With both, every random draw is tried at every grid point. Precedence: base file < `set` < `--set` <
the swept values. Trials are ranked by validation accuracy (then validation loss, then fewer epochs);
test figures are recorded and reported but never used to choose. Each trial is a run folder
DIR/trials/<id>, its id a hash of its complete config, so a second run skips finished trials and the
results do not depend on how many worker processes ran them (each trial is deterministic on the CPU).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import tensorflow as tf

from mnist_mlp import import_tensorflow_quietly
from mnist_mlp.config import Config, DataConfig, from_dict, load_config, parse_override, read_yaml_mapping
from mnist_mlp.data import Mnist, load_mnist
from mnist_mlp.device import configure_threads
from mnist_mlp.errors import ConfigError, UserError
from mnist_mlp.run import train_and_evaluate
from mnist_mlp.rundir import RunDir
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

DEFAULT_VALIDATION_SIZE = 10000  # held out of the end of the training set when the sweep names none
SWEEP_SECTIONS = ("base", "set", "grid", "random")
RANDOM_KEYS = ("trials", "seed", "params")


@dataclass(frozen=True)
class Trial:
    """One setting of the swept keys and the complete config it trains."""

    id: str
    values: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the base config every trial starts from and the trials, in file order."""

    path: Path
    base: Config
    keys: list[str]
    trials: list[Trial]
    notes: list[str]


# ---------------------------------------------------------------------------------------------------
# The sweep file


def load_sweep(path: str | Path, overrides: Iterable[str] = ()) -> Sweep:
    """Parse and check a sweep file and build every trial's config; errors are one line naming the file."""
    path = Path(path)
    where = str(path)
    tree = _read_sweep_file(path)
    fixed = _mapping(tree.get("set"), f"{where}: set")
    cli = dict(parse_override(item) for item in overrides)
    grid = _grid(tree.get("grid"), where)
    draws, random_keys = _random_draws(tree.get("random"), where)
    if not grid and not random_keys:
        raise ConfigError(f"{where}: nothing to sweep: give a grid and/or random section")
    keys = [*grid, *random_keys]
    for key in [*fixed, *keys]:
        _check_key(key, where)
    for key in cli:
        _check_key(key, "--set")
    _check_clashes(where, keys, grid, random_keys, fixed, cli)

    base = _apply(_base_config(tree.get("base"), path), fixed, where)
    base = _apply(base, cli, "--set")
    notes = []
    if "data.validation_size" not in {*fixed, *cli, *keys} and base.data.validation_size == 0:
        base = base.replace(**{"data.validation_size": DEFAULT_VALIDATION_SIZE})
        notes.append(
            f"validation split: the last {DEFAULT_VALIDATION_SIZE} training images "
            "(the sweep does not set data.validation_size)"
        )
    trials, duplicates = _build_trials(base, grid, draws, where)
    if duplicates:
        notes.append(f"{duplicates} repeated setting(s) dropped (same config as an earlier trial)")
    return Sweep(path, base, keys, trials, notes)


def trial_id(config: Config) -> str:
    """A short hash of the complete config, leaving out what cannot change results (data folder, threads)."""
    tree = config.to_dict()
    tree["data"]["dir"] = None
    tree["runtime"]["threads"] = 0
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:10]


def _read_sweep_file(path: Path) -> dict:
    tree = read_yaml_mapping(path, kind="sweep file", holds=", ".join(SWEEP_SECTIONS))
    unknown = sorted(set(tree) - set(SWEEP_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section {unknown[0]} (known: {', '.join(SWEEP_SECTIONS)})")
    return tree


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of section.key: value, got {type(value).__name__}")
    return value


def _config_keys() -> list[str]:
    """Every dotted key a config has: seed, data.dir, ..., runtime.threads."""
    keys = []
    for name, value in Config().to_dict().items():
        keys += [f"{name}.{key}" for key in value] if isinstance(value, dict) else [name]
    return keys


def _check_key(key: str, where: str) -> None:
    if key not in _config_keys():
        raise ConfigError(f"{where}: unknown config key {key} (keys are as in configs/default.yaml, e.g. train.l1)")


def _check_clashes(where: str, keys: list, grid: dict, random_keys: list, fixed: dict, cli: dict) -> None:
    """A key is swept once, and a swept key is not also fixed (the fixed value would be silently lost)."""
    for key in grid:
        if key in random_keys:
            raise ConfigError(f"{where}: {key} is in both grid and random; sweep it in one of them")
    for key in keys:
        if key in fixed:
            raise ConfigError(f"{where}: {key} is both fixed in set and swept")
        if key in cli:
            raise ConfigError(f"--set {key}: the sweep {where} varies this key; drop the --set")


def _grid(value: Any, where: str) -> dict[str, list]:
    grid = _mapping(value, f"{where}: grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid {key} must be a non-empty list of values, got {values!r}")
    return grid


def _random_draws(value: Any, where: str) -> tuple[list[dict], list[str]]:
    """The random section's draws (seeded, in file order) and its keys; [{}] and [] when there is none."""
    if value is None:
        return [{}], []
    spec = _mapping(value, f"{where}: random")
    unknown = sorted(set(spec) - set(RANDOM_KEYS))
    if unknown:
        raise ConfigError(f"{where}: random: unknown key {unknown[0]} (known: {', '.join(RANDOM_KEYS)})")
    trials, seed = spec.get("trials"), spec.get("seed", 0)
    if not _is_int(trials) or trials < 1:
        raise ConfigError(f"{where}: random trials must be a positive integer, got {trials!r}")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"{where}: random seed must be a non-negative integer, got {seed!r}")
    params = _mapping(spec.get("params"), f"{where}: random params")
    if not params:
        raise ConfigError(f"{where}: random params must name at least one key and its distribution")
    samplers = {key: _sampler(dist, f"{where}: random {key}") for key, dist in params.items()}
    rng = np.random.default_rng(seed)
    draws = [{key: sample(rng) for key, sample in samplers.items()} for _ in range(trials)]
    return draws, list(params)


def _sampler(dist: Any, where: str) -> Callable[[np.random.Generator], Any]:
    """A draw from {uniform|log_uniform|int_uniform: [low, high]} or {choice: [values]}."""
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ConfigError(
            f"{where}: expected one of {{uniform|log_uniform|int_uniform: [low, high]}} or {{choice: [...]}}"
        )
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values")
        return lambda rng: args[int(rng.integers(len(args)))]
    if kind not in ("uniform", "log_uniform", "int_uniform"):
        raise ConfigError(f"{where}: unknown distribution {kind} (uniform, log_uniform, int_uniform, choice)")
    number = _is_int if kind == "int_uniform" else _is_number
    if not (isinstance(args, list) and len(args) == 2 and all(number(a) for a in args) and args[0] <= args[1]):
        kind_of = "integers" if kind == "int_uniform" else "numbers"
        raise ConfigError(f"{where}: {kind} needs [low, high], two {kind_of} with low <= high, got {args!r}")
    low, high = args
    if kind == "int_uniform":
        return lambda rng: int(rng.integers(low, high + 1))
    if kind == "uniform":
        return lambda rng: _round(rng.uniform(low, high))
    if low <= 0:
        raise ConfigError(f"{where}: log_uniform needs low > 0, got {low!r}")
    return lambda rng: _round(math.exp(rng.uniform(math.log(low), math.log(high))))


def _round(value: float) -> float:
    """Three significant digits: readable tables and ids, and finer than any rate needs."""
    return float(f"{value:.3g}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _base_config(base: Any, sweep_path: Path) -> Config:
    if base is None:
        return Config()
    if not isinstance(base, str):
        raise ConfigError(f"{sweep_path}: base must be a config file path, got {base!r}")
    path = sweep_path.parent / base
    if not path.is_file():
        raise ConfigError(f"{sweep_path}: base config {path} not found (base is relative to the sweep file)")
    return load_config(path)


def _apply(config: Config, values: dict[str, Any], where: str) -> Config:
    """`config` with dotted keys set to `values`, validated; errors name `where`."""
    tree = config.to_dict()
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node[section]
        node[leaf] = value
    return from_dict(tree, where)


def _build_trials(base: Config, grid: dict, draws: list[dict], where: str) -> tuple[list[Trial], int]:
    """Every grid point with every random draw, in file order; repeated configs are kept once."""
    trials, seen = [], set()
    for point in itertools.product(*grid.values()):
        for draw in draws:
            values = {**dict(zip(grid, point, strict=True)), **draw}
            config = _apply(base, values, where)
            if config.data.validation_size == 0:
                raise ConfigError(
                    f"{where}: data.validation_size is 0: a sweep chooses on a validation split held out of "
                    "the training set, never on the test set; set it above 0 (e.g. 10000)"
                )
            ident = trial_id(config)
            if ident not in seen:
                seen.add(ident)
                trials.append(Trial(ident, values, config))
    duplicates = len(list(itertools.product(*grid.values()))) * len(draws) - len(trials)
    return trials, duplicates


# ---------------------------------------------------------------------------------------------------
# Running trials


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
        status = json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in DONE else None


@functools.lru_cache(maxsize=2)
def cached_mnist(data: DataConfig) -> Mnist:
    """MNIST per data config, read once per process however many trials use it."""
    return load_mnist(data)


def run_trial(run_dir: Path, config: Config, load: Callable[[DataConfig], Mnist] | None = None) -> str:
    """Train one trial from scratch in `run_dir` (a partial run there is replaced); returns its status."""
    run = RunDir.create(run_dir, run_dir.name, overwrite=True)
    try:
        result = train_and_evaluate(config, run, [], mnist=(load or cached_mnist)(config.data))
    except Diverged:  # history and metrics are written with status "diverged"; the sweep goes on
        return "diverged"
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
