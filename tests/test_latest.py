"""runs/latest: the newest finished run in runs/, never one being written; `latest` for DIR in plot, evaluate, predict
and serve (and serve's default); a text file where there are no symlinks; parallel runs watched as they finish."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mnist_mlp import cli
from mnist_mlp.data import DATA_DIR_ENV
from mnist_mlp.errors import UserError
from mnist_mlp.folder_lock import lock_folder
from mnist_mlp.latest import LATEST, finished_at, newest_finished, resolve_run_dir, update_latest
from tests.conftest import child_env
from tests.test_write_errors import SMALL


def fake_run(runs: Path, name: str, epochs: int = 1, status: str | None = "finished", rows: int | None = None) -> Path:
    """A run folder with `rows` history rows and, when `status`, metrics.json saying `epochs` and `status`."""
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 0\n")
    rows = epochs if rows is None else rows
    (folder / "history.csv").write_text("epoch\n" + "".join(f"{e}\n" for e in range(1, rows + 1)))
    if status:
        (folder / "metrics.json").write_text(json.dumps({"status": status, "epochs": epochs}))
    return folder


def finished_now(folder: Path, when: float) -> None:
    os.utime(folder / "metrics.json", (when, when))


def test_latest_is_the_run_that_finished_last_and_never_one_unfinished_or_in_use(tmp_path):
    runs = tmp_path / "runs"
    assert update_latest(runs) is None and not runs.exists()  # no runs/: nothing made
    old, new = fake_run(runs, "b-old"), fake_run(runs, "a-new")
    finished_now(old, 1000)
    finished_now(new, 2000)  # the names sort the other way
    fake_run(runs, "z-training", status=None)
    fake_run(runs, "z-diverged", status="diverged")
    finished_now(fake_run(runs, "z-continued", epochs=1, rows=3), 3000)  # resumed with more epochs, then stopped
    finished_now(fake_run(runs, ".z-hidden"), 4000)
    assert update_latest(runs) == new
    assert (runs / LATEST).is_symlink() and os.readlink(runs / LATEST) == "a-new"
    assert resolve_run_dir(runs / LATEST) == new
    with lock_folder(new, "mnist-mlp train"):  # resumed or replaced: latest moves to the newest run not in use
        assert update_latest(runs) == old
    with lock_folder(new, "mnist-mlp train"), lock_folder(old, "mnist-mlp train"):
        assert update_latest(runs) is None and not os.path.lexists(runs / LATEST)
    assert update_latest(runs, of=tmp_path / "elsewhere" / "run") is None  # a run outside runs/: not its business
    assert not os.path.lexists(runs / LATEST)
    assert update_latest(runs, of=runs / "a-new") == new
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".latest")) == []  # no temporary link left


def test_without_symlinks_latest_is_a_text_file_naming_the_run(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run = fake_run(runs, "r1")

    def no_symlinks(*_args, **_kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    assert update_latest(runs) == run
    assert not (runs / LATEST).is_symlink() and (runs / LATEST).read_text() == "r1\n"
    assert resolve_run_dir(runs / LATEST) == run
    monkeypatch.chdir(tmp_path)
    assert resolve_run_dir(Path("latest")) == Path("runs/r1")


def test_latest_resolves_against_runs_and_says_in_one_line_when_there_is_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^runs/latest: no finished run yet .*; train one with: mnist-mlp train$"):
        resolve_run_dir(Path("latest"))
    assert resolve_run_dir(Path("runs/r1")) == Path("runs/r1")  # any other name: as given
    run = fake_run(Path("runs"), "r1")
    update_latest()
    assert resolve_run_dir(Path("latest")) == Path("runs/r1")
    (run / "metrics.json").rename(run / "x")
    os.rename(run, Path("runs/gone"))
    with pytest.raises(UserError, match="^runs/latest names runs/r1, which no longer exists$"):
        resolve_run_dir(Path("latest"))
    fake_run(tmp_path, "latest")  # a run folder of that name in the working folder is taken as it is
    assert resolve_run_dir(Path("latest")) == Path("latest")


def test_plot_evaluate_predict_and_serve_take_latest(tmp_path, monkeypatch, mnist_dir, mnist_splits, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    assert cli.main(["train", *SMALL, "--set", "train.epochs=1"]) == 0
    (name,) = [p.name for p in (tmp_path / "runs").iterdir() if p.name != LATEST]
    assert os.readlink(tmp_path / "runs" / LATEST) == name
    capsys.readouterr()
    assert cli.main(["evaluate", "latest"]) == 0
    assert cli.main(["plot", "latest"]) == 0
    assert f"plots in runs/{name}/plots:" in capsys.readouterr().out
    Image.fromarray(mnist_splits[1].images[0]).save(tmp_path / "d.png")
    assert cli.main(["predict", "latest", str(tmp_path / "d.png")]) == 0
    assert cli.build_parser().parse_args(["serve", "--port", "0"]).dir == Path("latest")  # serve's default


@pytest.mark.slow
def test_serve_without_dir_serves_the_latest_run_and_prints_its_url(tmp_path, mnist_dir):
    env = child_env(**{DATA_DIR_ENV: str(mnist_dir)})
    train = [sys.executable, "-m", "mnist_mlp", "train", *SMALL, "--set", "train.epochs=1"]
    assert subprocess.run(train, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    name = os.readlink(tmp_path / "runs" / LATEST)
    command = [sys.executable, "-m", "mnist_mlp", "serve", "--port", "0", "--host", "0.0.0.0"]
    serve = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        warning = serve.stderr.readline()
    finally:  # stopped outright: Ctrl-C is test_serve's, and a background job's children ignore SIGINT
        serve.kill()
        serve.wait(timeout=60)
    assert line.startswith(f"serving runs/{name} (") and " at http://0.0.0.0:" in line, line
    assert warning == ("warning: listening on 0.0.0.0: the page and its API are reachable from the network, "
                       "with no authentication\n")  # fmt: skip
    print(f"\nserve with no DIR: {line.strip()}\n{warning.strip()}")


def test_serve_on_loopback_gives_no_warning(random_run):
    from mnist_mlp.rundir import RunDir
    from mnist_mlp.serve import make_server

    for host, loopback in [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False)]:
        try:
            server = make_server(RunDir.open(random_run), host, 0)
        except UserError:  # no IPv6 here
            continue
        with server:
            assert server.loopback_only is loopback, host


def latest_target(runs: Path) -> Path | None:
    try:
        return runs / os.readlink(runs / LATEST)
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_parallel_runs_never_leave_latest_on_an_unfinished_run(tmp_path, mnist_dir):
    """Four runs started at once in runs/ (1 to 4 epochs), watched every few milliseconds; then the latest one
    resumed for more epochs, during which latest names another run."""
    env = child_env(**{DATA_DIR_ENV: str(mnist_dir)})
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "mnist_mlp", "train", *SMALL]
    children = [
        subprocess.Popen([*command, "--set", f"train.epochs={n}", "--set", f"seed={n}"], cwd=tmp_path, env=env,
                         stderr=subprocess.PIPE, text=True)
        for n in (1, 2, 3, 4)
    ]  # fmt: skip
    looks, named, wrong = 0, set(), []

    def look() -> None:
        nonlocal looks
        target = latest_target(runs)
        if target is not None:
            looks += 1
            named.add(target.name)
            if finished_at(target) is None:
                wrong.append(target.name)

    while any(child.poll() is None for child in children):
        look()
        time.sleep(0.005)
    for child in children:
        assert child.wait() == 0, child.stderr.read()
    look()
    finished = sorted((finished_at(p), p.name) for p in runs.iterdir() if p.name != LATEST)
    assert len(finished) == 4 and latest_target(runs).name == finished[-1][1]
    assert newest_finished(runs).name == finished[-1][1]

    resumed = subprocess.Popen([*command[:4], "--resume", f"runs/{finished[-1][1]}", "--set", "train.epochs=6",
                                "--quiet"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while resumed.poll() is None:  # its history grows past its metrics.json: latest must name another run
        look()
        time.sleep(0.005)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert latest_target(runs).name == finished[-1][1]  # finished again, the newest again
    print(f"\nparallel runs: {looks} looks at runs/latest while 4 runs trained and one was resumed; it named "
          f"{len(named)} runs, unfinished ones {len(wrong)} times")  # fmt: skip
    assert wrong == []
