"""How far two correct float32 devices may differ: a bound for every tensor of a training step and an evaluation.

The GPU's self-check (gpu_check.py) runs the same step on the GPU and on the CPU from the same float32
inputs and compares every tensor. Each device's float32 result differs from the exact one by its rounding
errors, so the two may differ by twice the bound A of that rounding; anything more is a wrong result.
The bounds are computed here, in float64 NumPy, alongside the exact values, line by line beside the
formulas of model.py and gradients.py (rows for samples, as there).

The rounding of one float32 operation is at most u = 2^-24 of its result (u: the unit roundoff). A sum of
n terms x_i, in any order, is off by at most γ_n Σ|x_i| (Higham, Accuracy and Stability of Numerical
Algorithms, 2002, §3.1), where the worst case γ_n = n·u / (1 − n·u) grows with n. Real rounding errors are
not all of one sign: modelled as independent with mean zero, they exceed
    γ̃_n(λ) Σ|x_i|,   γ̃_n(λ) = exp(λ√n·u + n·u² / (1 − u)) − 1 ≈ λ√n·u,
only with probability below 2n·exp(−λ²(1 − u)²/2) (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1).
With λ = 10 that is below 1e-18 for any sum here (n ≤ 10,000), so a check comparing ~1e6 sums raises no
false alarm in 1e12 checks; γ̃ is used where it is the smaller, for sums of more than λ² = 100 terms. A
product of matrices is such a sum per entry: its error is at most γ(n)·(|A| |B|), |A| |B| the product of the
absolute values. An error already in an input passes on linearly: Δ(AB) = ΔA·B + A·ΔB.

TensorFlow's exp and log, and a GPU's, are not correctly rounded: TRANSCENDENTAL_ULPS allows each 64 units
in the last place (Metal's fast-math exp and log are specified to a few; 64 is still 1/15 of the smallest
fault the check must catch, a relative 1e-3). Elementwise arithmetic rounds once per operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from mnist_mlp.device import CPU

U = 2.0**-24  # float32's unit roundoff: a rounding is at most this relative error
LAMBDA = 10.0  # the probabilistic bound's λ (above): failure probability below 1e-18 per sum
TRANSCENDENTAL_ULPS = 64  # exp and log: allowed error in units of the last place (TensorFlow's, a GPU's)
UPDATE_ULPS = 8  # an optimizer's update: at most 8 roundings (Adam's), each of a term no larger than |W| + |W'|


def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A B in float64, by TensorFlow on the CPU: NumPy's multithreaded BLAS stalls beside TensorFlow's own busy
    thread pools (50 images times W^1 took 57 ms there, against 1.2 ms here)."""
    with tf.device(CPU):
        return tf.linalg.matmul(A, B).numpy()


def gamma(n: int) -> float:
    """The relative error bound of a float32 sum of n terms: the worst case or Higham & Mary's, the smaller."""
    worst = n * U / (1 - n * U)
    likely = math.expm1(LAMBDA * math.sqrt(n) * U + n * U * U / (1 - U))
    return min(worst, likely)


def product_bound(A: np.ndarray, A_err: np.ndarray | None, B: np.ndarray, B_err: np.ndarray | None) -> np.ndarray:
    """The error bound of the float32 product A B (both exact values) from inputs off by A_err and B_err:
    ΔA·|B| + |A|·ΔB carried over, plus the product's own rounding γ(n)·|A||B| (n: the inner dimension)."""
    abs_A, abs_B = np.abs(A), np.abs(B)
    bound = gamma(A.shape[-1]) * matmul(abs_A, abs_B)
    if A_err is not None:
        bound += matmul(A_err, abs_B)
    if B_err is not None:
        bound += matmul(abs_A, B_err)
    return bound


@dataclass
class Forward:
    """forward()'s tensors, exact (float64 from the float32 inputs), with their error bounds A."""

    Z: list[np.ndarray]  # Z^1 … Z^L: each layer before φ, the last the logits [M, K]
    H: list[np.ndarray]  # H^0 = Xᵀ, H^1 … H^{L−1} (rows for samples)
    A_Z: list[np.ndarray]
    A_H: list[np.ndarray]

    @property
    def logits(self) -> np.ndarray:
        return self.Z[-1]


