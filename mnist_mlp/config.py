"""Typed, validated configuration: the one place where hyperparameters and their defaults live.

A config file is YAML with the sections below; any key left out takes the default given here, and
`configs/default.yaml` spells every default out (a test keeps the two equal). `--set section.key=value`
overrides a key from the command line. Every error is one line naming the file (or `--set`) and the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mnist_mlp.errors import ConfigError


def _rule(check: Callable[[Any], bool], says: str) -> dict:
    """Field metadata: a range check and what it requires, for the error message."""
    return {"check": check, "says": says}


def _positive(kind: str = "number") -> dict:
    return _rule(lambda v: v > 0, f"must be a positive {kind}")


def _non_negative() -> dict:
    return _rule(lambda v: v >= 0, "must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    # Folder with the four MNIST IDX files (optionally .gz); null: $MNIST_MLP_DATA_DIR, else TFDS.
    dir: str | None = None
    # Images held out of the end of the training set for model selection (never the test set).
    validation_size: int = field(default=0, metadata=_rule(lambda v: 0 <= v < 60000, "must be in [0, 60000)"))
    # Use only the first N training / test images (quick runs and tests); null: all.
    train_limit: int | None = field(default=None, metadata=_positive("integer"))
    test_limit: int | None = field(default=None, metadata=_positive("integer"))
    # Check IDX file content against the canonical SHA-256 sums.
    verify: bool = True
    # Recorded by a run in its config.yaml: the TFDS version it loaded (when dir is null), and a SHA-256 of
    # the content as loaded (train and test images and labels, in order). With a digest set, other content
    # is refused, so plot, evaluate and --resume never pair a run with the wrong images.
    tfds_version: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    hidden: list[int] = field(
        default_factory=lambda: [100, 100],
        metadata=_rule(lambda v: len(v) >= 1 and all(n > 0 for n in v), "must list positive layer sizes"),
    )
    # normal(0, init_scale) is the report's choice, uniform(0, init_scale) its first try,
    # he: normal(0, sqrt(2 / fan_in)) (init_scale unused).
    init: Literal["normal", "uniform", "he"] = "he"
    init_scale: float = field(default=0.1, metadata=_positive())


@dataclass(frozen=True)
class TrainConfig:
    # An upper bound: training stops earlier at convergence when `patience` is set.
    epochs: int = field(default=10, metadata=_positive("integer"))
    batch_size: int = field(default=50, metadata=_positive("integer"))
    learning_rate: float = field(default=0.4, metadata=_positive())
    # Step decay: the rate is multiplied by lr_decay every lr_decay_epochs epochs (report: 0.5 every 2).
    lr_decay: float = field(default=0.5, metadata=_rule(lambda v: 0 < v <= 1, "must be in (0, 1]"))
    lr_decay_epochs: int = field(default=3, metadata=_positive("integer"))
    # L1 rate λ: W ← W − α(∇W + λ·sign(W)); on weights only unless l1_biases.
    l1: float = field(default=1e-5, metadata=_non_negative())
    l1_biases: bool = False
    # Report the batch loss recomputed after the update (the report's way, one more forward pass)
    # instead of the loss of the forward pass the gradients came from.
    loss_after_update: bool = False
    # Convergence: stop when the validation loss (training loss without a validation split) has not
    # improved by min_delta for `patience` epochs; null: run all epochs.
    patience: int | None = field(default=None, metadata=_positive("integer"))
    min_delta: float = field(default=0.0, metadata=_non_negative())
    # A training loss above this (or not finite) means the run diverged: stop with a message.
    divergence_loss: float = field(default=50.0, metadata=_positive())
    # Mini-batches per compiled call: one call runs this many SGD steps inside the graph.
    steps_per_call: int = field(default=200, metadata=_positive("integer"))
    # How the gradient g = ∇W + λ·sign(W) moves the weights (optimizers.py): sgd (the report's W ← W − αg),
    # momentum, nesterov (both with `momentum` μ) or adam (with beta1, beta2, epsilon), as Keras defines them.
    optimizer: Literal["sgd", "momentum", "nesterov", "adam"] = "sgd"
    momentum: float = field(default=0.9, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    beta1: float = field(default=0.9, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    beta2: float = field(default=0.999, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    epsilon: float = field(default=1e-7, metadata=_positive())
    # step: the step decay above; cosine: α·½(1 + cos(π(e − 1)/epochs)) for epoch e, from α towards 0.
    lr_schedule: Literal["step", "cosine"] = "step"
    # Shift each training image by a random whole number of pixels in −k…k in x and y (zero fill); 0: off.
    augment_shift: int = field(default=0, metadata=_rule(lambda v: 0 <= v <= 27, "must be in [0, 27]"))


@dataclass(frozen=True)
class RuntimeConfig:
    # auto: the GPU (Metal on an M1) when TensorFlow lists one, else the CPU.
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # XLA for the compiled training calls: auto turns it on for the CPU on Linux (see device._jit); never on Metal.
    jit_compile: bool | Literal["auto"] = "auto"
    # TensorFlow intra-op threads; 0: TensorFlow's default (all cores).
    threads: int = field(default=0, metadata=_non_negative())


@dataclass(frozen=True)
class Config:
    # Seeds the stateless random ops, which take a 64-bit integer.
    seed: int = field(default=0, metadata=_rule(lambda v: 0 <= v < 2**63, "must be in [0, 2**63 - 1]"))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **dotted: Any) -> Config:
        """A copy with `section.key` values changed (validated), e.g. replace(**{"train.epochs": 1})."""
        tree = self.to_dict()
        for key, value in dotted.items():
            _set_dotted(tree, key, value, where=f"override {key}")
        return from_dict(tree, where="override")


def from_dict(tree: Any, where: str) -> Config:
    """Build and validate a Config from a parsed YAML mapping; `where` names its source in errors."""
    return _build(Config, tree, where, prefix="")


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (None: all defaults) and apply `section.key=value` overrides."""
    tree = read_yaml_mapping(Path(path)) if path is not None else {}
    overrides = list(overrides)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value, where=f"--set {item}")
    where = str(path) if path is not None else "config"
    return from_dict(tree, where + (" with --set overrides" if overrides else ""))


