"""The bench: its peers compute what our trainer computes, mismatches are reported, bench.json is well formed.

No timing assertions: timings belong to the bench, not to the tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp import bench, bench_runners
from mnist_mlp.cli import main
from mnist_mlp.config import Config
from mnist_mlp.data import Split
from mnist_mlp.device import Device
from mnist_mlp.errors import UserError
from mnist_mlp.training import Trainer
from tests.conftest import cli_env

N_IMAGES = 400


def learnable_split(n: int = N_IMAGES, seed: int = 0) -> Split:
    """Random images whose label is the brightest of ten pixel groups: SGD lowers the loss within a few steps."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = images.reshape(n, -1)[:, :780].reshape(n, 10, 78).sum(axis=2).argmax(axis=1).astype(np.uint8)
    return Split(images, labels)


TINY = dataclasses.replace(bench.QUICK, batch_sizes=(20, 100), images_per_repeat=N_IMAGES, matmul_size=128)


@pytest.fixture
def small_quick(monkeypatch):
    """`--quick` on a small slice: the quick options with small batches, and a few hundred images."""
    monkeypatch.setattr(bench, "QUICK", TINY)
    monkeypatch.setattr(bench, "bench_data", lambda: (learnable_split(), "learnable synthetic test data", True))


def test_flops_per_image_counts_the_forward_and_backward_matmuls():
    forward = 2 * (784 * 100 + 100 * 100 + 100 * 10)  # (W^l)ᵀ H^{l−1}
    weight_gradients = forward  # H^{l−1} (∇Z^l)ᵀ, same shapes
    input_gradients = 2 * (100 * 100 + 100 * 10)  # W^l ∇Z^l, not needed for the first layer
    assert bench.flops_per_image([784, 100, 100, 10]) == forward + weight_gradients + input_gradients