def forward(
    W: list[np.ndarray], W0: list[np.ndarray], X: np.ndarray, A_W: list | None = None, A_W0: list | None = None
) -> Forward:
    """model.forward in float64, with bounds: X is the float32 Xᵀ as the device computes it (to_rows),
    A_W and A_W0 the weights' own bounds (None: exact, as they are when both devices hold the same)."""
    A_W, A_W0 = A_W or [None] * len(W), A_W0 or [np.zeros(b.shape) for b in W0]
    H, A_H = [X], [U * np.abs(X)]  # to_rows: q · (1/255) in float32, one rounding
    Z, A_Z = [], []
    for layer, (w, b, a_w, a_b) in enumerate(zip(W, W0, A_W, A_W0, strict=True)):
        P = matmul(H[-1], w)  # (W^l)ᵀ H^{l−1}, transposed
        if layer == 0:  # A_X = u|X|: its share u|X||W| joins the product's own γ(n)|X||W| (one product fewer)
            A_P = product_bound(X, None, w, a_w) * (1 + U / gamma(X.shape[-1]))
        else:
            A_P = product_bound(H[-1], A_H[-1], w, a_w)
        Z.append(P + b.T)  # Z^l = (W^l)ᵀ H^{l−1} + W0^l: one more rounding
        A_Z.append(A_P + a_b.T + U * (np.abs(P) + np.abs(b.T)))
        if layer < len(W) - 1:
            H.append(np.maximum(Z[-1], 0.0))  # H^l = φ(Z^l): ReLU is exact, |Δφ| ≤ |ΔZ|, and 0 where Z < −A_Z
            A_H.append(np.where(Z[-1] >= -A_Z[-1], A_Z[-1], 0.0))
    return Forward(Z, H, A_Z, A_H)


@dataclass
class Output:
    """log σ(logits), ŷ = σ(logits) and the per-image losses −log ŷ_y, exact, with their bounds A."""

    log_y_hat: np.ndarray
    A_log_y_hat: np.ndarray
    y_hat: np.ndarray
    A_y_hat: np.ndarray
    losses: np.ndarray  # [M]
    A_losses: np.ndarray


def output(fwd: Forward, labels: np.ndarray) -> Output:
    """model.log_softmax, model.softmax and model.cross_entropy's terms, with bounds."""
    z, A_z = fwd.logits, fwd.A_Z[-1]
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))  # logsumexp(z) = m + log Σ exp(z − m)
    y_hat = np.exp(z - lse)
    # |Δlogsumexp| ≤ Σ_k ŷ_k |Δz_k| carried over; its own: exp and log (TRANSCENDENTAL_ULPS each), the sum of K
    # positive terms, the subtraction z − m and the addition of m (one rounding each).
    ulps = TRANSCENDENTAL_ULPS * U
    A_lse = (y_hat * A_z).sum(axis=1, keepdims=True) + 2 * ulps + gamma(z.shape[1]) + U * (2 + np.abs(lse))
    log_y_hat = z - lse  # log ŷ = z − logsumexp(z): one more rounding
    A_log_y_hat = A_z + A_lse + U * np.abs(log_y_hat)
    A_y_hat = y_hat * np.expm1(A_log_y_hat + ulps)  # ŷ = exp(log ŷ): |Δŷ| ≤ ŷ (e^{Δ log ŷ + exp's own} − 1)
    rows = np.arange(len(labels))
    return Output(log_y_hat, A_log_y_hat, y_hat, A_y_hat, -log_y_hat[rows, labels], A_log_y_hat[rows, labels])


def loss_sum_bound(out: Output, rows: slice = slice(None)) -> float:
    """The bound of Σ_m −y_m·log ŷ_m (cross_entropy × M) over `rows`: the M terms' own bounds plus the sum's γ(M)
    (the K − 1 zero products per image add nothing), and the division by M and product by M (two roundings)."""
    losses, A_losses = out.losses[rows], out.A_losses[rows]
    total = float(np.abs(losses).sum())
    return float(A_losses.sum()) + gamma(len(losses)) * total + 2 * U * total


@dataclass
class Gradients:
    """backprop's ∇W^l and ∇W0^l per layer (with the L1 term when asked), exact, with their bounds A."""

    W: list[np.ndarray]
    W0: list[np.ndarray]
    A_W: list[np.ndarray]
    A_W0: list[np.ndarray]


