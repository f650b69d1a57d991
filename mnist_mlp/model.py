"""The multilayer perceptron, in the report's notation.

The report's columns are samples: X is [N, M] (N = 784 pixels, M images), H^l is [N_l, M], W^l is
[N_{l-1}, N_l] and the bias W0^l is [N_l, 1]. Forward: H^l = φ((W^l)ᵀ H^{l-1} + W0^l) with φ = ReLU, and
ŷ = σ(logits) with σ the softmax over the K = 10 classes.

The code holds the transposes of X, H^l, y and the logits: rows are samples (X is passed as Xᵀ [M, N], each
H[l] is (H^l)ᵀ [M, N_l]), and each line computes its formula transposed, e.g. (H^l)ᵀ = φ((H^{l-1})ᵀ W^l +
(W0^l)ᵀ). The weights are stored exactly as the report has them. Why: on the CPU a matrix product whose
left operand is transposed, as (W^l)ᵀ H^{l-1} is with columns for samples, ran slower; with XLA an epoch
took about 1.3x as long (docs/performance.md). Each activation φ is written beside its derivative (`Activation`),
which gradients.py uses, so another activation is one more entry in ACTIVATIONS. Biases are added after
the matmul, never as a fused BiasAdd (a fused MatMul+BiasAdd+ReLU has given wrong results on Metal in
graph mode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from mnist_mlp.config import ModelConfig
from mnist_mlp.data import N_CLASSES

N_PIXELS = 28 * 28


@dataclass(frozen=True)
class Activation:
    """A hidden layer's φ beside its derivative. The derivative is a function of the layer's output H (what
    forward() keeps for backprop): the report's ∂φ(H)/∂H, elementwise."""

    name: str
    fn: Callable[[tf.Tensor], tf.Tensor]
    derivative: Callable[[tf.Tensor], tf.Tensor]


RELU = Activation(
    "relu",
    fn=lambda Z: tf.nn.relu(Z),  # φ(Z) = max(0, Z) (looked up when traced: the stand-in GPU wraps it, standin.py)
    derivative=lambda H: tf.cast(H > 0, H.dtype),  # ∂φ(H)/∂H = 1 where H > 0, else 0
)
ACTIVATIONS = {activation.name: activation for activation in (RELU,)}


class MLP(tf.Module):
    """Raw tf.Variables: W[l] and W0[l] hold the report's W^{l+1} and W_0^{l+1}."""

    def __init__(self, config: ModelConfig, seed: int, dtype: tf.DType = tf.float32):
        super().__init__(name="mlp")
        self.sizes = sizes = layer_sizes(config)
        self.W = [
            tf.Variable(initial_weights(config, n_in, n_out, seed=(seed, layer), dtype=dtype), name=f"W{layer + 1}")
            for layer, (n_in, n_out) in enumerate(itertools.pairwise(sizes))
        ]
        self.W0 = [tf.Variable(tf.zeros([n, 1], dtype), name=f"W0_{layer + 1}") for layer, n in enumerate(sizes[1:])]
        self.activation = RELU  # φ of the hidden layers, as in the report

    @property
    def variables_in_order(self) -> list[tf.Variable]:
        """W1, W0_1, W2, W0_2, ...: a fixed order for checkpoints and comparisons."""
        return [v for pair in zip(self.W, self.W0, strict=True) for v in pair]


def layer_sizes(config: ModelConfig) -> list[int]:
    """N_0 = 784 pixels, the hidden layers' sizes, K = 10 classes."""
    return [N_PIXELS, *config.hidden, N_CLASSES]


def initial_weights(config: ModelConfig, n_in: int, n_out: int, seed: tuple[int, int], dtype: tf.DType) -> tf.Tensor:
    """A [n_in, n_out] draw from the configured scheme; stateless and on the CPU, so every device and
    every run with the same seed starts from the same weights (Metal lacks kernels for some random ops)."""
    with tf.device("/CPU:0"):
        shape = [n_in, n_out]
        if config.init == "uniform":  # the report's first try: uniform(0, scale)
            return tf.random.stateless_uniform(shape, seed, 0.0, config.init_scale, dtype=dtype)
        scale = config.init_scale if config.init == "normal" else (2.0 / n_in) ** 0.5  # he: sqrt(2 / fan_in)
        return tf.random.stateless_normal(shape, seed, 0.0, scale, dtype=dtype)


def to_rows(images: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """uint8 images [M, 28, 28] or [M, 784] to Xᵀ: [M, 784] pixels scaled to [0, 1], a row per image."""
    flat = tf.reshape(images, [-1, N_PIXELS])
    return tf.cast(flat, dtype) * tf.constant(1.0 / 255.0, dtype)


def one_hot_rows(labels: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Digits [M] to yᵀ: [M, K], a row per image."""
    return tf.one_hot(tf.cast(labels, tf.int32), N_CLASSES, dtype=dtype)


def forward(model: MLP, X: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
    """From Xᵀ (to_rows), return the activations [(H^0)ᵀ = Xᵀ, (H^1)ᵀ, ..., (H^{L-1})ᵀ] (kept for backprop)
    and the output logits, transposed: [M, K]."""
    H = [X]
    for W, W0 in zip(model.W[:-1], model.W0[:-1], strict=True):
        Z = tf.matmul(H[-1], W) + tf.transpose(W0)  # Z^l = (W^l)ᵀ H^{l-1} + W0^l, transposed
        H.append(model.activation.fn(Z))  # H^l = φ(Z^l)
    logits = tf.matmul(H[-1], model.W[-1]) + tf.transpose(model.W0[-1])  # (W^L)ᵀ H^{L-1} + W0^L, transposed
    return H, logits


def active_units(H: list[tf.Tensor]) -> list[tf.Tensor]:
    """For each hidden layer of forward()'s activations, whether each unit fired (H^l > 0) for at least one
    image of the batch: [N_l] bool. OR-ed over a split's batches, the units it leaves False are dead ReLUs."""
    return [tf.reduce_any(h > 0, axis=0) for h in H[1:]]


def log_softmax(logits: tf.Tensor) -> tf.Tensor:
    """log σ(logits) over the classes (the last axis), stable for any logits: z − logsumexp(z)."""
    return logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)


def softmax(logits: tf.Tensor) -> tf.Tensor:
    """ŷ = σ(logits), the class probabilities: exp of the stable log_softmax."""
    return tf.exp(log_softmax(logits))


def cross_entropy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of −Σ_k y[k] log ŷ[k]: (1/M) Σ_m Σ_k −y[m][k] log ŷ[m][k]."""
    M = tf.cast(tf.shape(y)[0], logits.dtype)
    return -tf.reduce_sum(y * log_softmax(logits)) / M


def l1_penalty(model: MLP, l1: float, biases: bool = False) -> tf.Tensor:
    """λ Σ_l ‖W^l‖₁ (and the biases' when asked): the regularizer R whose gradient is λ·sign(W)."""
    weights = model.W + (model.W0 if biases else [])
    return l1 * tf.add_n([tf.reduce_sum(tf.abs(w)) for w in weights])


def predict_proba(model: MLP, images: tf.Tensor) -> tf.Tensor:
    """Class probabilities [M, K] for uint8 images, one row per image."""
    _, logits = forward(model, to_rows(images, model.W[0].dtype))
    return softmax(logits)
