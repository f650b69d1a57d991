"""Versions read without TensorFlow: `mnist-mlp --version`, and the Metal plugin's clash caught before the import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mnist_mlp import __version__
from mnist_mlp.versions import installed, metal_clash, release
from tests.conftest import child_env

MAC = ("Darwin", "arm64")


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", textwrap.dedent(script)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env())


@pytest.mark.parametrize(
    ("version", "numbers"), [("2.19.1", (2, 19, 1)), ("2.20.0rc1", (2, 20, 0)), ("2.18", (2, 18)), ("dev", ())]
)
def test_release_is_the_numeric_part(version, numbers):
    assert release(version) == numbers


@pytest.mark.parametrize("tensorflow", ["2.18.1", "2.19.0", "2.19.1"])
def test_the_tensorflow_releases_metal_1_2_0_loads_with_pass(tensorflow):
    assert metal_clash(*MAC, tensorflow, "1.2.0") is None


@pytest.mark.parametrize("tensorflow", ["2.18.0", "2.20.0", "2.21.0rc0", "3.0.0"])
def test_a_tensorflow_outside_metal_1_2_0s_range_is_one_line_saying_how_to_fix_it(tensorflow):
    assert metal_clash(*MAC, tensorflow, "1.2.0") == (
        f"tensorflow {tensorflow} is installed but tensorflow-metal 1.2.0 loads only with TensorFlow 2.18.1–2.19.x: "
        "run make clean && make install"
    )


@pytest.mark.parametrize(
    ("system", "machine", "tensorflow", "plugin"),
    [
        ("Linux", "x86_64", "2.20.0", "1.2.0"),  # the plugin only loads on a Mac
        ("Darwin", "x86_64", "2.20.0", "1.2.0"),  # an Intel Mac (or Rosetta) never loads it either
        ("Darwin", "arm64", "2.20.0", None),  # no plugin: TensorFlow runs on the CPU
        ("Darwin", "arm64", None, "1.2.0"),  # no TensorFlow: the import itself will say so
        ("Darwin", "arm64", "2.20.0", "9.9.9"),  # a plugin whose range is not known here: no guess
    ],
)
def test_no_clash_is_claimed_without_the_plugin_on_a_mac(system, machine, tensorflow, plugin):
    assert metal_clash(system, machine, tensorflow, plugin) is None


def test_the_cli_reports_the_clash_before_importing_tensorflow():
    """A Mac with TF 2.20 beside the plugin, faked in a child: one error line, exit 2, TensorFlow never imported."""
    done = run_python("""
        import platform, sys
        from mnist_mlp import versions
        platform.system, platform.machine = (lambda: "Darwin"), (lambda: "arm64")
        versions.installed = {"tensorflow": "2.20.0", "tensorflow-metal": "1.2.0"}.get
        from mnist_mlp.cli import main
        code = main(["evaluate", "no-such-run"])
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        sys.exit(code)
    """)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: tensorflow 2.20.0 is installed but tensorflow-metal 1.2.0 loads only with TensorFlow 2.18.1–2.19.x: "
        "run make clean && make install\n"
    )


def test_version_names_the_project_python_and_tensorflow_without_importing_it():
    done = run_python("""
        import sys
        from mnist_mlp.cli import main
        try:
            main(["--version"])
        finally:
            assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    """)
    assert done.returncode == 0, done.stderr
    expected = f"Python {'.'.join(map(str, sys.version_info[:3]))}, TensorFlow {installed('tensorflow')}"
    if plugin := installed("tensorflow-metal"):  # on a Mac
        expected += f", tensorflow-metal {plugin}"
    assert done.stdout == f"mnist-mlp {__version__} ({expected})\n"
