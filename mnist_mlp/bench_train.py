"""What a whole `mnist-mlp train` costs besides its epochs, measured on real runs: the bench's overhead and memory.

Each repeat starts two fresh processes in turn, so that a change in the machine's load falls on both alike:
  1. TensorFlow's import as the training process does it (`import_tensorflow_quietly`), timed from outside;
  2. a default `mnist-mlp train --quiet` into a scratch folder, timed from outside.
From each run:
  overhead = wall − Σ history.csv `seconds` (metrics.json's seconds_total) − the import's seconds;
  peak RSS of the training process, and the largest of its child processes (the plot processes).

Peak RSS is the kernel's high-water mark of each process's own memory (VmHWM in /proc). Not ru_maxrss: on Linux a
child started from a large process inherits that process's ru_maxrss at exec, so the bench's own gigabytes would
show up in it. The training process reads its mark as it exits (PROBE); its children are sampled from outside every
SAMPLE_SECONDS while they live. Where there is no /proc (macOS), ru_maxrss is what there is, and the table says so.

This module imports no TensorFlow: every figure comes from the child processes.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_mlp.history import SECONDS

SAMPLE_SECONDS = 0.05
IMPORT_COMMAND = "from mnist_mlp import import_tensorflow_quietly; import_tensorflow_quietly()"
# Runs `mnist-mlp train ARGS` as the console script does (cli.run), and writes the process's peak RSS in bytes to the
# file named by the first argument from an atexit handler, which cli.run calls once every file is written.
PROBE = """
import atexit, json, resource, sys
from mnist_mlp.bench_train import own_peak_rss
out = sys.argv.pop(1)
sys.argv[0] = "mnist-mlp"
atexit.register(lambda: open(out, "w").write(json.dumps({"peak_rss": own_peak_rss()})))
from mnist_mlp.cli import run
run()
"""


@dataclass
class TrainRun:
    """One default run: its wall time from outside, the training seconds it recorded, and its memory."""

    wall: float
    training: float  # Σ of history.csv's seconds: the compiled training calls
    import_seconds: float  # the import timed just before it, in a fresh process
    peak_rss: int  # bytes, the training process
    children_peak_rss: int  # bytes, the largest child process (0: none seen)
    epochs: int
    first_epoch_seconds: float

    @property
    def overhead(self) -> float:
        return self.wall - self.training - self.import_seconds


def own_peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM where /proc has it, else ru_maxrss (bytes on macOS)."""
    hwm = _vm_hwm(Path("/proc/self/status"))
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _vm_hwm(status: Path) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; [] elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class ChildMemory:
    """Samples the peak RSS of a process's children (and theirs) until stopped; the largest one seen."""

    def __init__(self, pid: int):
        self.pid, self.peaks, self.done = pid, {}, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            stack = _children(self.pid)
            while stack:
                child = stack.pop()
                hwm = _vm_hwm(Path(f"/proc/{child}/status"))
                if hwm is not None:
                    self.peaks[child] = max(hwm, self.peaks.get(child, 0))
                stack += _children(child)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peaks.values(), default=0)


def time_import(env: dict[str, str]) -> float:
    """Seconds for a fresh interpreter to import TensorFlow as `mnist-mlp train` does, start to exit."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORT_COMMAND], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def time_train(args: list[str], env: dict[str, str], import_seconds: float) -> TrainRun:
    """One `mnist-mlp train --quiet ARGS` into a scratch folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mnist-mlp-bench-") as scratch:
        out, peak_file = Path(scratch) / "run", Path(scratch) / "peak.json"
        command = [sys.executable, "-c", PROBE, str(peak_file), "train", "--quiet", "--out", str(out), *args]
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        children = ChildMemory(process.pid)
        _, errors = process.communicate()
        wall = time.perf_counter() - started
        children_peak = children.stop()
        if process.returncode != 0:
            raise RuntimeError(f"mnist-mlp train exited {process.returncode}: {errors.strip()[-500:]}")
        if not children_peak and sys.platform != "linux":
            import resource

            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # macOS: bytes, the largest child so far
            children_peak = peak if sys.platform == "darwin" else peak * 1024
        metrics = json.loads((out / "metrics.json").read_text())
        with (out / "history.csv").open(newline="") as file:
            first_epoch = next(csv.DictReader(file))
        return TrainRun(
            wall=wall,
            training=metrics["seconds_total"],
            import_seconds=import_seconds,
            peak_rss=json.loads(peak_file.read_text())["peak_rss"],
            children_peak_rss=children_peak,
            epochs=metrics["epochs"],
            first_epoch_seconds=float(first_epoch[SECONDS]),
        )


def measure_train_runs(
    repeats: int, args: list[str] = (), say: Callable[[str], None] = lambda _: None, env: dict | None = None
) -> dict:
    """`repeats` rounds of (import, default train run), interleaved; every run's figures and their medians."""
    env = dict(os.environ if env is None else env)
    runs: list[TrainRun] = []
    load_before = load_average()
    for _ in range(repeats):
        try:
            run = time_train(list(args), env, time_import(env))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:  # the timing before it is kept
            return {"skipped": f"train run {len(runs) + 1} failed: {exc}"}
        say(f"  train run {len(runs) + 1}/{repeats}: {format_run(run)}")
        runs.append(run)
    return {
        "command": " ".join(["mnist-mlp", "train", "--quiet", *args]),
        "repeats": repeats,
        "load_average": {"before": load_before, "after": load_average()},
        "peak_rss_source": "VmHWM" if sys.platform == "linux" else "ru_maxrss",
        "runs": [asdict(r) | {"overhead": r.overhead} for r in runs],
        "median": {
            key: statistics.median(getattr(r, key) for r in runs)
            for key in ("wall", "training", "import_seconds", "overhead", "peak_rss", "children_peak_rss")
        },
        "max": {"peak_rss": max(r.peak_rss for r in runs), "overhead": max(r.overhead for r in runs)},
    }


def format_run(run: TrainRun) -> str:
    return (
        f"wall {run.wall:.2f} s = training {run.training:.2f} s + import {run.import_seconds:.2f} s + overhead "
        f"{run.overhead:.2f} s; peak RSS {run.peak_rss / 1e6:,.0f} MB (children: {run.children_peak_rss / 1e6:,.0f} MB)"
    )


def format_train_runs(found: dict) -> str:
    """The closing lines: the median overhead and peak RSS over the runs, with the worst of each."""
    m, worst = found["median"], found["max"]
    return "\n".join([
        f"`{found['command']}`, {found['repeats']} runs interleaved with TensorFlow's import in a fresh process "
        f"(load average {found['load_average']['before']}):",
        f"  overhead (wall - training - import) {m['overhead']:.2f} s median, {worst['overhead']:.2f} s worst "
        f"(wall {m['wall']:.2f} s, training {m['training']:.2f} s, import {m['import_seconds']:.2f} s)",
        f"  peak RSS of the training process {m['peak_rss'] / 1e6:,.0f} MB median, {worst['peak_rss'] / 1e6:,.0f} MB "
        f"worst; largest child process {m['children_peak_rss'] / 1e6:,.0f} MB ({found['peak_rss_source']})",
    ])  # fmt: skip


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
