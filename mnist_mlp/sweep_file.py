"""The sweep file: what `mnist-mlp sweep` reads, parsed and checked into a base config and its trials.

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
the swept values. Each trial's id is a hash of its complete config. Every error is one line naming the
file and the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlp.config import Config, from_dict, load_config, parse_override, read_yaml_mapping
from mnist_mlp.errors import ConfigError

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
