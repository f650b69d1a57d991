"""Hand-written backpropagation: the report's formulas, not tf.GradientTape.

In the report's notation, columns for samples (see model.py). For the mean cross-entropy of a mini-batch of M
images:
  ∇ŷ = −(1/M)(y − ŷ)                      gradient at the output logits, [K × M]
  ∇W0^l = ∇Z^l · 1                         sum over the batch
  ∇W^l = H^{l−1} (∇Z^l)ᵀ                   [N_{l−1} × N_l]
  ∇H^{l−1} = W^l ∇Z^l                      [N_{l−1} × M]
  ∇Z^{l−1} = ∇H^{l−1} ⊙ ∂φ(H^{l−1})/∂H^{l−1}  ReLU: 1 where H > 0, else 0 (model.Activation.derivative)
and the L1 term λ·sign(W) is added to each weight gradient. The code holds ∇Z and ∇H transposed, rows for
samples, as forward() holds H, and computes each formula transposed: (∇H^{l−1})ᵀ = (∇Z^l)ᵀ (W^l)ᵀ. The
gradients of the weights come out as the report has them. The tests check all of it against
tf.GradientTape and finite differences.
"""

from __future__ import annotations

import tensorflow as tf

from mnist_mlp.model import MLP, softmax


def backprop(model: MLP, H: list[tf.Tensor], logits: tf.Tensor, y: tf.Tensor) -> tuple[list, list]:
    """Gradients (∇W, ∇W0), one per layer in order, of the mean cross-entropy, from forward()'s H and logits."""
    M = tf.cast(tf.shape(y)[0], logits.dtype)
    y_hat = softmax(logits)  # ŷ = σ(logits)
    grad_Z = (y_hat - y) / M  # ∇ŷ = −(1/M)(y − ŷ), transposed: [M × K]
    grad_W, grad_W0 = [], []
    for layer in reversed(range(len(model.W))):
        grad_W0.append(tf.transpose(tf.reduce_sum(grad_Z, axis=0, keepdims=True)))  # ∇W0^l = ∇Z^l · 1
        grad_W.append(tf.matmul(H[layer], grad_Z, transpose_a=True))  # ∇W^l = H^{l−1} (∇Z^l)ᵀ
        if layer > 0:
            grad_H = tf.matmul(grad_Z, model.W[layer], transpose_b=True)  # ∇H^{l−1} = W^l ∇Z^l, transposed
            grad_Z = grad_H * model.activation.derivative(H[layer])  # ⊙ ∂φ(H)/∂H, ReLU: 1 where H > 0
    return grad_W[::-1], grad_W0[::-1]


def with_l1(grads: list[tf.Tensor], params: list[tf.Variable], l1: float | tf.Tensor) -> list[tf.Tensor]:
    """Add the L1 regularizer's gradient: ∇W + λ·∂R/∂W with ∂R/∂W = sign(W)."""
    return [g + l1 * tf.sign(w) for g, w in zip(grads, params, strict=True)]


def loss_gradients(
    model: MLP, H: list[tf.Tensor], logits: tf.Tensor, y: tf.Tensor, l1: float | tf.Tensor, l1_biases: bool
) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """Gradients of cross-entropy + λ‖W‖₁ (biases regularized only if l1_biases).

    With λ = 0 (a Python number) the sign terms are left out of the graph: they would only add zeros,
    at a cost of about 5% of a training step.
    """
    grad_W, grad_W0 = backprop(model, H, logits, y)
    if isinstance(l1, int | float) and l1 == 0:
        return grad_W, grad_W0
    grad_W = with_l1(grad_W, model.W, l1)
    if l1_biases:
        grad_W0 = with_l1(grad_W0, model.W0, l1)
    return grad_W, grad_W0
