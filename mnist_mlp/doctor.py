"""`mnist-mlp doctor`: what this machine offers for training, and what is wrong with it, in one report.

Versions, the devices TensorFlow lists, where MNIST would come from, and a fresh GPU self-check (never the
cached verdict) at batch 50 and 512 with the time of a training step on each device; then the device
`runtime.device: auto` would pick and every problem found, one line each.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import keras
import tensorflow as tf

from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import data_source
from mnist_mlp.device import STANDIN_ENV, available_gpu, metal_plugin_version, standin_mode
from mnist_mlp.errors import UserError
from mnist_mlp.gpu_check import Verdict, verdict_for

BATCH_SIZES = (50, 512)  # the default batch size, and one where a GPU has more work per call


def diagnose(data_dir: Path | None = None) -> dict:
    """The whole report as one JSON-ready dict (what `doctor --json` prints)."""
    problems = environment_problems()
    data_config = DataConfig(dir=str(data_dir)) if data_dir else DataConfig()
    try:
        data = data_source(data_config)
    except UserError as exc:
        data = "unusable"
        problems.append(str(exc))
    try:
        gpu = available_gpu()
    except UserError as exc:
        gpu = None
        problems.append(str(exc))
    checks = [Config().replace(**{"train.batch_size": batch}) for batch in BATCH_SIZES] if gpu else []
    verdicts = [verdict_for(config, gpu, recheck=True) for config in checks]
    default = next((v for v in verdicts if v.batch_size == Config().train.batch_size), None)
    problems += [f"the GPU ({gpu}) computes wrong results: {v.difference}" for v in verdicts if not v.correct][:1]
    return {
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_metal": metal_plugin_version(),
        "devices": [d.name.replace("/device:", "/") for d in tf.config.list_logical_devices()],
        "gpu": gpu,
        "standin_gpu": standin_mode() if gpu else None,
        "data": data,
        "gpu_check": "no gpu" if not gpu else "ok" if all(v.correct for v in verdicts) else "mismatch",
        "step_seconds": {str(v.batch_size): {"cpu": v.cpu_step_seconds, "gpu": v.gpu_step_seconds} for v in verdicts},
        "check_seconds": {str(v.batch_size): v.check_seconds for v in verdicts},
        "device_choice": "gpu" if default and default.faster else "cpu",
        "recommendation": recommendation(gpu, verdicts),
        "problems": problems,
    }


def environment_problems() -> list[str]:
    """Problems of the installation itself, one line each."""
    problems = []
    if platform.system() == "Darwin" and platform.machine() == "arm64" and metal_plugin_version() is None:
        problems.append("tensorflow-metal is not installed, so TensorFlow sees no GPU (make install adds it)")
    # A TensorFlow that the installed Metal plugin cannot load never gets this far: import_tensorflow_quietly
    # (mnist_mlp/__init__.py) stops every command, doctor included, with versions.metal_clash's one line.
    return problems


def recommendation(gpu: str | None, verdicts: list[Verdict]) -> str:
    if gpu is None:
        return "train on the CPU (runtime.device: auto does): TensorFlow lists no GPU"
    if any(not v.correct for v in verdicts):
        return "train on the CPU (runtime.device: auto or cpu): the GPU fails its self-check"
    faster = [v.batch_size for v in verdicts if v.faster]
    if not faster:
        return "train on the CPU (runtime.device: auto does): the GPU is correct but not faster at batch 50 or 512"
    return (f"runtime.device: auto: it uses the GPU where the check finds it faster (here at batch "
            f"{', '.join(map(str, faster))}) and the CPU elsewhere")  # fmt: skip


def format_report(report: dict) -> str:
    """The report as aligned lines."""
    plugin = report["tensorflow_metal"] or "not installed"
    devices = ", ".join(report["devices"])
    if report["standin_gpu"]:
        devices += f" ({report['gpu']} is the stand-in GPU: {STANDIN_ENV}={report['standin_gpu']})"
    lines = [
        ("platform", report["platform"]),
        ("python", f"{report['python']} ({report['python_executable']})"),
        ("packages", f"tensorflow {report['tensorflow']}, keras {report['keras']}, tensorflow-metal {plugin}"),
        ("devices", devices),
        ("data", report["data"]),
        ("GPU check", report["gpu_check"] + (f" ({report['gpu']}, checked afresh)" if report["gpu"] else "")),
    ]
    for batch, seconds in report["step_seconds"].items():
        ratio = seconds["cpu"] / seconds["gpu"]
        speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        lines.append((f"batch {batch}", f"a training step takes {seconds['cpu'] * 1e3:.2f} ms on the CPU, "
                      f"{seconds['gpu'] * 1e3:.2f} ms on the GPU ({speed}); check took "
                      f"{report['check_seconds'][batch]:.1f} s"))  # fmt: skip
    lines += [
        ("auto picks", report["device_choice"].upper() + " at batch 50"),
        ("recommended", report["recommendation"]),
    ]
    lines += [("problem", p) for p in report["problems"]] or [("problems", "none")]
    return "\n".join(f"{name:<12} {text}" for name, text in lines)
