"""The Mac install, checked without a Mac: the lock installs on macOS arm64 for CPython 3.10-3.12 with its hashes,
and tensorflow-metal's plugin finds every TensorFlow symbol it needs in the locked TensorFlow. The same check on
TensorFlow 2.20.0, which the plugin is known not to load with, must find what is missing, so it is shown able to fail.

It reads the macOS wheels' libraries (tests/macho.py); it cannot run them, so it proves the plugin will link, not
that it computes right (the GPU check does that, on the Mac). Packages come through the project's uv into a uv cache
of the tests' own, outside the repo: ${XDG_CACHE_HOME:-~/.cache}/mnist_mlp-test-wheels (about 6 GB once filled;
delete it at will). uv's cache is append-only: a download is unpacked into a temporary folder and moved into place
only when complete, with its hash checked, so an interrupted run leaves nothing half-written to be reused. The first
run downloads about 1.6 GB.

LLVM's llvm-nm and llvm-objdump read the libraries (Debian: apt-get install llvm; .ci/run installs it). Outside CI
the tests skip, saying why, when LLVM or the network is missing; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CHILD_ENV_KEPT, REPO
from tests.macho import Llvm, Site
from tests.test_install import NETWORK_SETTINGS
from tests.test_lock import LOCK, PYTHONS, read_lock

pytestmark = pytest.mark.slow  # about a minute with the downloads, half a minute once they are cached

PLATFORM = "aarch64-apple-darwin"  # uv's name for macOS on Apple silicon
CACHE_NAME = "mnist_mlp-test-wheels"
# The locks to install: requirements.lock (the runtime) and, where there is one, requirements-dev.lock.
LOCKS = [lock for lock in (LOCK, REPO / "requirements-dev.lock") if lock.is_file()]
PLUGIN = Path("tensorflow-plugins/libmetal_plugin.dylib")
TENSORFLOW = ("tensorflow",)  # the packages whose libraries the plugin may use (all else comes from macOS)
SYSTEM_LOOKUPS = ("_objc_",)  # the Objective-C runtime (libobjc): every macOS process has it; all else is TF's
# TensorFlow 2.20.0's macOS arm64 CPython 3.12 wheel, by the sha256 the registry lists for it. tensorflow-metal 1.2.0
# does not load with it (pyproject.toml's TensorFlow range stops below 2.20 for that reason).
BROKEN_TENSORFLOW = "tensorflow==2.20.0 --hash=sha256:52b122f0232fd7ab10f28d537ce08470d0b6dcac7fff9685432daac7f8a06c8f"
# How uv says it could not reach the registry (anything else that fails is a real failure).
OFFLINE = ("error sending request", "dns error", "tcp connect error", "Network is unreachable", "timed out")


def unavailable(problem: str) -> None:
    """Skips, saying why; under CI=true fails, since CI must run these tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}: CI must run the Mac install checks")
    pytest.skip(problem)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / CACHE_NAME


def scratch_dir() -> Path:
    """A new folder beside the uv cache, on its file system, so that uv hard-links files instead of copying 1.5 GB
    per install. Folders a killed run left behind are removed after a day."""
    root = cache_dir() / "sites"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def uv_install(target: Path, python: str, *requirements: str | Path, no_deps: bool = False) -> None:
    """`uv pip install` of hashed requirements (lines, or files with -r) as they install on a Mac with Apple silicon
    and this CPython version, into the folder `target`, which then looks like that Mac's site-packages."""
    files = []
    for i, requirement in enumerate(requirements):
        if isinstance(requirement, str):
            file = target.parent / f"requirements-{i}.txt"
            file.write_text(requirement + "\n")
            requirement = file
        files += ["-r", str(requirement)]
    command = [str(REPO / "scripts" / "uv"), "pip", "install", "--quiet", "--cache-dir", str(cache_dir() / "uv")]
    command += ["--python", sys.executable, "--python-platform", PLATFORM, "--python-version", python]
    command += ["--require-hashes", *(["--no-deps"] if no_deps else []), "--target", str(target), *files]
    kept = {name: os.environ[name] for name in CHILD_ENV_KEPT if name in os.environ}
    network = {name: value for name, value in os.environ.items() if NETWORK_SETTINGS.fullmatch(name)}
    done = subprocess.run(command, capture_output=True, text=True, env=kept | network, timeout=1800)
    if done.returncode:
        output = (done.stdout + done.stderr).strip()
        if offline := [line.strip() for line in output.splitlines() if any(sign in line for sign in OFFLINE)]:
            unavailable(f"the package registry cannot be reached ({offline[0]})")
        pytest.fail(f"uv pip install for macOS arm64, CPython {python}:\n{output[-4000:]}")


