"""Optimizers, written out like the gradients: each owns its slot variables and its update.

The training step hands `apply_gradients` pairs (g, W), where g = ∇W + λ·sign(W) already holds the L1
term (gradients.py), and the epoch's learning rate α; it does not know which optimizer it runs. An
optimizer makes its slots (velocities, moments, a step count) as tf.Variables when it is built, on the
device it is built under, and lists them in `variables` so that a checkpoint can hold them. Another
optimizer is one more subclass of `Optimizer` and one more entry in OPTIMIZERS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tensorflow as tf

from mnist_mlp.config import TrainConfig

GradsAndVars = Iterable[tuple[tf.Tensor, tf.Variable]]


class Optimizer:
    """An update rule: slots made in __init__ (one per parameter, in `params` order), the update in apply_gradients."""

    def __init__(self, config: TrainConfig, params: Sequence[tf.Variable]):
        self.config = config
        self.variables: list[tf.Variable] = []  # the slots, in a fixed order: what a checkpoint saves

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        """Update each parameter in place from its gradient, with learning rate α = lr."""
        raise NotImplementedError


class SGD(Optimizer):
    """Plain mini-batch gradient descent, the report's update; no slots."""

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        for grad, param in grads_and_vars:
            param.assign_sub(lr * grad)  # W ← W − α(∇W + λ·sign(W))


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD}


def make_optimizer(config: TrainConfig, params: Sequence[tf.Variable]) -> Optimizer:
    """The optimizer for `params` (plain SGD: the only one so far); build it under the training device,
    so that its slots live there."""
    return OPTIMIZERS["sgd"](config, params)