def test_numpy_loop_follows_the_trainers_step_path():
    config = Config().replace(**{"model.hidden": [16, 12], "train.batch_size": 20, "train.l1": 0.0})
    data = learnable_split(100)
    trainer = Trainer(config, data, Device("/CPU:0", "cpu", jit_compile=False))
    initial = [v.numpy() for v in trainer.model.variables_in_order]
    order = trainer.epoch_order(1).numpy()
    loop = bench_runners.NumpyLoop(data, order, batch=20, lr=config.train.learning_rate, initial=initial)
    loop.reset()
    loop.run(5)
    for batch in order.reshape(5, 20):
        trainer.train_step(tf.gather(trainer.images, batch), tf.gather(trainer.labels, batch), tf.constant(loop.lr))
    for ours, numpy_ in zip(trainer.model.variables_in_order, loop.weights(), strict=True):
        np.testing.assert_allclose(numpy_, ours.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # every implementation with its tracing, Keras and XLA included: ~10 s on 2 cores
def test_quick_bench_writes_bench_json_and_png_and_every_loss_agrees(small_quick, tmp_path, capsys):
    status = main(["bench", "--quick", "--out", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert err.startswith("wanted from a Mac user:") and bench.MAC_COMMAND in err.splitlines()[0]
    document = json.loads((tmp_path / "bench.json").read_text())
    assert status == 0 and printed == document
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    env = document["environment"]
    assert env["tensorflow"] == tf.__version__ and env["devices"][0] == {"name": "CPU:0", "kind": "cpu"}
    assert {"intra_op", "inter_op", "cpu_count"} <= set(env["threads"]) and "enabled" in env["onednn"]
    assert {"system", "machine", "processor"} <= set(env["machine"])
    assert document["data"]["synthetic"] is True and document["options"]["quick"] is True
    assert document["matmul_gflops"]["CPU:0"] > 0 and document["matmul_gflops"]["numpy"] > 0

    results = document["results"]
    cpu = {(r["batch_size"], r["implementation"]) for r in results if r["device"] == "CPU:0"}
    assert cpu == {(b, key) for b in TINY.batch_sizes for key in bench_runners.IMPLEMENTATIONS}
    for r in results:
        ips = r["images_per_second"]
        assert len(r["seconds"]) == TINY.repeats >= 5
        assert r["steps"] == N_IMAGES // r["batch_size"]
        assert 0 < ips["min"] <= ips["median"] <= ips["max"]
        assert r["seconds_per_epoch"] == pytest.approx(60000 / ips["median"])
        assert 0 < r["relative_to_fastest"] <= 1 and r["gflops"] > 0
        assert r["loss_matches"], r  # every implementation trained the same network to the same loss
    assert max(r["relative_to_fastest"] for r in results) == 1
    assert document["mismatches"] == []
    step = [r for r in results if r["implementation"] == "step" and r["device"] == "CPU:0"]
    assert all(r["identical_to_reference"] for r in step)  # the step path is the fast path, one call per step
    headline = document["summary"]  # at the smallest batch size: this run has no batch 50
    assert headline["batch_size"] == 20 and headline["fast_over_keras"] > 0 and headline["xla_over_fast"] > 0
    assert document["train_runs"]["skipped"].startswith("no MNIST here")  # a default run would download it
    assert "train runs skipped: no MNIST here" in bench.report(document)


def test_an_implementation_that_computes_something_else_is_reported(monkeypatch, tmp_path):
    class NoUpdates(bench_runners.NumpyLoop):
        """Stands for a device that returns without training: its weights stay the initial ones."""

        key, label = "numpy", "broken loop"

        def run(self, steps: int) -> None:
            pass

    def with_broken(trainer, train, order, initial):
        broken = NoUpdates(train, order, trainer.config.train.batch_size, 0.1, initial)
        return [bench_runners.FastPath(trainer, order, initial), broken]

    monkeypatch.setattr(bench, "runners_for", with_broken)
    options = dataclasses.replace(TINY, batch_sizes=(20,))
    document = bench.bench(options, tmp_path, learnable_split(), "learnable synthetic test data", say=lambda _: None)
    broken = [r for r in document["results"] if r["label"] == "broken loop"]
    assert broken and not broken[0]["loss_matches"] and not broken[0]["identical_to_reference"]
    assert any("broken loop at batch 20" in line for line in document["mismatches"])
    assert "MISMATCH" in bench.report(document)


def test_an_earlier_bench_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "bench.json").write_text("{}")
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 2
    assert "already holds a bench.json" in capsys.readouterr().err
    assert (tmp_path / "bench.json").read_text() == "{}"
    with pytest.raises(UserError, match="not a folder"):
        bench.prepare_out(tmp_path / "bench.json", overwrite=True)


def test_bad_data_is_one_error_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_MLP_DATA_DIR", str(tmp_path / "missing"))
    assert main(["bench", "--quick", "--out", str(tmp_path / "out")]) == 2
    assert "MNIST data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a bench child process: matmul rates, the NumPy loop, two devices
def test_the_wrong_standin_gpu_is_a_mismatch_and_exit_1(tmp_path):
    """bench's GPU rows on the stand-in (a child process: it must be set up before TensorFlow starts),
    with our fast path only, the one `train` runs, to keep it short."""
    script = (
        "import dataclasses, sys\n"
        "from mnist_mlp import bench, bench_runners, cli\n"
        "from tests.test_bench import TINY, learnable_split\n"
        "bench.QUICK = dataclasses.replace(TINY, batch_sizes=(20,))\n"
        "bench.bench_data = lambda: (learnable_split(), 'learnable synthetic test data', True)\n"
        "bench.runners_for = lambda trainer, train, order, initial: [bench_runners.FastPath(trainer, order, initial)]\n"
        f"sys.exit(cli.main(['bench', '--quick', '--json', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    env = cli_env(tmp_path, MNIST_MLP_STANDIN_GPU="wrong")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert [d["name"] for d in document["environment"]["devices"]] == ["CPU:0", "CPU:1"]
    checks = {(r["device"], r["implementation"]): r["loss_matches"] for r in document["results"]}
    expected = {("CPU:0", "fast"): True, ("CPU:0", "numpy"): True, ("CPU:1", "fast"): False}
    if importlib.util.find_spec("jax"):  # the bench extra: the JAX row joins the CPU's
        expected[("CPU:0", "jax")] = True
    assert checks == expected
    assert document["mismatches"][0].startswith("CPU:1 fast path at batch 20: loss ")
    assert "GPU rows: CPU:1, the stand-in GPU (MNIST_MLP_STANDIN_GPU=wrong)" in done.stderr


def test_jax_epoch_follows_the_trainers_fast_path_with_l1():
    """The JAX row computes our update, L1 included: the same weights within float32 rounding, and its loss
    passes the bench's tight check. Needs the bench extra (jax), which the dev extra includes."""
    pytest.importorskip("jax")
    config = Config().replace(**{"model.hidden": [16, 12], "train.batch_size": 20, "train.l1": 1e-3})
    data = learnable_split(100)
    trainer = Trainer(config, data, Device("/CPU:0", "cpu", jit_compile=False))
    initial = [v.numpy() for v in trainer.model.variables_in_order]
    order = trainer.epoch_order(1).numpy()
    lr = config.train.learning_rate
    jax_row = bench_runners.JaxScan(data, order, batch=20, lr=lr, initial=initial, l1=config.train.l1)
    jax_row.reset()
    jax_row.run(5)
    trainer.run_steps(tf.constant(order), 0, 5, lr, epoch=1)
    ours = [v.numpy() for v in trainer.model.variables_in_order]
    for jax_weights, our_weights in zip(jax_row.weights(), ours, strict=True):
        np.testing.assert_allclose(jax_weights, our_weights, rtol=1e-5, atol=1e-6)
    losses = [bench_runners.numpy_loss(w, data.images, data.labels) for w in (jax_row.weights(), ours)]
    assert bench.losses_agree(*losses, bench.CHECK_RTOL)