@pytest.fixture(scope="module")
def llvm() -> Llvm:
    tools = {name: shutil.which(name) for name in ("llvm-nm", "llvm-objdump")}
    if missing := [name for name, path in tools.items() if path is None]:
        unavailable(f"no {' or '.join(missing)} (Debian: apt-get install llvm)")
    return Llvm(tools["llvm-nm"], tools["llvm-objdump"])


@pytest.fixture(scope="module")
def mac_site() -> Iterator[Callable[[Path, str], Path]]:
    """mac_site(lock, python): the folder the lock installs into on macOS arm64 with that CPython, installed once."""
    sites: dict[tuple[Path, str], Path] = {}
    folders: list[Path] = []

    def install(lock: Path, python: str) -> Path:
        if (lock, python) not in sites:
            folders.append(scratch_dir())
            uv_install(folders[-1] / "site", python, lock)
            sites[lock, python] = folders[-1] / "site"
        return sites[lock, python]

    yield install
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def installed_version(site: Path, name: str) -> str | None:
    found = [dist.version for dist in importlib.metadata.distributions(path=[str(site)]) if dist.name == name]
    return found[0] if found else None


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: lock.name)
def test_the_lock_installs_on_a_mac_with_apple_silicon(lock, python, mac_site):
    """Every pin has a wheel for macOS arm64 and this CPython, or an sdist that builds, and every file's hash is the
    lock's: what `make install` does on a Mac, here into a folder instead of a venv."""
    site = mac_site(lock, python)
    pins = {pin.name: str(pin.version) for pin in read_lock() if pin.name in ("tensorflow", "tensorflow-metal")}
    if lock == LOCK:
        assert {name: installed_version(site, name) for name in pins} == pins


def test_the_metal_plugin_finds_every_tensorflow_symbol_it_needs_in_the_locked_tensorflow(llvm, mac_site):
    site = mac_site(LOCK, "3.12")
    check = Site(site, llvm, TENSORFLOW).check_plugin(site / PLUGIN, SYSTEM_LOOKUPS)
    print(f"bound: { {library: len(symbols) for library, symbols in check.bound.items()} }")
    print(f"looked up: {len(check.looked_up)}")
    assert check.problems() == []
    assert sum(map(len, check.bound.values())) > 0 and check.looked_up, "the plugin needs nothing from TensorFlow?"


def test_the_symbol_check_finds_what_tensorflow_2_20_lacks(llvm):
    """tensorflow-metal 1.2.0 with TensorFlow 2.20.0 is the public, known-broken pair: the check must say so."""
    [metal] = [pin for pin in read_lock() if pin.name == "tensorflow-metal"]
    target = scratch_dir() / "site"
    try:
        uv_install(target, "3.12", BROKEN_TENSORFLOW, metal.requirement(), no_deps=True)
        check = Site(target, llvm, TENSORFLOW).check_plugin(target / PLUGIN, SYSTEM_LOOKUPS)
    finally:
        shutil.rmtree(target.parent, ignore_errors=True)
    print("\n".join(check.problems()))
    bound = [symbol for symbols in check.bound.values() for symbol in symbols]
    assert bound and sorted(check.missing_bound) == sorted(bound)  # all of them: the library moved
    assert check.unmatched == ["@rpath/_pywrap_tensorflow_internal.so"]
    assert {"_TF_AssignVariable", "_TF_AssignUpdateVariable"} <= set(check.missing_looked_up)
    assert len(check.missing_looked_up) < len(check.looked_up)  # most are still there: the check is not blind
