"""TensorBoard logs: one event folder per split, every epoch's scalars at step = epoch, equal to history.csv, and
histograms of each layer's weights and biases."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp.results import Weights
from mnist_mlp.run import train_and_evaluate
from mnist_mlp.rundir import RunDir
from mnist_mlp.tensorboard import TensorBoardWriter, epoch_scalars
from tests.conftest import synthetic_mnist


def read_events(folder) -> dict[tuple[str, int], np.ndarray]:
    """{(tag, step): tensor} from every event file in `folder`."""
    values = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values[(value.tag, event.step)] = tf.make_ndarray(value.tensor)
    return values


def read_scalars(folder) -> dict[tuple[str, int], float]:
    """{(tag, step): value} of the scalar summaries in `folder`."""
    return {key: float(tensor) for key, tensor in read_events(folder).items() if tensor.ndim == 0}


def test_epoch_scalars_group_a_history_row_by_split():
    row = {"epoch": 3, "learning_rate": 0.05, "seconds": 0.7, "batch_loss": 0.2, "train_loss": 0.1,
           "train_accuracy": 0.97, "test_loss": 0.12, "test_accuracy": 0.96}  # fmt: skip
    row |= {f"{split}_error_{d}": d / 100 for split in ("train", "test") for d in range(10)}
    scalars = epoch_scalars(row)
    assert set(scalars) == {"train", "test"}  # no validation split in this row
    assert scalars["test"]["loss"] == 0.12 and scalars["test"]["per_digit_error/digit_7"] == 0.07
    assert scalars["test"]["per_digit_error/mean"] == pytest.approx(0.045)
    assert scalars["train"]["learning_rate"] == 0.05 and "learning_rate" not in scalars["test"]


def test_the_mean_per_digit_error_counts_only_the_digits_a_sliced_set_holds(tmp_path, tiny_config):
    """As metrics.json's mean_per_digit_test_error: a digit with no test image has no error to average."""
    from mnist_mlp.data import Split
    from mnist_mlp.tensorboard import digits_present

    mnist = synthetic_mnist(n_test=60)
    keep = mnist.test.labels != 3
    mnist = mnist.__class__(mnist.train, None, Split(mnist.test.images[keep], mnist.test.labels[keep]), "no 3s")
    run = RunDir.create(tmp_path / "run", "t")
    present = digits_present(mnist)
    assert 3 not in present["test"] and present["train"] == set(range(10))
    result = train_and_evaluate(tiny_config, run, [TensorBoardWriter(run, present)], mnist=mnist)
    logged = read_scalars(run.path / "tb" / "test")
    for row in result.history:
        assert logged[("per_digit_error/mean", row["epoch"])] == pytest.approx(
            np.mean([row[f"test_error_{d}"] for d in range(10) if d != 3]), rel=1e-6
        )
    assert result.metrics["mean_per_digit_test_error"] == pytest.approx(logged[("per_digit_error/mean", 2)], rel=1e-6)


def test_a_run_logs_each_epoch_equal_to_its_history(tmp_path, tiny_config):
    run = RunDir.create(tmp_path / "run", "t")
    config = tiny_config.replace(**{"train.epochs": 3})
    result = train_and_evaluate(config, run, [TensorBoardWriter(run)], mnist=synthetic_mnist(n_validation=40))
    assert sorted(p.name for p in (run.path / "tb").iterdir()) == ["test", "train", "validation"]
    logged = {split: read_scalars(run.path / "tb" / split) for split in ("train", "validation", "test")}
    for row in result.history:
        epoch = row["epoch"]
        for split in ("train", "validation", "test"):
            assert logged[split][("loss", epoch)] == pytest.approx(row[f"{split}_loss"], rel=1e-6)
            assert logged[split][("accuracy", epoch)] == pytest.approx(row[f"{split}_accuracy"], rel=1e-6)
        for d in range(10):
            assert logged["test"][(f"per_digit_error/digit_{d}", epoch)] == pytest.approx(row[f"test_error_{d}"])
        assert logged["train"][("learning_rate", epoch)] == pytest.approx(row["learning_rate"])
    assert {step for _, step in logged["test"]} == {1, 2, 3}


def test_a_run_logs_a_histogram_of_each_layers_weights_and_biases_every_epoch(tmp_path, tiny_config):
    """784-16-12-10: three layers, so weights/layer_1 … 3 and biases/layer_1 … 3 at steps 1, 2; each histogram
    counts every weight of its layer, within the layer's range (the last epoch's from the weights file)."""
    run = RunDir.create(tmp_path / "run", "t")
    train_and_evaluate(tiny_config, run, [TensorBoardWriter(run)], mnist=synthetic_mnist())
    histograms = {key: tensor for key, tensor in read_events(run.tensorboard / "train").items() if tensor.ndim == 2}
    tags = [f"{kind}/layer_{layer}" for kind in ("weights", "biases") for layer in (1, 2, 3)]
    assert sorted(histograms) == sorted((tag, epoch) for tag in tags for epoch in (1, 2))
    final = Weights.from_arrays(run.read_weights(), where="test")
    for layer, (w, w0) in enumerate(zip(final.W, final.W0, strict=True), 1):
        for kind, values in (("weights", w), ("biases", w0)):
            buckets = histograms[(f"{kind}/layer_{layer}", 2)]  # rows: left edge, right edge, count
            assert buckets[:, 2].sum() == values.size
            assert buckets[0, 0] == pytest.approx(values.min()) and buckets[-1, 1] == pytest.approx(values.max())
