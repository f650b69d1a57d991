"""The optimizers against Keras's on identical gradients, their slots, and the training step's seam."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp.config import Config
from mnist_mlp.device import cpu_device
from mnist_mlp.optimizers import OPTIMIZERS, SGD, Adam, Momentum, Nesterov, Optimizer, make_optimizer
from mnist_mlp.training import Trainer
from tests.conftest import synthetic_mnist

SHAPES = {"W1": (7, 5), "W0_1": (5, 1), "W2": (5, 3), "W0_2": (3, 1)}  # two layers, as the MLP holds them
LR = 0.01


def keras_twin(kind: str, momentum: float = 0.9, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
    """The tf.keras optimizer that our `kind` claims to equal."""
    if kind == "adam":
        return keras.optimizers.Adam(LR, beta_1=beta1, beta_2=beta2, epsilon=epsilon)
    return keras.optimizers.SGD(LR, momentum=0.0 if kind == "sgd" else momentum, nesterov=kind == "nesterov")


def ours(kind: str, params: list[tf.Variable], **settings) -> Optimizer:
    return make_optimizer(Config().train.__class__(optimizer=kind, **settings), params)


def variables(start: list[np.ndarray]) -> list[tf.Variable]:
    return [tf.Variable(w, name=name) for w, name in zip(start, SHAPES, strict=True)]


def gradients(steps: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Gradients of the sizes found in training, at mixed scales, with exact zeros (as ReLU and sign(0) give)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        grads = [(rng.normal(size=s) * rng.choice([1e-4, 1e-2, 1.0])).astype(np.float32) for s in SHAPES.values()]
        grads[0][0, :] = 0.0
        out.append(grads)
    return out


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("sgd", {}),
        ("momentum", {"momentum": 0.9}),
        ("momentum", {"momentum": 0.5}),
        ("nesterov", {"momentum": 0.9}),
        ("adam", {}),
        ("adam", {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-3}),
    ],
)
def test_each_optimizer_equals_keras_after_1_and_100_steps(kind, settings):
    """Identical gradients into our optimizer and Keras's: the same weights to float32 rounding."""
    rng = np.random.default_rng(1)
    start = [rng.normal(size=s).astype(np.float32) for s in SHAPES.values()]
    mine, theirs = variables(start), variables(start)
    optimizer, twin = ours(kind, mine, **settings), keras_twin(kind, **settings)
    twin.build(theirs)
    step = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, mine, strict=True), tf.constant(LR)))
    twin_step = tf.function(lambda grads: twin.apply_gradients(zip(grads, theirs, strict=True)))
    for n, grads in enumerate(gradients(100), start=1):
        step([tf.constant(g) for g in grads])
        twin_step([tf.constant(g) for g in grads])
        if n in (1, 100):
            for a, b in zip(mine, theirs, strict=True):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=f"after {n} steps")
    moved = max(np.abs(a.numpy() - w).max() for a, w in zip(mine, start, strict=True))
    assert moved > 1e-3  # the comparison is of weights that really moved


def test_nesterov_and_momentum_differ_and_adam_bias_corrects_its_first_step():
    """Guards against twins that agree for the wrong reason: the rules must differ where they should."""
    first = {}
    for kind in ("momentum", "nesterov", "adam"):
        w = tf.Variable([[0.0]])
        ours(kind, [w]).apply_gradients([(tf.constant([[2.0]]), w)], tf.constant(0.1))
        first[kind] = float(w.numpy()[0, 0])
    assert first["momentum"] == pytest.approx(-0.2)  # v = −αg; W + v
    assert first["nesterov"] == pytest.approx(-0.38)  # W + μv − αg = 0.9·(−0.2) − 0.2
    assert first["adam"] == pytest.approx(-0.1, rel=1e-5)  # bias-corrected m/√s = g/|g|: one step of α


def test_slots_are_zero_variables_on_the_device_they_are_built_under():
    with tf.device("/CPU:0"):
        params = variables([np.ones(s, np.float32) for s in SHAPES.values()])
        optimizers = {kind: ours(kind, params) for kind in OPTIMIZERS}
    names = {kind: [v.name.split(":")[0] for v in opt.variables] for kind, opt in optimizers.items()}
    assert names["sgd"] == []
    assert names["momentum"] == names["nesterov"] == ["v_W1", "v_W0_1", "v_W2", "v_W0_2"]
    assert names["adam"] == ["m_W1", "m_W0_1", "m_W2", "m_W0_2", "s_W1", "s_W0_1", "s_W2", "s_W0_2", "t"]
    for kind in ("momentum", "adam"):
        for slot in optimizers[kind].variables:
            assert not slot.trainable and slot.device.endswith("CPU:0") and not np.any(slot.numpy())


def test_make_optimizer_builds_what_the_config_names():
    params = [tf.Variable(tf.ones([2, 2]))]
    kinds = {kind: type(ours(kind, params)) for kind in ("sgd", "momentum", "nesterov", "adam")}
    assert kinds == {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adam": Adam}
    assert all(ours(kind, params).kind == kind for kind in kinds)


def test_a_new_learning_rate_does_not_retrace_the_update():
    params = [tf.Variable(tf.ones([3, 2]))]
    optimizer = ours("adam", params)
    step = tf.function(lambda g, lr: optimizer.apply_gradients([(g, params[0])], lr))
    for lr in (0.1, 0.05, 0.001):
        step(tf.ones([3, 2]), tf.constant(lr))
    assert step.experimental_get_tracing_count() == 1


class Recording(Optimizer):
    """Leaves the weights alone and counts the gradients it is handed."""

    def __init__(self, config, params):
        super().__init__(config, params)
        self.calls = tf.Variable(0)
        self.variables = [self.calls]

    def apply_gradients(self, grads_and_vars, lr):
        for _grad, _param in grads_and_vars:
            self.calls.assign_add(1)


def test_the_training_step_runs_the_optimizer_it_holds():
    config = Config().replace(**{"model.hidden": [8], "data.validation_size": 0})
    trainer = Trainer(config, synthetic_mnist(100).train, cpu_device(config.runtime))
    trainer.optimizer = Recording(config.train, trainer.params)
    before = [v.numpy() for v in trainer.params]
    trainer.step(trainer.images[:20], trainer.labels[:20], tf.constant(0.1))
    assert int(trainer.optimizer.calls.numpy()) == len(trainer.params) == 4
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, trainer.params, strict=True))
