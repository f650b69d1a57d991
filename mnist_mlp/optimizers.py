"""Optimizers, written out like the gradients: each owns its slot variables and its update.

The training step hands `apply_gradients` pairs (g, W), where g = ∇W + λ·sign(W) already holds the L1
term (gradients.py), and the epoch's learning rate α as a tensor (a new rate does not retrace); it does
not know which optimizer it runs. Keras's conventions, so that tests/test_optimizers.py can hold each
one against tf.keras.optimizers to float32 rounding:

  sgd       W ← W − αg                                            (the report's update)
  momentum  v ← μv − αg;  W ← W + v
  nesterov  v ← μv − αg;  W ← W + μv − αg                         (with the new v: Keras 3's form)
  adam      t ← t + 1;  m ← m + (1 − β1)(g − m);  s ← s + (1 − β2)(g² − s)
            W ← W − α_t·m / (√s + ε),  α_t = α·√(1 − β2^t) / (1 − β1^t)

Adam's bias correction is folded into α_t, so ε is added to √s itself, not to a corrected √ŝ (Keras's
placement; it matters while t is small). An optimizer makes its slots (velocities, moments, the step
count) as tf.Variables when it is built, on the device it is built under, and lists them in `variables`
so that a checkpoint can hold them. Another optimizer is one more subclass and one more OPTIMIZERS entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tensorflow as tf

from mnist_mlp.config import TrainConfig

GradsAndVars = Iterable[tuple[tf.Tensor, tf.Variable]]


class Optimizer:
    """An update rule: slots made in __init__ (one per parameter, in `params` order), the update in apply_gradients."""

    kind = ""  # its train.optimizer name, recorded in checkpoints so that no other optimizer resumes its slots

    def __init__(self, config: TrainConfig, params: Sequence[tf.Variable]):
        self.config = config
        self.variables: list[tf.Variable] = []  # the slots, in a fixed order: what a checkpoint saves

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        """Update each parameter in place from its gradient, with learning rate α = lr."""
        raise NotImplementedError


class SGD(Optimizer):
    """Plain mini-batch gradient descent, the report's update; no slots."""

    kind = "sgd"

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        for g, W in grads_and_vars:
            W.assign_sub(lr * g)  # W ← W − α(∇W + λ·sign(W))


class Momentum(Optimizer):
    """Heavy-ball momentum: a velocity per parameter, μ = train.momentum."""

    kind = "momentum"

    def __init__(self, config: TrainConfig, params: Sequence[tf.Variable]):
        super().__init__(config, params)
        self.mu = config.momentum
        self.velocity = {param.ref(): _slot(param, "v") for param in params}
        self.variables = list(self.velocity.values())

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        for g, W in grads_and_vars:
            v = self.velocity[W.ref()]
            v.assign(self.mu * v - lr * g)  # v ← μv − αg
            W.assign_add(v)  # W ← W + v


class Nesterov(Momentum):
    """Nesterov momentum in Keras 3's form: the step looks ahead along the new velocity."""

    kind = "nesterov"

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        for g, W in grads_and_vars:
            v = self.velocity[W.ref()]
            v.assign(self.mu * v - lr * g)  # v ← μv − αg
            W.assign_add(self.mu * v - lr * g)  # W ← W + μv − αg


class Adam(Optimizer):
    """Adam: running means of g and g² per parameter, bias-corrected through α_t."""

    kind = "adam"

    def __init__(self, config: TrainConfig, params: Sequence[tf.Variable]):
        super().__init__(config, params)
        self.beta1, self.beta2, self.epsilon = config.beta1, config.beta2, config.epsilon
        self.m = {param.ref(): _slot(param, "m") for param in params}
        self.s = {param.ref(): _slot(param, "s") for param in params}
        # The step count as a float beside the weights (Metal keeps integer variables off the GPU): exact up
        # to 2^24 steps, and it enters the formulas as a float anyway.
        self.t = tf.Variable(0.0, dtype=params[0].dtype, trainable=False, name="t")
        self.variables = [*self.m.values(), *self.s.values(), self.t]

    def apply_gradients(self, grads_and_vars: GradsAndVars, lr: tf.Tensor) -> None:
        t = self.t.assign_add(1.0)  # t ← t + 1
        beta1, beta2 = (tf.constant(beta, t.dtype) for beta in (self.beta1, self.beta2))  # float32, or float64
        alpha_t = lr * tf.sqrt(1.0 - tf.pow(beta2, t)) / (1.0 - tf.pow(beta1, t))  # α√(1 − β2^t)/(1 − β1^t)
        for g, W in grads_and_vars:
            m, s = self.m[W.ref()], self.s[W.ref()]
            # (1 − β) as a Python float, as Keras computes it: the same float32 constant, the same rounding.
            m.assign_add((g - m) * (1.0 - self.beta1))  # m ← m + (1 − β1)(g − m)
            s.assign_add((tf.square(g) - s) * (1.0 - self.beta2))  # s ← s + (1 − β2)(g² − s)
            W.assign_sub(m * alpha_t / (tf.sqrt(s) + self.epsilon))  # W ← W − α_t·m / (√s + ε)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.kind: cls for cls in (SGD, Momentum, Nesterov, Adam)}


def make_optimizer(config: TrainConfig, params: Sequence[tf.Variable]) -> Optimizer:
    """The optimizer train.optimizer names, for `params`; build it under the training device, so that its
    slots live there."""
    return OPTIMIZERS[config.optimizer](config, params)


def _slot(param: tf.Variable, kind: str) -> tf.Variable:
    """A zero slot shaped like `param`, named after it (v_W1, m_W0_2, ...)."""
    return tf.Variable(tf.zeros_like(param), trainable=False, name=f"{kind}_{param.name.split(':')[0]}")
