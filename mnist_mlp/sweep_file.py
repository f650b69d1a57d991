"""The sweep file: what `mnist-mlp sweep` reads, parsed and checked into a base config and what to search.

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
    sampler: tpe               # optional: the random section's space searched by TPE instead of drawn up front
    pruner: median             # optional: none (default), median or hyperband, e.g. {median: {n_warmup_steps: 3}}

With both grid and random, every draw is tried at every grid point. The draws are Optuna's RandomSampler's
with the file's seed, made up front: the same file gives the same trials however many processes or machines
run them. With `sampler: tpe`, `trials` is the number of trials and each one's values come from TPE, which
learns from the trials before it. Precedence: base file < `set` < `--set` < the searched values. Every error
is one line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_mlp.config import Config, from_dict, load_config, parse_override, read_yaml_mapping
from mnist_mlp.errors import ConfigError

DEFAULT_VALIDATION_SIZE = 10000  # held out of the end of the training set when the sweep names none
SWEEP_SECTIONS = ("base", "set", "grid", "random", "sampler", "pruner")
RANDOM_KEYS = ("trials", "seed", "params")
# No line per trial or study, and none for a failed trial: the sweep prints its own (study.py imports this).
optuna.logging.set_verbosity(optuna.logging.ERROR)

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
# The settings each sampler and pruner takes from the file (Optuna's names; the rest are Optuna's defaults).
SAMPLER_SETTINGS = {"grid": (), "random": (), "tpe": ("n_startup_trials", "multivariate")}
PRUNER_SETTINGS = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}


@dataclass(frozen=True)
class Trial:
    """One setting of the swept keys and the complete config it trains."""

    id: str
    values: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Named:
    """A sampler or pruner by name, with the settings the file gives it."""

    name: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the base config every trial starts from and what to search.

    grid and random sweeps have every trial listed in `trials` (file order); a TPE sweep has its `space`
    (the random section's params) and runs `budget` trials chosen as it goes."""

    path: Path
    base: Config
    keys: list[str]
    trials: list[Trial]
    notes: list[str]
    grid: dict[str, list] = field(default_factory=dict)  # the grid's values, repeats dropped
    draws: list[dict] = field(default_factory=list)  # the random section's draws, repeats dropped
    space: dict[str, dict] = field(default_factory=dict)  # the random section's params, as written
    sampler: Named = Named("grid")
    pruner: Named = Named("none")
    seed: int = 0
    tpe_trials: int = 0  # the trials a TPE search runs

    @property
    def budget(self) -> int:
        """How many trials the search runs."""
        return self.tpe_trials if self.sampler.name == "tpe" else len(self.trials)

    def config_for(self, values: dict[str, Any]) -> Config:
        """The complete config of one setting of the searched keys (ConfigError when invalid)."""
        return _checked(_apply(self.base, values, str(self.path)), str(self.path))

    def decode(self, key: str, value: Any) -> Any:
        """A searched key's value as the config takes it, from the value Optuna holds (see encode)."""
        if key in self.grid:
            return _decoded(self.grid[key], value)
        kind, args = next(iter(self.space[key].items()))
        return _decoded(args, value) if kind == "choice" else value


def encode(values: list) -> list:
    """Optuna's categorical choices hold None, bool, int, float and str: other values (lists such as
    model.hidden) stand in as their JSON text, decoded by position."""
    return [v if v is None or isinstance(v, bool | int | float | str) else json.dumps(v) for v in values]


def _decoded(values: list, value: Any) -> Any:
    return values[encode(values).index(value)]


def distribution(spec: dict) -> BaseDistribution:
    """Optuna's distribution for {uniform|log_uniform|int_uniform: [low, high]} or {choice: [values]}."""
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return CategoricalDistribution(encode(args))
    if kind == "int_uniform":
        return IntDistribution(args[0], args[1])
    return FloatDistribution(float(args[0]), float(args[1]), log=kind == "log_uniform")


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Parse and check a sweep file and build every trial's config; errors are one line naming the file."""
    path = Path(path)
    where = str(path)
    tree = _read_sweep_file(path)
    fixed = _mapping(tree.get("set"), f"{where}: set")
    cli = dict(parse_override(item) for item in overrides)
    grid = _grid(tree.get("grid"), where)
    trials_wanted, seed, space = _random_section(tree.get("random"), where)
    if not grid and not space:
        raise ConfigError(f"{where}: nothing to sweep: give a grid and/or random section")
    keys = [*grid, *space]
    for key in [*fixed, *keys]:
        _check_key(key, where)
    for key in cli:
        _check_key(key, "--set")
    _check_clashes(where, keys, grid, list(space), fixed, cli)
    sampler = _named(tree.get("sampler"), SAMPLER_SETTINGS, "random" if space else "grid", f"{where}: sampler")
    _check_sampler(sampler, grid, space, where)
    pruner = _named(tree.get("pruner"), PRUNER_SETTINGS, "none", f"{where}: pruner")

    base = _apply(_base_config(tree.get("base"), path), fixed, where)
    base = _apply(base, cli, "--set")
    notes = []
    if "data.validation_size" not in {*fixed, *cli, *keys} and base.data.validation_size == 0:
        base = base.replace(**{"data.validation_size": DEFAULT_VALIDATION_SIZE})
        notes.append(
            f"validation split: the last {DEFAULT_VALIDATION_SIZE} training images "
            "(the sweep does not set data.validation_size)"
        )
    unique_grid = {key: _unique(values) for key, values in grid.items()}
    draws: list[dict] = []
    if sampler.name == "tpe":
        for key, spec in space.items():  # every bound and choice is a valid value on its own
            for value in _ends(spec):
                _checked(_apply(base, {key: value}, where), where)
        trials = []
    else:
        draws = _unique(_random_draws(space, trials_wanted, seed)) if space else []
        trials = _build_trials(base, unique_grid, draws or [{}], where)
        written = math.prod(len(values) for values in grid.values()) * (trials_wanted if space else 1)
        if written > len(trials):
            notes.append(f"{written - len(trials)} repeated setting(s) dropped (same config as an earlier trial)")
    return Sweep(path, base, keys, trials, notes, unique_grid, draws, space, sampler, pruner, seed, trials_wanted)


