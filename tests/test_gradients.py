"""The hand-written backprop against tf.GradientTape and finite differences (the micrograd pattern)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp.config import ModelConfig
from mnist_mlp.gradients import loss_gradients
from mnist_mlp.model import MLP, cross_entropy, forward, l1_penalty, one_hot_rows

LAYOUTS = [[5], [7, 5], [100, 100], [3, 4, 5]]


def make_case(hidden: list[int], batch: int, dtype: tf.DType, seed: int) -> tuple[MLP, tf.Tensor, tf.Tensor]:
    """A model with random (non-zero) biases, a random batch Xᵀ [M, 784] and one-hot labels yᵀ [M, 10]."""
    model = MLP(ModelConfig(hidden=hidden, init="he"), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for bias in model.W0:
        bias.assign(rng.normal(0, 0.1, bias.shape))
    X = tf.constant(rng.random((batch, 784)), dtype)
    y = one_hot_rows(rng.integers(0, 10, batch), dtype)
    return model, X, y


def objective(model: MLP, X: tf.Tensor, y: tf.Tensor, l1: float, l1_biases: bool) -> tf.Tensor:
    """Mean cross-entropy + λ‖W‖₁: the loss the hand-written gradients claim to differentiate."""
    _, logits = forward(model, X)
    return cross_entropy(logits, y) + l1_penalty(model, l1, biases=l1_biases)


def hand_and_tape(model, X, y, l1, l1_biases):
    with tf.GradientTape() as tape:
        loss = objective(model, X, y, l1, l1_biases)
    tape_grads = tape.gradient(loss, model.W + model.W0)
    H, logits = forward(model, X)
    grad_W, grad_W0 = loss_gradients(model, H, logits, y, l1, l1_biases)
    return grad_W + grad_W0, tape_grads


def relative_error(a: tf.Tensor, b: tf.Tensor) -> float:
    return float(tf.reduce_max(tf.abs(a - b)) / (tf.reduce_max(tf.abs(b)) + 1e-300))


@pytest.mark.parametrize("hidden", LAYOUTS, ids=str)
@pytest.mark.parametrize("batch", [1, 13, 50])
@pytest.mark.parametrize("l1, l1_biases", [(0.0, False), (0.01, False), (0.003, True)])
def test_hand_written_gradients_equal_gradient_tape_float64(hidden, batch, l1, l1_biases):
    model, X, y = make_case(hidden, batch, tf.float64, seed=batch + len(hidden))
    hand, tape = hand_and_tape(model, X, y, l1, l1_biases)
    for ours, theirs, var in zip(hand, tape, model.W + model.W0, strict=True):
        assert ours.shape == var.shape
        assert relative_error(ours, theirs) < 1e-10, var.name


@pytest.mark.parametrize("hidden", LAYOUTS, ids=str)
def test_hand_written_gradients_equal_gradient_tape_float32(hidden):
    model, X, y = make_case(hidden, 50, tf.float32, seed=7)
    hand, tape = hand_and_tape(model, X, y, 0.001, False)
    for ours, theirs, var in zip(hand, tape, model.W + model.W0, strict=True):
        assert relative_error(ours, theirs) < 1e-5, var.name


def test_a_wrong_gradient_is_caught():
    """The comparison has teeth: dropping the ReLU derivative (a classic slip) is far outside tolerance."""
    model, X, y = make_case([7, 5], 13, tf.float64, seed=3)
    H, logits = forward(model, X)
    unmasked = [tf.abs(h) + 1.0 for h in H[1:]]  # every unit "active": φ' = 1 everywhere
    grad_W, _ = loss_gradients(model, [H[0], *unmasked], logits, y, 0.0, False)
    _, tape = hand_and_tape(model, X, y, 0.0, False)
    assert relative_error(grad_W[0], tape[0]) > 1e-3


@pytest.mark.parametrize("hidden", [[6], [5, 4]], ids=str)
def test_hand_written_gradients_match_finite_differences(hidden):
    """Central differences of the loss at a few coordinates of every parameter, in float64."""
    model, X, y = make_case(hidden, 9, tf.float64, seed=11)
    l1, eps = 0.002, 1e-6
    hand, _ = hand_and_tape(model, X, y, l1, True)
    rng = np.random.default_rng(0)
    for var, grad in zip(model.W + model.W0, hand, strict=True):
        original = var.numpy()
        for _ in range(5):
            index = tuple(rng.integers(0, n) for n in var.shape)
            losses = []
            for step in (eps, -eps):
                moved = original.copy()
                moved[index] += step
                var.assign(moved)
                losses.append(float(objective(model, X, y, l1, True)))
            var.assign(original)
            numeric = (losses[0] - losses[1]) / (2 * eps)
            assert abs(numeric - float(grad.numpy()[index])) < 1e-6 * max(1.0, abs(numeric)), (var.name, index)
