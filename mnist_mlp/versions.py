"""Versions of the project and of the TensorFlow it runs on, read from package metadata without importing TensorFlow.

Also the one version clash that breaks a Mac install: tensorflow-metal 1.2.0 (the plugin's last release) loads only
with TensorFlow 2.18.1 up to 2.19.x; with 2.20 on, `import tensorflow` itself fails with a traceback from inside the
plugin. Checking the installed versions first turns that into one line that says what to do.
"""

from __future__ import annotations

import platform
import re
from importlib import metadata

METAL_PLUGIN = "tensorflow-metal"
# Plugin version -> the TensorFlow releases it loads with: [lowest, first one that breaks).
METAL_LOADS_WITH = {"1.2.0": ((2, 18, 1), (2, 20))}
REINSTALL = "make clean && make install"


def installed(package: str) -> str | None:
    """The installed version of a package, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "2.20.0rc1" -> (2, 20, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def runtime_versions() -> str:
    """Python's, TensorFlow's and the Metal plugin's versions in one line: `Python 3.12.1, TensorFlow 2.19.1`."""
    parts = [f"Python {platform.python_version()}", f"TensorFlow {installed('tensorflow') or 'not installed'}"]
    if plugin := installed(METAL_PLUGIN):
        parts.append(f"{METAL_PLUGIN} {plugin}")
    return ", ".join(parts)


def metal_clash(system: str, machine: str, tensorflow: str | None, plugin: str | None) -> str | None:
    """Why this TensorFlow cannot load beside this Metal plugin (one line), or None when they go together."""
    if (system, machine) != ("Darwin", "arm64") or not tensorflow or not plugin or plugin not in METAL_LOADS_WITH:
        return None
    lowest, breaking = METAL_LOADS_WITH[plugin]
    if lowest <= release(tensorflow) < breaking:
        return None
    allowed = f"{'.'.join(map(str, lowest))}–{'.'.join(map(str, (breaking[0], breaking[1] - 1)))}.x"
    return (
        f"tensorflow {tensorflow} is installed but {METAL_PLUGIN} {plugin} loads only with TensorFlow {allowed}: "
        f"run {REINSTALL}"
    )


def installed_metal_clash() -> str | None:
    """metal_clash() for this machine and its installed packages."""
    return metal_clash(platform.system(), platform.machine(), installed("tensorflow"), installed(METAL_PLUGIN))
