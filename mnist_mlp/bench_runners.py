"""The ways `mnist-mlp bench` trains the network: our fast path (also with XLA), our step path, a
tf.GradientTape loop, Keras `model.fit`, a hand-written NumPy loop and, when JAX is installed (the `bench`
extra), a JAX epoch: one `jax.jit`-compiled `lax.scan` over the batches with JAX's autodiff.

Each Runner starts from given initial weights, trains on the same batches (a fixed order of image indices)
and can report its weights, so the bench can time them alike and compare what they compute.
"""

from __future__ import annotations

from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from mnist_mlp.data import Split
from mnist_mlp.model import cross_entropy, forward, one_hot_rows, to_rows
from mnist_mlp.training import EpochProgress, Trainer, train_epoch

PIXEL_SCALE = np.float32(1.0 / 255.0)  # the same float32 factor model.to_rows multiplies by
IMPLEMENTATIONS = {  # key: label in the table and the plot
    "fast": "fast path",
    "fast-xla": "fast path + XLA",
    "step": "step path (1 step/call)",
    "tape": "GradientTape loop",
    "keras": "Keras model.fit",
    "numpy": "NumPy loop",
    "jax": "JAX jit(lax.scan)",
}


class Runner(Protocol):
    """One way of training: reset to the initial weights, run `steps` SGD steps (synchronised), read weights."""

    key: str  # a key of IMPLEMENTATIONS
    label: str

    def reset(self) -> None: ...

    def run(self, steps: int) -> None: ...

    def weights(self) -> list[np.ndarray]: ...


class TrainerRunner:
    """Base for our paths and the GradientTape loop: they train a Trainer's model on its on-device data."""

    key = label = ""

    def __init__(self, trainer: Trainer, order: np.ndarray, initial: list[np.ndarray]):
        self.trainer, self.initial = trainer, initial
        self.device = trainer.device.name
        self.lr = trainer.config.train.learning_rate
        with tf.device(self.device):
            self.order = tf.constant(order, tf.int32)
            self.batches = tf.unstack(tf.reshape(self.order, [-1, trainer.batch_size]))  # made before the clock

    def reset(self) -> None:
        for variable, value in zip(self.trainer.model.variables_in_order, self.initial, strict=True):
            variable.assign(value)

    def run(self, steps: int) -> None:
        with tf.device(self.device):  # calls, and the tracing in the first one, stay on the device
            self.train(steps)
        self.weights()  # reading the weights back waits for the last update

    def train(self, steps: int) -> None: ...

    def weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.trainer.model.variables_in_order]


class FastPath(TrainerRunner):
    """Trainer.train_steps: train.steps_per_call steps per compiled call, as `mnist-mlp train` runs them."""

    def __init__(self, trainer: Trainer, order: np.ndarray, initial: list[np.ndarray]):
        super().__init__(trainer, order, initial)
        self.key = "fast-xla" if trainer.device.jit_compile else "fast"
        self.label = IMPLEMENTATIONS[self.key]

    def train(self, steps: int) -> None:
        per_call = self.trainer.config.train.steps_per_call
        for first in range(0, steps, per_call):
            self.trainer.run_steps(self.order, first, min(per_call, steps - first), self.lr, epoch=1)


class TrainEpochs(TrainerRunner):
    """What `mnist-mlp train` runs for an epoch with the trainer's config: training.train_epoch, the shuffle of
    (seed, epoch 1) included, in calls of train.steps_per_call steps. `order` must be that shuffle."""

    key, label = "train", "mnist-mlp train epoch"

    def train(self, steps: int) -> None:
        if steps != self.trainer.steps_per_epoch:  # the loss check's few steps: the same compiled call
            self.trainer.run_steps(self.order, 0, steps, self.lr, epoch=1)
            return
        train_epoch(self.trainer, EpochProgress(epoch=1))


class StepPath(TrainerRunner):
    """Trainer.train_step: one compiled call per step, the batch gathered eagerly on the device."""

    key, label = "step", IMPLEMENTATIONS["step"]

    def train(self, steps: int) -> None:
        images, labels, lr = self.trainer.images, self.trainer.labels, tf.constant(self.lr)
        for batch in self.batches[:steps]:
            self.trainer.train_step(tf.gather(images, batch), tf.gather(labels, batch), lr)


