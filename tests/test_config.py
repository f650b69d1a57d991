"""Config loading, validation and overrides: every mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_mlp.cli import main
from mnist_mlp.config import Config, config_yaml, load_config, load_yaml
from mnist_mlp.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_default_yaml_spells_out_the_builtin_defaults():
    assert load_config(CONFIGS / "default.yaml") == Config()


def test_seed_yaml_holds_the_report_hyperparameters():
    config = load_config(CONFIGS / "seed.yaml")
    assert config.model.hidden == [100, 100]
    assert (config.model.init, config.model.init_scale) == ("normal", 0.1)
    assert config.train.batch_size == 50
    assert (config.train.learning_rate, config.train.lr_decay, config.train.lr_decay_epochs) == (0.001, 0.5, 2)
    assert config.train.l1 == 0.001 and config.train.loss_after_update


def test_optimizer_keys_default_to_the_plain_sgd_of_before():
    train = Config().train
    assert (train.optimizer, train.lr_schedule, train.augment_shift) == ("sgd", "step", 0)
    assert (train.momentum, train.beta1, train.beta2, train.epsilon) == (0.9, 0.9, 0.999, 1e-7)
    seed = load_config(CONFIGS / "seed.yaml").train
    assert (seed.optimizer, seed.lr_schedule, seed.augment_shift) == ("sgd", "step", 0)


def test_best_yaml_is_the_report_network_with_adam_shifts_and_cosine():
    config = load_config(CONFIGS / "best.yaml")
    assert config.model.hidden == [100, 100] and config.train.batch_size == 50
    assert config.data.validation_size == 0  # chosen on a validation split, then trained on all 60000
    assert config.train.optimizer != "sgd" and config.train.augment_shift > 0


def test_partial_file_takes_defaults_for_the_rest(tmp_path):
    config = load_config(write(tmp_path, "train:\n  epochs: 3\n"))
    assert config.train.epochs == 3
    assert config.train.batch_size == Config().train.batch_size


def test_set_overrides_parse_yaml_values():
    config = load_config(None, ["train.learning_rate=0.05", "model.hidden=[64, 32]", "train.patience=null", "seed=4"])
    assert config.train.learning_rate == 0.05
    assert config.model.hidden == [64, 32]
    assert config.train.patience is None and config.seed == 4


def test_integer_is_accepted_for_a_float():
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize(
    "text, number", [("1e-3", 1e-3), ("5E-2", 0.05), ("1e-5", 1e-5), (".5", 0.5), ("1.0e5", 1e5), ("+2e-1", 0.2)]
)
def test_numbers_as_people_write_them_are_floats(tmp_path, text, number):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; configs, --set and sweep files read it as the number it is."""
    assert load_config(None, [f"train.l1={text}"]).train.l1 == number
    assert load_config(write(tmp_path, f"train:\n  l1: {text}\n")).train.l1 == number
    assert type(load_yaml(text)) is float


def test_negative_numbers_in_e_notation_are_floats_too():
    assert load_yaml("[-1e-3, -.5, -2E+2]") == [-0.001, -0.5, -200.0]


def test_integers_and_strings_stay_what_they_were():
    assert load_yaml("a: 3\nb: 1_000\nc: 1e\nd: e5\ne: 1e-3x\nf: '1e-3'\ng: he") == {
        "a": 3, "b": 1000, "c": "1e", "d": "e5", "e": "1e-3x", "f": "1e-3", "g": "he"
    }  # fmt: skip


def test_a_learning_rate_in_e_notation_is_recorded_as_a_float(tmp_path):
    config = load_config(None, ["train.learning_rate=1e-3", "train.l1=5E-2"])
    text = config_yaml(config)
    assert "learning_rate: 0.001\n" in text and "l1: 0.05\n" in text
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml") == config