def gradients(
    W: list[np.ndarray], W0: list[np.ndarray], fwd: Forward, out: Output, Y: np.ndarray, l1: float, l1_biases: bool
) -> Gradients:
    """gradients.backprop and with_l1 in float64, with bounds, beside each formula (transposed as there)."""
    M = Y.shape[0]
    grad_Z = (out.y_hat - Y) / M  # ∇ŷ = −(1/M)(y − ŷ): a subtraction and a division
    A_grad_Z = out.A_y_hat / M + 2 * U * np.abs(grad_Z)
    grad_W, grad_W0, A_grad_W, A_grad_W0 = [], [], [], []
    for layer in reversed(range(len(W))):
        H, A_H = fwd.H[layer], fwd.A_H[layer]
        grad_W0.append(grad_Z.sum(axis=0)[:, None])  # ∇W0^l = ∇Z^l · 1
        A_grad_W0.append((A_grad_Z.sum(axis=0) + gamma(M) * np.abs(grad_Z).sum(axis=0))[:, None])
        grad_W.append(matmul(H.T, grad_Z))  # ∇W^l = H^{l−1} (∇Z^l)ᵀ
        A_grad_W.append(product_bound(H.T, A_H.T, grad_Z, A_grad_Z))
        if layer > 0:
            grad_H = matmul(grad_Z, W[layer].T)  # ∇H^{l−1} = W^l ∇Z^l, transposed
            A_grad_H = product_bound(grad_Z, A_grad_Z, W[layer].T, None)
            # ∇Z^{l−1} = ∇H^{l−1} ⊙ ∂φ/∂H: exact where both devices see the same sign of Z^{l−1}; where Z is within
            # its bound of 0, one may pass ∇H and the other 0.
            Z, A_Z = fwd.Z[layer - 1], fwd.A_Z[layer - 1]
            undecided = np.abs(Z) <= A_Z
            grad_Z = grad_H * (Z > 0)
            A_grad_Z = np.where(undecided, np.abs(grad_H) + A_grad_H, A_grad_H * (Z > 0))
    grads = Gradients(grad_W[::-1], grad_W0[::-1], A_grad_W[::-1], A_grad_W0[::-1])
    if l1:  # g = ∇W + λ·sign(W): sign(W) and λ·(±1) are exact, the sum rounds once
        _add_l1(grads.W, grads.A_W, W, l1)
        if l1_biases:
            _add_l1(grads.W0, grads.A_W0, W0, l1)
    return grads


def _add_l1(grads: list[np.ndarray], bounds: list[np.ndarray], params: list[np.ndarray], l1: float) -> None:
    for i, w in enumerate(params):
        grads[i] = grads[i] + l1 * np.sign(w)
        bounds[i] = bounds[i] + U * np.abs(grads[i])


def update_bound(
    before: np.ndarray, after: np.ndarray, after_low: np.ndarray, after_high: np.ndarray, rate_error: float = 0.0
) -> np.ndarray:
    """The bound of a variable after an optimizer's update, from the update run exactly (float64) with the
    gradient g, g − A_g and g + A_g: the farther of the two ends (the updates are monotone in g per element,
    so the ends bound every g in between); plus the update's own roundings; plus, for a step size computed in
    float32 with a relative error `rate_error` (Adam's α_t), that share of the step."""
    carried = np.maximum(np.abs(after_low - after), np.abs(after_high - after))
    return carried + UPDATE_ULPS * U * (np.abs(before) + np.abs(after)) + rate_error * np.abs(after - before)


def adam_rate_error(beta1: float, beta2: float, t: float) -> float:
    """The relative error of Adam's α_t = α·√(1 − β2^t) / (1 − β1^t) in float32, at step t. β^t comes from a pow
    (TRANSCENDENTAL_ULPS) and loses β^t / (1 − β^t) of its digits in 1 − β^t (a thousand for β2 = 0.999 at
    t = 1); the square root halves that share; five more roundings."""

    def cancelled(beta: float) -> float:
        return (TRANSCENDENTAL_ULPS + 1) * U * beta**t / (1 - beta**t)

    return cancelled(beta2) / 2 + cancelled(beta1) + 5 * U
