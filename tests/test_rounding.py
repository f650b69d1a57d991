"""The rounding bounds hold: TensorFlow's own float32 step on the CPU stays within them of the exact (float64)
values, tensor by tensor, for every optimizer; and they are tight enough to matter (a relative 1e-3 exceeds them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp import rounding
from mnist_mlp.config import Config
from mnist_mlp.data import N_CLASSES
from mnist_mlp.device import Device
from mnist_mlp.gpu_check import exact_update, pixels
from mnist_mlp.model import one_hot_rows, softmax, to_rows
from mnist_mlp.training import Trainer
from tests.conftest import synthetic_mnist

CPU_PLAIN = Device("/CPU:0", "cpu", False)


def test_gamma_is_the_worst_case_for_short_sums_and_grows_as_the_square_root_beyond():
    u = rounding.U
    assert rounding.gamma(10) == pytest.approx(10 * u, rel=1e-6)
    assert rounding.gamma(100) == pytest.approx(100 * u, rel=1e-5)  # λ√n u = n u at n = λ² = 100
    assert rounding.gamma(10000) == pytest.approx(rounding.LAMBDA * 100 * u, rel=1e-4)
    assert rounding.gamma(10000) < 10000 * u / 9  # a tenth of the worst case


def float32_step(config: Config, seed: int, batch: int):
    """A trainer on the plain CPU graph, a batch of digit-like images, and the step's float32 tensors."""
    data = synthetic_mnist(n_train=max(batch, 100), seed=seed).train
    data.images[:] = np.where(data.images > 180, data.images, 0)  # mostly zeros, like MNIST's pixels
    trainer = Trainer(config.replace(seed=seed), data, CPU_PLAIN)
    images, labels = data.images[:batch].reshape(batch, -1), data.labels[:batch]
    H, logits, loss, grads = trainer.forward_backward(to_rows(tf.constant(images)), one_hot_rows(tf.constant(labels)))
    return (
        trainer,
        images,
        labels,
        [h.numpy() for h in H[1:]],
        logits.numpy(),
        softmax(logits).numpy(),
        float(loss),
        [g.numpy() for g in grads],
    )


def exact_and_bounds(trainer: Trainer, images: np.ndarray, labels: np.ndarray):
    W, W0 = [w.numpy() for w in trainer.model.W], [b.numpy() for b in trainer.model.W0]
    fwd = rounding.forward(W, W0, pixels(images))
    out = rounding.output(fwd, labels.astype(np.int64))
    cfg = trainer.config.train
    grads = rounding.gradients(W, W0, fwd, out, np.eye(N_CLASSES)[labels], cfg.l1, cfg.l1_biases)
    return fwd, out, grads


def within(found: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> float:
    """The largest share of its bound that an entry's error uses (≤ 1: the bound holds)."""
    error = np.abs(np.asarray(found, np.float64) - exact)
    return float(np.max(np.where(error == 0, 0.0, error / np.maximum(bound, 1e-300))))


@pytest.mark.parametrize("seed, batch", [(0, 50), (1, 128), (2, 512)])
def test_tensorflows_float32_step_is_within_the_bounds_of_the_exact_one(seed, batch):
    config = Config().replace(**{"train.l1": 1e-3, "train.l1_biases": True})
    trainer, images, labels, H, logits, y_hat, loss, grads = float32_step(config, seed, batch)
    fwd, out, exact_grads = exact_and_bounds(trainer, images, labels)
    shares = {f"H^{i}": within(h, fwd.H[i], fwd.A_H[i]) for i, h in enumerate(H, 1)}
    shares["logits"] = within(logits, fwd.logits, fwd.A_Z[-1])
    shares["ŷ"] = within(y_hat, out.y_hat, out.A_y_hat)
    shares["loss"] = within(loss, out.losses.mean(), rounding.loss_sum_bound(out) / batch)
    exact = [*exact_grads.W, *exact_grads.W0]
    bounds = [*exact_grads.A_W, *exact_grads.A_W0]
    shares |= {f"gradient {i}": within(g, e, a) for i, (g, e, a) in enumerate(zip(grads, exact, bounds, strict=True))}
    assert max(shares.values()) <= 1, shares
    assert max(shares.values()) > 0  # the comparison saw rounding at all (float32 against float64)


def test_the_bounds_are_tight_enough_to_see_a_relative_error_of_1e_3():
    trainer, images, labels, H, *_ = float32_step(Config(), 0, 50)
    fwd, *_ = exact_and_bounds(trainer, images, labels)
    assert within(H[0] * (1 + 1e-3), fwd.H[1], 2 * fwd.A_H[1]) > 1  # as a device would be compared: 2A


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_an_optimizers_float32_update_is_within_the_update_bound(optimizer):
    config = Config().replace(**{"train.optimizer": optimizer, "train.l1": 1e-4})
    trainer, images, labels, *_ = float32_step(config, 3, 50)
    lr = 0.05
    for _ in range(3):  # slots that are not zero: a few updates first
        trainer.train_step(tf.constant(images), tf.constant(labels), tf.constant(lr))
    state = [v.numpy() for v in (*trainer.params, *trainer.optimizer.variables)]
    _, _, _, grads = trainer.forward_backward(to_rows(tf.constant(images)), one_hot_rows(tf.constant(labels)))
    *_, exact_grads = exact_and_bounds(trainer, images, labels)
    g, A_g = [*exact_grads.W, *exact_grads.W0], [*exact_grads.A_W, *exact_grads.A_W0]
    assert all(within(f.numpy(), e, a) <= 1 for f, e, a in zip(grads, g, A_g, strict=True))
    trainer.optimizer.apply_gradients(zip(grads, trainer.params, strict=True), tf.constant(lr))  # float32
    after, low, high = exact_update(
        config, state, [[x + d * a for x, a in zip(g, A_g, strict=True)] for d in (0, -1, 1)], lr
    )
    found = [v.numpy() for v in (*trainer.params, *trainer.optimizer.variables)]
    rate_error = rounding.adam_rate_error(0.9, 0.999, float(state[-1]) + 1) if optimizer == "adam" else 0.0
    shares = [
        within(f, e, rounding.update_bound(*four, rate_error))
        for f, e, four in zip(found, after, zip(state, after, low, high, strict=True), strict=True)
    ]
    assert max(shares) <= 1, shares
    assert math.isfinite(max(shares))
