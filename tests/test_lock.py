"""The locks `make` installs from: in step with pyproject.toml, hashed, for every platform.

requirements.lock holds what training needs (`make train`, `make install`); requirements-dev.lock the same pins
plus the development tools (`make test`, `make lint`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as pytest's dependency there
    import tomli as tomllib

LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
LOCKS = {"runtime": LOCK, "dev": DEV_LOCK}
DEV_TOOLS = {"pytest", "ruff", "playwright", "jax", "jaxlib"}  # in the dev lock only
HASH = re.compile(r"^\s+--hash=sha256:(?P<digest>[0-9a-f]{64})\s*\\?$")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")
MAC = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"}
LINUX_X86 = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
LINUX_ARM = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"}
PYTHONS = ("3.10", "3.11", "3.12")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]  # the sha256 of each file (wheel or sdist) the pin may install

    def applies(self, platform: dict[str, str], python: str) -> bool:
        env = platform | {"python_version": python, "python_full_version": f"{python}.0"}
        return self.marker is None or self.marker.evaluate(env)

    def requirement(self) -> str:
        """The pin as one requirements-file line, hashes included (`uv pip install --require-hashes` reads it)."""
        return " ".join([f"{self.name}=={self.version}", *(f"--hash=sha256:{digest}" for digest in self.hashes)])


def read_lock(path: Path = LOCK) -> list[Pin]:
    """Each `name==version ; marker` entry with the `--hash` lines that follow it."""
    pins: list[Pin] = []
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            marker = Marker(match["marker"]) if match["marker"] else None
            pins.append(Pin(canonicalize_name(match["name"]), Version(match["version"]), marker, ()))
        elif match := HASH.match(line):
            pins[-1] = Pin(pins[-1].name, pins[-1].version, pins[-1].marker, (*pins[-1].hashes, match["digest"]))
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def direct_requirements(lock: str) -> list[Requirement]:
    """The project's dependencies, and for the dev lock its dev extra's too, expanding the extras the dev extra
    names (mnist-mlp[bench])."""
    project = pyproject()["project"]
    extras, requirements = project["optional-dependencies"], []
    for text in project["dependencies"] + (extras["dev"] if lock == "dev" else []):
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
            requirements += [Requirement(inner) for extra in sorted(requirement.extras) for inner in extras[extra]]
        else:
            requirements.append(requirement)
    return requirements


def chosen(pins: list[Pin], platform: dict[str, str], python: str) -> dict[str, Version]:
    return {pin.name: pin.version for pin in pins if pin.applies(platform, python)}


@pytest.fixture(scope="module")
def pins() -> list[Pin]:
    return read_lock(LOCK)


@pytest.fixture(scope="module", params=list(LOCKS))
def lock_pins(request) -> tuple[str, list[Pin]]:
    return request.param, read_lock(LOCKS[request.param])


@pytest.mark.parametrize("lock, requirement", [(lock, r) for lock in LOCKS for r in direct_requirements(lock)], ids=str)
def test_every_pin_of_a_direct_dependency_satisfies_its_range_in_pyproject(lock, requirement):
    name = LOCKS[lock].name
    locked = [pin for pin in read_lock(LOCKS[lock]) if pin.name == canonicalize_name(requirement.name)]
    assert locked, f"{requirement.name} is not in {name}: run make lock"
    for pin in locked:
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{name} pins {pin.name}=={pin.version}, pyproject.toml asks {requirement}: run make lock"
        )


def test_the_build_backend_make_install_uses_is_locked_too(pins):
    """`make install` builds the editable project with the lock's setuptools (no build isolation, no index)."""
    for text in pyproject()["build-system"]["requires"]:
        requirement = Requirement(text)
        locked = [pin.version for pin in pins if pin.name == canonicalize_name(requirement.name)]
        assert locked and all(requirement.specifier.contains(v) for v in locked), (requirement, locked)


def test_every_pin_is_hashed(lock_pins):
    _, pins = lock_pins
    assert pins and all(pin.hashes for pin in pins), [pin.name for pin in pins if not pin.hashes]


def test_metal_is_pinned_for_apple_silicon_only(lock_pins):
    _, pins = lock_pins
    [metal] = [pin for pin in pins if pin.name == "tensorflow-metal"]
    assert metal.version == Version("1.2.0")
    assert all(metal.applies(MAC, python) for python in PYTHONS)
    assert not any(metal.applies(linux, python) for linux in (LINUX_X86, LINUX_ARM) for python in PYTHONS)


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", [LINUX_X86, LINUX_ARM, MAC], ids=["linux-x86_64", "linux-aarch64", "macos-arm64"])
def test_each_supported_platform_gets_one_version_of_each_package(platform, python, lock_pins):
    lock, pins = lock_pins
    names = [pin.name for pin in pins if pin.applies(platform, python)]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})
    assert "tensorflow" in names
    if lock == "runtime":
        assert not DEV_TOOLS & set(names), "the runtime lock holds development tools"
    else:
        assert {"pytest", "ruff", "playwright"} <= set(names)


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", [LINUX_X86, LINUX_ARM, MAC], ids=["linux-x86_64", "linux-aarch64", "macos-arm64"])
def test_the_dev_lock_holds_the_runtime_locks_pins_exactly(platform, python, pins):
    """`make test` adds tools to a `make train` venv without moving a package the runtime lock pinned."""
    runtime, dev = chosen(pins, platform, python), chosen(read_lock(DEV_LOCK), platform, python)
    assert {name: dev.get(name) for name in runtime} == runtime


@pytest.mark.parametrize("lock", LOCKS.values(), ids=list(LOCKS))
def test_the_lock_names_no_package_index(lock):
    """Installs go to the installer's configured index; a lock records none (nor any other address)."""
    text = lock.read_text()
    options = ("-i", "--index", "--extra-index", "--find-links")
    assert not [line for line in text.splitlines() if line.startswith(options)] and "://" not in text