def test_strings_that_look_like_numbers_are_written_quoted_and_read_back_as_strings(tmp_path):
    config = load_config(None, ["data.dir='1e5'"])
    assert config.data.dir == "1e5"
    (tmp_path / "c.yaml").write_text(config_yaml(config))
    assert load_config(tmp_path / "c.yaml").data.dir == "1e5"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rate=1e-3x", "train.learning_rate must be a number, got '1e-3x'"),
        ("train.learning_rate='1e-3'", "train.learning_rate must be a number, got '1e-3'"),
        ("model.init=1e-3", "model.init must be 'normal' or 'uniform' or 'he', got 0.001"),
        ("data.dir=1e5", "data.dir must be a string or null, got 100000.0"),
        ("train.epochs=1e1", "train.epochs must be an integer, got 10.0"),
        ("train.learning_rate=-1e-3", "train.learning_rate must be a positive number, got -0.001"),
    ],
)
def test_wrong_kinds_of_value_keep_their_one_line_errors(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config(None, ["train.epochs=7", "data.validation_size=5000"])
    (tmp_path / "c.yaml").write_text(config_yaml(config))
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lr: 0.1\n", "unknown key train.lr"),
        ("seed: 99999999999999999999\n", "seed must be in [0, 2**63 - 1], got 99999999999999999999"),
        ("seed: -1\n", "seed must be in [0, 2**63 - 1], got -1"),
        ("speed: 3\n", "unknown key speed"),
        ("train:\n  epochs: three\n", "train.epochs must be an integer, got 'three'"),
        ("train:\n  epochs: 2.5\n", "train.epochs must be an integer, got 2.5"),
        ("train:\n  learning_rate: -0.1\n", "train.learning_rate must be a positive number, got -0.1"),
        ("train:\n  lr_decay: 1.5\n", "train.lr_decay must be in (0, 1], got 1.5"),
        ("model:\n  init: xavier\n", "model.init must be 'normal' or 'uniform' or 'he', got 'xavier'"),
        ("model:\n  hidden: [100, 0]\n", "model.hidden must list positive layer sizes"),
        ("model:\n  hidden: 100\n", "model.hidden must be a list of integers, got 100"),
        ("runtime:\n  device: tpu\n", "runtime.device must be 'auto' or 'cpu' or 'gpu'"),
        ("train:\n  loss_after_update: 1\n", "train.loss_after_update must be true or false, got 1"),
        ("train: 5\n", "train must be a mapping, got 5"),
        ("- 1\n- 2\n", "expected a mapping of config sections"),
        ("train:\n  epochs: [1\n", "not valid YAML"),
        ("data:\n  validation_size: 60000\n", "data.validation_size must be in [0, 60000)"),
        ("train:\n  optimizer: rmsprop\n", "train.optimizer must be 'sgd' or 'momentum' or 'nesterov' or 'adam'"),
        ("train:\n  momentum: 1.0\n", "train.momentum must be in [0, 1), got 1.0"),
        ("train:\n  beta1: -0.1\n", "train.beta1 must be in [0, 1), got -0.1"),
        ("train:\n  beta2: 1\n", "train.beta2 must be in [0, 1), got 1.0"),
        ("train:\n  epsilon: 0\n", "train.epsilon must be a positive number, got 0.0"),
        ("train:\n  lr_schedule: linear\n", "train.lr_schedule must be 'step' or 'cosine', got 'linear'"),
        ("train:\n  augment_shift: -1\n", "train.augment_shift must be in [0, 27], got -1"),
        ("train:\n  augment_shift: 1.5\n", "train.augment_shift must be an integer, got 1.5"),
    ],
)
def test_bad_configs_name_file_key_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs", "expected section.key=value"),
        ("train.nope=1", "unknown key train.nope"),
        ("train.batch_size=0", "train.batch_size must be a positive integer, got 0"),
        ("train.epochs.x=1", "train.epochs must be an integer"),
    ],
)
def test_bad_overrides_name_the_override(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value)


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path, capsys):
    path = write(tmp_path, "train:\n  epochs: 0\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "train.epochs must be a positive integer, got 0" in err
    assert not out.exists()


def test_cli_reports_a_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
