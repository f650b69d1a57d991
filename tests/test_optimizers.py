"""The optimizer seam: SGD's update against Keras', and a training step that runs whichever optimizer it holds."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnist_mlp.config import Config
from mnist_mlp.device import cpu_device
from mnist_mlp.optimizers import SGD, Optimizer, make_optimizer
from mnist_mlp.training import Trainer
from tests.conftest import synthetic_mnist


def test_sgd_matches_keras_sgd_on_identical_gradients_and_has_no_slots():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=shape).astype(np.float32) for shape in ((5, 3), (3, 1))]
    ours, theirs = [tf.Variable(w) for w in start], [tf.Variable(w) for w in start]
    optimizer, keras = make_optimizer(Config().train, ours), tf.keras.optimizers.SGD(learning_rate=0.3)
    assert isinstance(optimizer, SGD) and optimizer.variables == []
    for _ in range(100):
        grads = [tf.constant(rng.normal(size=w.shape).astype(np.float32)) for w in start]
        optimizer.apply_gradients(zip(grads, ours, strict=True), tf.constant(0.3))
        keras.apply_gradients(zip(grads, theirs, strict=True))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


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