class TapeLoop(TrainerRunner):
    """The usual custom loop: a compiled step whose gradients come from tf.GradientTape, not our backprop."""

    key, label = "tape", IMPLEMENTATIONS["tape"]

    def __init__(self, trainer: Trainer, order: np.ndarray, initial: list[np.ndarray]):
        super().__init__(trainer, order, initial)
        self.step = tf.function(self._step)

    def _step(self, images: tf.Tensor, labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        model = self.trainer.model
        X, y = to_rows(images), one_hot_rows(labels)
        with tf.GradientTape() as tape:
            loss = cross_entropy(forward(model, X)[1], y)
        params = model.W + model.W0
        for param, grad in zip(params, tape.gradient(loss, params), strict=True):
            param.assign_sub(lr * grad)
        return loss

    def train(self, steps: int) -> None:
        images, labels, lr = self.trainer.images, self.trainer.labels, tf.constant(self.lr)
        for batch in self.batches[:steps]:
            self.step(tf.gather(images, batch), tf.gather(labels, batch), lr)


class KerasFit:
    """Keras `model.fit` of the same network (Dense kernels are [n_in, n_out] like our W), plain SGD."""

    def __init__(
        self, device: str, sizes: list[int], train: Split, order: np.ndarray, batch: int, lr: float, initial, l1=0.0
    ):
        self.device, self.batch = device, batch
        self.initial = [w if w.shape[1:] != (1,) else w[:, 0] for w in initial]  # biases [n, 1] -> [n]
        # Batches in the bench's order, scaled as a Keras user would: float32 pixels in [0, 1].
        self.x = train.images.reshape(len(train), -1)[order].astype(np.float32) * PIXEL_SCALE
        self.y = train.labels[order].astype(np.int32)
        with tf.device(device):
            l1_term = keras.regularizers.L1(l1) if l1 else None  # λ‖W‖₁: gradient λ·sign(W), as ours
            self.model = keras.Sequential(
                [keras.Input([sizes[0]])]
                + [keras.layers.Dense(n, activation="relu", kernel_regularizer=l1_term) for n in sizes[1:-1]]
                + [keras.layers.Dense(sizes[-1], kernel_regularizer=l1_term)]
            )
            self.model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=lr),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        self.key = "keras"
        self.label = IMPLEMENTATIONS["keras"] + (" (XLA)" if self.model.jit_compile is True else "")

    def reset(self) -> None:
        self.model.set_weights(self.initial)

    def run(self, steps: int) -> None:
        n = steps * self.batch
        with tf.device(self.device):
            self.model.fit(self.x[:n], self.y[:n], batch_size=self.batch, epochs=1, shuffle=False, verbose=0)
        self.weights()  # reading the weights back waits for the last update

    def weights(self) -> list[np.ndarray]:
        return [w.reshape(-1, 1) if w.ndim == 1 else w for w in self.model.get_weights()]


class NumpyLoop:
    """A hand-written NumPy loop: the same forward pass, backprop formulas and update as gradients.py."""

    key, label = "numpy", IMPLEMENTATIONS["numpy"]

    def __init__(self, train: Split, order: np.ndarray, batch: int, lr: float, initial: list[np.ndarray], l1=0.0):
        self.images, self.labels = train.images.reshape(len(train), -1), train.labels.astype(np.intp)
        self.batches = order.reshape(-1, batch)
        self.lr, self.l1, self.initial = np.float32(lr), np.float32(l1), initial
        self.params: list[np.ndarray] = []

    def reset(self) -> None:
        self.params = [w.copy() for w in self.initial]

    def run(self, steps: int) -> None:
        W, W0 = self.params[0::2], self.params[1::2]
        for batch in self.batches[:steps]:
            numpy_sgd_step(W, W0, self.images[batch], self.labels[batch], self.lr, self.l1)

    def weights(self) -> list[np.ndarray]:
        return self.params