def trial_id(config: Config) -> str:
    """A short hash of the complete config, leaving out what is the machine's, not the trial's (see comparable)."""
    return hashlib.sha256(json.dumps(comparable(config), sort_keys=True).encode()).hexdigest()[:10]


def comparable(config: Config) -> dict:
    """The config as a dict without what belongs to the machine a trial runs on: the data folder, and the thread
    count (which --workers sets; under XLA it moves results by float rounding, docs/experiments.md)."""
    tree = config.to_dict()
    tree["data"]["dir"] = None
    tree["runtime"]["threads"] = 0
    return tree


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


def _named(value: Any, known: dict[str, tuple], default: str, where: str) -> Named:
    """`name` or {name: {setting: value}}, the name one of `known`, each setting one that name takes."""
    if value is None:
        return Named(default)
    settings: Any = {}
    if isinstance(value, dict) and len(value) == 1:
        value, settings = next(iter(value.items()))
        settings = _mapping(settings, f"{where} {value}")
    if not isinstance(value, str) or value not in known:
        raise ConfigError(f"{where} must be one of {', '.join(known)} (or {{name: {{settings}}}}), got {value!r}")
    for key, setting in settings.items():
        if key not in known[value]:
            allowed = ", ".join(known[value]) or "none"
            raise ConfigError(f"{where} {value}: unknown setting {key} (settings: {allowed})")
        if not isinstance(setting, int) or (isinstance(setting, bool) and key != "multivariate"):
            raise ConfigError(f"{where} {value}: {key} must be an integer, got {setting!r}")
    return Named(value, dict(settings))


def _check_sampler(sampler: Named, grid: dict, space: dict, where: str) -> None:
    if sampler.name == "tpe" and grid:
        raise ConfigError(f"{where}: sampler tpe searches the random section alone; move the grid keys there as choice")
    if sampler.name == "tpe" and not space:
        raise ConfigError(f"{where}: sampler tpe needs a random section (trials, seed and the params to search)")
    if sampler.name == "grid" and space:
        raise ConfigError(f"{where}: sampler grid with a random section; say sampler: random (or tpe)")
    if sampler.name == "random" and not space:
        raise ConfigError(f"{where}: sampler random needs a random section")


def _grid(value: Any, where: str) -> dict[str, list]:
    grid = _mapping(value, f"{where}: grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid {key} must be a non-empty list of values, got {values!r}")
    return grid


def _random_section(value: Any, where: str) -> tuple[int, int, dict[str, dict]]:
    """The random section's trials, seed and params (checked); (0, 0, {}) when there is none."""
    if value is None:
        return 0, 0, {}
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
    for key, dist in params.items():
        _check_distribution(dist, f"{where}: random {key}")
    return trials, seed, params


def _check_distribution(dist: Any, where: str) -> None:
    """{uniform|log_uniform|int_uniform: [low, high]} or {choice: [values]}."""
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ConfigError(
            f"{where}: expected one of {{uniform|log_uniform|int_uniform: [low, high]}} or {{choice: [...]}}"
        )
    kind, args = next(iter(dist.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind} (uniform, log_uniform, int_uniform, choice)")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values")
        return
    number = _is_int if kind == "int_uniform" else _is_number
    if not (isinstance(args, list) and len(args) == 2 and all(number(a) for a in args) and args[0] <= args[1]):
        kind_of = "integers" if kind == "int_uniform" else "numbers"
        raise ConfigError(f"{where}: {kind} needs [low, high], two {kind_of} with low <= high, got {args!r}")
    if kind == "log_uniform" and args[0] <= 0:
        raise ConfigError(f"{where}: log_uniform needs low > 0, got {args[0]!r}")


def _ends(spec: dict) -> list:
    """The values at the edges of a distribution: its bounds, or every choice."""
    return next(iter(spec.values()))


def _random_draws(space: dict[str, dict], trials: int, seed: int) -> list[dict]:
    """`trials` draws from Optuna's RandomSampler with `seed`, each a value per key, made in this process."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    dists = {key: distribution(spec) for key, spec in space.items()}
    draws = []
    for _ in range(trials):
        params = study.ask(dists).params
        draws.append({key: _decoded(spec["choice"], params[key]) if "choice" in spec else params[key]
                      for key, spec in space.items()})  # fmt: skip
    return draws


def _unique(values: list) -> list:
    """The values in order, each once (compared as JSON, so lists and dicts work)."""
    seen, kept = set(), []
    for value in values:
        text = json.dumps(value, sort_keys=True)
        if text not in seen:
            seen.add(text)
            kept.append(value)
    return kept


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


def _checked(config: Config, where: str) -> Config:
    if config.data.validation_size == 0:
        raise ConfigError(
            f"{where}: data.validation_size is 0: a sweep chooses on a validation split held out of "
            "the training set, never on the test set; set it above 0 (e.g. 10000)"
        )
    return config


def _build_trials(base: Config, grid: dict, draws: list[dict], where: str) -> list[Trial]:
    """Every grid point with every random draw, in file order (the values and draws are each unique)."""
    trials = []
    for point in itertools.product(*grid.values()):
        for draw in draws:
            values = {**dict(zip(grid, point, strict=True)), **draw}
            config = _checked(_apply(base, values, where), where)
            trials.append(Trial(trial_id(config), values, config))
    return trials
