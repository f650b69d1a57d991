"""`mnist-mlp doctor`: what this machine offers for training, and what is wrong with it, in one report.

Versions, the devices TensorFlow lists, where MNIST would come from, and a fresh GPU self-check (never the
cached verdict) with the time of a training step on each device: of the default config at batch 50 and
512, or of the config given (--config, --set); then the device `runtime.device: auto` would pick and
every problem found, one line each.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import keras
import tensorflow as tf

from mnist_mlp import plugin_load_error
from mnist_mlp.config import Config, DataConfig
from mnist_mlp.data import Split, data_source, idx_folder, load_mnist, tfds_cached
from mnist_mlp.device import STANDIN_ENV, available_gpu, metal_plugin_version, standin_mode
from mnist_mlp.errors import UserError
from mnist_mlp.gpu_check import OK, Verdict, verdict_for

BATCH_SIZES = (50, 512)  # the default batch size, and one where a GPU has more work per call


def diagnose(data_dir: Path | None = None, config: Config | None = None) -> dict:
    """The whole report as one JSON-ready dict (what `doctor --json` prints). `config`: the settings to check
    the GPU with (None: the defaults at batch 50 and 512)."""
    problems = environment_problems()
    data_config = (config or Config()).data
    if data_dir and config is None:  # with a config, cli applied --data-dir to it already
        data_config = DataConfig(dir=str(data_dir))
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
    checks = [config] if config else [Config().replace(**{"train.batch_size": batch}) for batch in BATCH_SIZES]
    images = check_images(data_config) if gpu else None
    verdicts = [verdict_for(c, gpu, images, recheck=True) for c in checks] if gpu else []
    chosen = next((v for v in verdicts if v.batch_size == checks[0].train.batch_size), None)
    problems += [v.failure() for v in verdicts if not v.correct][:1]
    failed = next((v.status for v in verdicts if not v.correct), OK)
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
        "gpu_check": "no gpu" if not gpu else failed,  # ok | mismatch | failed | no gpu
        "step_seconds": {  # timed only once the GPU is found correct
            str(v.batch_size): {"cpu": v.cpu_step_seconds, "gpu": v.gpu_step_seconds} for v in verdicts if v.correct
        },
        "check_seconds": {str(v.batch_size): v.check_seconds for v in verdicts},
        "device_choice": "gpu" if chosen and chosen.faster else "cpu",
        "checked_batch_size": checks[0].train.batch_size,
        "recommendation": recommendation(gpu, verdicts),
        "problems": problems,
    }


def check_images(config: DataConfig) -> Split | None:
    """MNIST's training images for the GPU check when they are at hand (None: the check makes up digits;
    doctor downloads nothing)."""
    if not (idx_folder(config) or tfds_cached()):
        return None
    try:
        return load_mnist(config).train
    except UserError:
        return None


def environment_problems() -> list[str]:
    """Problems of the installation itself, one line each."""
    problems = [plugin_load_error] if plugin_load_error else []
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
        checked = " or ".join(str(v.batch_size) for v in verdicts)
        return f"train on the CPU (runtime.device: auto does): the GPU is correct but not faster at batch {checked}"
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
        ("auto picks", f"{report['device_choice'].upper()} at batch {report['checked_batch_size']}"),
        ("recommended", report["recommendation"]),
    ]
    lines += [("problem", p) for p in report["problems"]] or [("problems", "none")]
    return "\n".join(f"{name:<12} {text}" for name, text in lines)