# Numbers as people write them. PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so
# 1e-3, 5E-2, 1.0e5 and -.5 would be strings; YAML 1.2 (and Python's float()) reads them as numbers. The
# loader resolves them as floats, and the dumper quotes strings that look like them, so that what one
# writes the other reads back unchanged. 1.5, .5 and 1.0e-5 were floats already; integers stay integers.
YAML_12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9]+(?:[eE][-+]?[0-9]+)?)$")


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats."""


class YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the strings YamlLoader would read as floats."""


for _cls in (YamlLoader, YamlDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", YAML_12_FLOAT, list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text, numbers as people write them (1e-3 is a float): configs, --set and sweep files."""
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader: plain data only


def dump_yaml(tree: Any) -> str:
    return yaml.dump(tree, Dumper=YamlDumper, sort_keys=False)


def config_yaml(config: Config) -> str:
    """The resolved config as YAML, complete, so that it can be passed back as --config."""
    return dump_yaml(config.to_dict())


def read_yaml_mapping(path: Path, kind: str = "config file", holds: str = "config sections") -> dict:
    """A YAML file that must hold a mapping (empty: {}); every problem is one ConfigError line."""
    if not path.is_file():
        raise ConfigError(f"{path}: {kind} not found")
    try:
        tree = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of {holds}, got {type(tree).__name__}")
    return tree


def parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` to (key, value), the value parsed as YAML (so 3, 0.1, 1e-3, [64, 32], null work)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item}: expected section.key=value, e.g. train.epochs=3")
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {item}: the value is not valid YAML") from None
    return key.strip(), value


def _set_dotted(tree: dict, key: str, value: Any, where: str) -> None:
    *sections, leaf = key.split(".")
    node = tree
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {section} is not a section")
        node = child
    node[leaf] = value


def _build(cls: type, tree: Any, where: str, prefix: str) -> Any:
    """Instantiate dataclass `cls` from `tree`, checking keys, types and ranges."""
    name = prefix.rstrip(".") or "the config"
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: {name} must be a mapping, got {_show(tree)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        known = ", ".join(prefix + k for k in fields)
        raise ConfigError(f"{where}: unknown key {prefix}{unknown[0]} (known: {known})")
    values = {}
    for key, value in tree.items():
        hint, dotted = hints[key], prefix + key
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, where, prefix=dotted + ".")
            continue
        value = _coerce(hint, value)
        if not _matches(hint, value):
            raise ConfigError(f"{where}: {dotted} must be {_describe(hint)}, got {_show(value)}")
        rule = fields[key].metadata
        if rule and value is not None and not rule["check"](value):
            raise ConfigError(f"{where}: {dotted} {rule['says']}, got {_show(value)}")
        values[key] = value
    return cls(**values)


def _coerce(hint: Any, value: Any) -> Any:
    """Accept an int where a float is expected (YAML writes 1 for 1.0); nothing else is converted."""
    if float in _options(hint) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _options(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(hint: Any, value: Any) -> bool:
    for option in _options(hint):
        origin = typing.get_origin(option)
        if option is type(None) and value is None:
            return True
        if origin is Literal and any(value == v and type(value) is type(v) for v in typing.get_args(option)):
            return True
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            if all(_matches(item, v) for v in value):
                return True
        if option in (int, float, str, bool) and type(value) is option:
            return True
    return False


def _describe(hint: Any) -> str:
    words = []
    for option in _options(hint):
        origin = typing.get_origin(option)
        if option is type(None):
            words.append("null")
        elif origin is Literal:
            words.append(" or ".join(repr(v) if isinstance(v, str) else str(v).lower() for v in option.__args__))
        elif origin is list:
            words.append("a list of " + {int: "integers", float: "numbers", str: "strings"}[option.__args__[0]])
        else:
            words.append({int: "an integer", float: "a number", str: "a string", bool: "true or false"}[option])
    return " or ".join(words)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str | list | dict) else str(value)
