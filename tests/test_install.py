"""`make install` in a fresh clone whose `python3` is one TensorFlow has no wheels for, as on a stock Mac.

The Command Line Tools' python3 is 3.9 and Homebrew's is 3.13 or newer; the Makefile must still end with a working
.venv on CPython 3.10-3.12. Here the stand-ins are pyenv's 3.9 and 3.13 (or a python3.9 / python3.13 on PATH).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env

UNSUPPORTED = ("3.9", "3.13")
# How this machine reaches the package registry (certificates, proxies, installer settings): kept for the child.
NETWORK_SETTINGS = re.compile(r"SSL_CERT_\w+|PIP_\w+|UV_\w+|(?i:\w*_proxy)")


def find_python(version: str) -> Path | None:
    """An interpreter of exactly this version: pyenv's, else one on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [*sorted(root.glob(f"versions/{version}.*/bin/python{version}")), shutil.which(f"python{version}")]
    for candidate in filter(None, candidates):
        check = f"import sys; sys.exit(sys.version_info[:2] != {tuple(map(int, version.split('.')))})"
        if subprocess.run([candidate, "-c", check], capture_output=True, timeout=60).returncode == 0:
            return Path(candidate)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("version", UNSUPPORTED)
def test_make_install_from_a_fresh_clone_finds_a_python_tensorflow_supports(version, tmp_path):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine to stand in for python3")
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone, bin_dir = tmp_path / "clone", tmp_path / "bin"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    network = {name: value for name, value in os.environ.items() if NETWORK_SETTINGS.fullmatch(name)}
    env = child_env(PATH=f"{bin_dir}:/usr/bin:/bin") | network
    del env["PYTHONPATH"]  # the clone's .venv runs the clone's code

    done = subprocess.run(["make", "install"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    venv_python = clone / ".venv" / "bin" / "python"
    check = "import sys, tensorflow; print(*sys.version_info[:2])"
    imported = subprocess.run([venv_python, "-c", check], capture_output=True, text=True, env=env, timeout=600)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.split() in (["3", "10"], ["3", "11"], ["3", "12"])
    again = subprocess.run(["make", "install"], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout + again.stderr
