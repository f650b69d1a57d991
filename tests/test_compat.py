"""Run folders written by earlier versions keep working: tests/fixtures/run-0.1.0 is a 1-epoch run as mnist-mlp 0.1.0
wrote it (see tests/fixtures/README.md). Each command runs on a copy with today's code; when a change to the run
folder's layout breaks one of them, the test names the command and what it said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_mlp import __version__, cli
from mnist_mlp.config import VERSION_KEY
from mnist_mlp.rundir import RunDir
from tests.conftest import ALL_PLOTS
from tests.test_serve import png, post_image, request, serving

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"


@pytest.fixture
def old_run(tmp_path) -> Path:
    copy = tmp_path / "run-0.1.0"
    shutil.copytree(FIXTURE, copy)
    return copy


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_fixture_is_what_0_1_0_wrote():
    run = RunDir.open(FIXTURE)
    assert run.written_by() == "0.1.0 or earlier"  # no version recorded: the layout before this was added
    assert VERSION_KEY not in run.config_file.read_text()
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 300_000


def test_evaluate_scores_an_old_run_as_it_recorded(old_run, mnist_dir, capsys):
    status, out, err = run_cli(capsys, "evaluate", old_run, "--json", "--data-dir", mnist_dir)
    assert status == 0, err
    recorded = json.loads((FIXTURE / "metrics.json").read_text())
    result = json.loads(out)
    assert result["test_accuracy"] == recorded["test_accuracy"]
    assert result["test_loss"] == pytest.approx(recorded["test_loss"], rel=1e-6)
    print(f"\nevaluate {FIXTURE.name}: test accuracy {result['test_accuracy']:.4f}, as recorded")


def test_plot_draws_every_plot_of_an_old_run(old_run, mnist_dir, capsys):
    status, out, err = run_cli(capsys, "plot", old_run, "--data-dir", mnist_dir)
    assert status == 0, err
    assert sorted(p.name for p in (old_run / "plots").iterdir()) == sorted(ALL_PLOTS), out
    print(f"\nplot {FIXTURE.name}: {out.strip()}")


def test_predict_classifies_with_an_old_runs_saved_model(old_run, mnist_splits, tmp_path, capsys):
    _, test = mnist_splits
    files = []
    for index in range(5):
        files.append(tmp_path / f"digit-{index}.png")
        Image.fromarray(test.images[index]).save(files[-1])
    status, out, err = run_cli(capsys, "predict", old_run, *files, "--json")
    assert status == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert err == ""  # the saved_model answered, not a checkpoint
    assert all(a["error"] is None and 0 <= a["digit"] <= 9 for a in answers)
    recorded = np.load(FIXTURE / "test_predictions.npy")[: len(files)]
    agree = sum(a["digit"] == r for a, r in zip(answers, recorded, strict=True))
    print(f"\npredict {FIXTURE.name}: digits {[a['digit'] for a in answers]} ({agree}/5 as the run's own predictions)")


def test_serve_describes_and_answers_with_an_old_run(old_run, mnist_splits):
    _, test = mnist_splits
    with serving(old_run) as url:
        status, _, info = request(url, "/api/run")
        assert status == 200 and info["finished"] and info["test_accuracy"] == 0.365
        assert info["weights"].endswith("saved_model")
        status, _, answer = post_image(url, png(Image.fromarray(test.images[0])))
        assert status == 200 and 0 <= answer["digit"] <= 9
    print(f"\nserve {FIXTURE.name}: /api/run {info['summary']['layers']}, test accuracy {info['test_accuracy']}; "
          f"/api/predict digit {answer['digit']}")  # fmt: skip


def test_an_old_run_continues_with_more_epochs_and_then_records_the_version(old_run, mnist_dir, capsys):
    first_row = RunDir.open(FIXTURE).read_history()[0]
    status, _, err = run_cli(
        capsys, "train", "--resume", old_run, "--set", "train.epochs=2", "--data-dir", mnist_dir, "--quiet"
    )
    assert status == 0, err
    run = RunDir.open(old_run)
    history = run.read_history()
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0] == first_row  # the old epoch is kept as it was
    metrics = run.read_metrics()
    assert metrics["epochs"] == 2 and metrics[VERSION_KEY] == __version__
    assert run.read_config().train.epochs == 2
    assert f"{VERSION_KEY}: '{__version__}'" in run.config_file.read_text()
    assert run.written_by() == __version__
    print(f"\ntrain --resume {FIXTURE.name} --set train.epochs=2: epoch 2 trained, test accuracy "
          f"{metrics['test_accuracy']:.4f} (epoch 1: {first_row['test_accuracy']:.4f})")  # fmt: skip


def test_a_config_this_version_cannot_read_says_which_version_wrote_it(old_run, capsys):
    config = (old_run / "config.yaml").read_text().replace("train:\n", "train:\n  future_key: 1\n")
    (old_run / "config.yaml").write_text(f"{VERSION_KEY}: '9.0.0'\n" + config)
    status, _, err = run_cli(capsys, "evaluate", old_run)
    assert status == 2
    assert err.count("\n") == 1 and "unknown key train.future_key" in err
    assert f"(written by mnist-mlp 9.0.0, this is {__version__}: use that version for this run, or train anew)" in err


def test_a_runs_config_yaml_with_its_version_is_accepted_back_as_config(tmp_path):
    from mnist_mlp.config import Config, load_config
    from mnist_mlp.rundir import recorded_config_yaml

    (tmp_path / "config.yaml").write_text(recorded_config_yaml(Config(seed=3)))
    assert load_config(tmp_path / "config.yaml") == Config(seed=3)
