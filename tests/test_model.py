"""Forward pass, stable softmax and the initialization schemes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp.config import ModelConfig
from mnist_mlp.model import (
    ACTIVATIONS,
    MLP,
    cross_entropy,
    forward,
    log_softmax,
    one_hot_rows,
    predict_proba,
    to_rows,
)


def test_shapes_are_the_report_notation_transposed():
    """Weights as the report has them; activations and logits its [N_l, M] transposed, a row per image."""
    model = MLP(ModelConfig(hidden=[100, 100]), seed=0)
    assert [tuple(w.shape) for w in model.W] == [(784, 100), (100, 100), (100, 10)]
    assert [tuple(b.shape) for b in model.W0] == [(100, 1), (100, 1), (10, 1)]
    X = to_rows(np.zeros((7, 28, 28), np.uint8))
    H, logits = forward(model, X)
    assert [tuple(h.shape) for h in H] == [(7, 784), (7, 100), (7, 100)]
    assert tuple(logits.shape) == (7, 10)


def test_pixels_are_scaled_to_unit_interval_in_rows():
    images = np.arange(2 * 784, dtype=np.int64).reshape(2, 28, 28) % 256
    X = to_rows(images.astype(np.uint8)).numpy()
    assert X.shape == (2, 784) and X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_allclose(X[1], images[1].reshape(-1) / 255.0, rtol=1e-6)


def test_softmax_is_stable_for_huge_logits():
    logits = tf.constant([[1e4, 0.0, -1e4], [-1e4, 3e4, 1e4]], tf.float32)
    log_p = log_softmax(logits).numpy()
    assert np.isfinite(log_p).all()
    np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-6)


def test_cross_entropy_matches_tensorflow():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 5, (32, 10)), tf.float64)
    labels = rng.integers(0, 10, 32)
    ours = cross_entropy(logits, one_hot_rows(labels, tf.float64))
    theirs = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    assert abs(float(ours) - float(theirs)) < 1e-12


@pytest.mark.parametrize(
    "init, scale, check",
    [
        ("normal", 0.1, lambda w, n_in: abs(w.mean()) < 0.005 and abs(w.std() - 0.1) < 0.005),
        ("uniform", 0.1, lambda w, n_in: w.min() >= 0.0 and w.max() < 0.1 and abs(w.mean() - 0.05) < 0.005),
        ("he", 0.1, lambda w, n_in: abs(w.std() - (2 / n_in) ** 0.5) < 0.003),
    ],
)
def test_initialization_schemes(init, scale, check):
    model = MLP(ModelConfig(hidden=[100, 100], init=init, init_scale=scale), seed=3)
    W1 = model.W[0].numpy()
    assert check(W1, 784)
    assert all(not b.numpy().any() for b in model.W0)


def test_same_seed_same_weights_other_seed_other_weights():
    config = ModelConfig(hidden=[20])
    a, b, c = MLP(config, seed=1), MLP(config, seed=1), MLP(config, seed=2)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.W, b.W, strict=True))
    assert not np.array_equal(a.W[0].numpy(), c.W[0].numpy())


def test_predict_proba_rows_are_distributions():
    model = MLP(ModelConfig(hidden=[10]), seed=0)
    probabilities = predict_proba(model, np.full((3, 28, 28), 200, np.uint8)).numpy()
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_activation_derivative_matches_gradient_tape(name):
    """The derivative, given H = φ(Z), equals dφ/dZ from tf.GradientTape (away from ReLU's kink at 0)."""
    activation = ACTIVATIONS[name]
    Z = tf.constant(np.random.default_rng(0).normal(size=(6, 5)) + 0.01, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(Z)
        H = activation.fn(Z)
    np.testing.assert_allclose(activation.derivative(H).numpy(), tape.gradient(H, Z).numpy(), rtol=1e-12)