def numpy_sgd_step(
    W: list[np.ndarray], W0: list[np.ndarray], images: np.ndarray, labels: np.ndarray, lr, l1=0
) -> float:
    """One SGD step in place, columns are samples: forward, ∇Z = (ŷ − y)/M, backprop, W ← W − α(∇W + λ·sign(W))."""
    M = len(labels)
    H = [(images.astype(np.float32) * PIXEL_SCALE).T]  # X: [784, M]
    for w, w0 in zip(W[:-1], W0[:-1], strict=True):
        H.append(np.maximum(w.T @ H[-1] + w0, 0))  # H^l = φ((W^l)ᵀ H^{l−1} + W0^l)
    logits = W[-1].T @ H[-1] + W0[-1]
    z = logits - logits.max(axis=0, keepdims=True)
    y_hat = np.exp(z)
    y_hat /= y_hat.sum(axis=0, keepdims=True)
    columns = np.arange(M)
    loss = -np.log(y_hat[labels, columns]).mean()
    grad_Z = y_hat
    grad_Z[labels, columns] -= 1  # ŷ − y
    grad_Z /= M
    for layer in reversed(range(len(W))):
        grad_W0 = grad_Z.sum(axis=1, keepdims=True)  # ∇W0^l = ∇Z^l · 1
        grad_W = H[layer] @ grad_Z.T  # ∇W^l = H^{l−1} (∇Z^l)ᵀ
        if layer > 0:
            grad_Z = (W[layer] @ grad_Z) * (H[layer] > 0)  # ∇Z^{l−1} = W^l ∇Z^l ⊙ φ'(H^{l−1}), before W^l moves
        W[layer] -= lr * (grad_W + l1 * np.sign(W[layer]) if l1 else grad_W)
        W0[layer] -= lr * grad_W0
    return float(loss)


def numpy_loss(weights: list[np.ndarray], images: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of `weights` (W1, W0_1, ...) in float64: the one yardstick every implementation meets."""
    W, W0 = [w.astype(np.float64) for w in weights[0::2]], [w.astype(np.float64) for w in weights[1::2]]
    H = images.reshape(len(images), -1).astype(np.float64).T / 255.0
    for w, w0 in zip(W[:-1], W0[:-1], strict=True):
        H = np.maximum(w.T @ H + w0, 0)
    logits = W[-1].T @ H + W0[-1]
    z = logits - logits.max(axis=0, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=0, keepdims=True))
    return float(-log_p[labels.astype(np.intp), np.arange(len(labels))].mean())


class JaxScan:
    """The epoch as a JAX user writes it for speed: one `jax.jit` call, a `lax.scan` over the batches, gradients
    by `jax.value_and_grad`, images uint8 on the device and scaled per batch, W ← W − α(∇W + λ·sign(W)).

    Rows are samples here (x @ W), as JAX code has it; the weights are ours, biases [n, 1] stored as [n].
    Raises ImportError without JAX.
    """

    key, label = "jax", IMPLEMENTATIONS["jax"]

    def __init__(self, train: Split, order: np.ndarray, batch: int, lr: float, initial, l1: float = 0.0):
        import jax
        import jax.numpy as jnp

        self.jax, self.initial = jax, initial
        images, labels = jnp.asarray(train.images.reshape(len(train), -1)), jnp.asarray(train.labels.astype(np.int32))
        self.batches = jnp.asarray(order.reshape(-1, batch).astype(np.int32))
        self.lr = jnp.float32(lr)
        pixel_scale = jnp.float32(PIXEL_SCALE)

        def loss(params, x, y):
            h = x.astype(jnp.float32) * pixel_scale
            for i, (w, b) in enumerate(params):
                h = h @ w + b
                if i < len(params) - 1:
                    h = jax.nn.relu(h)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))

        def step(params, batch):
            value, grads = jax.value_and_grad(loss)(params, images[batch], labels[batch])
            params = [
                (w - self.lr * (gw + l1 * jnp.sign(w) if l1 else gw), b - self.lr * gb)
                for (w, b), (gw, gb) in zip(params, grads, strict=True)
            ]
            return params, value

        self.epoch = jax.jit(lambda params, batches: jax.lax.scan(step, params, batches))
        self.params: list = []

    def reset(self) -> None:
        jnp = self.jax.numpy
        self.params = [
            (jnp.asarray(w), jnp.asarray(b[:, 0])) for w, b in zip(self.initial[0::2], self.initial[1::2], strict=True)
        ]

    def run(self, steps: int) -> None:
        self.params, _ = self.epoch(self.params, self.batches[:steps])  # a new length compiles once more
        self.jax.block_until_ready(self.params)

    def weights(self) -> list[np.ndarray]:
        return [np.asarray(a).reshape(-1, 1) if a.ndim == 1 else np.asarray(a) for pair in self.params for a in pair]
