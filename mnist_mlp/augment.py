"""Data augmentation on the device: random whole-pixel shifts of the training images, zero filled.

Each image of a mini-batch moves by its own (dx, dy), drawn uniformly from −k…k, a stateless function of
(seed, epoch, step): a run stays reproducible, and resumable to the bit, like the shuffle. One draw per
compiled call covers the whole epoch (cheaper than a draw per step); each step slices its batch's part.
The shift itself is two one-hot matrix products per image, plain ops that also compile under XLA, run
inside the compiled training call. Validation and test images are never shifted.
"""

from __future__ import annotations

import tensorflow as tf

SIDE = 28
AUGMENT_STREAM = 1  # keeps the shifts' random stream apart from the shuffle's, which uses (seed, epoch)


def shift_images(images: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Images [B, 784] moved right by dx[b] and down by dy[b] whole pixels, zeros shifted in, same dtype.

    As matrices: X' = S_y X S_xᵀ with the one-hot shift S_d[i, j] = 1 where j = i − d (an all-zero row
    where i − d falls off the image: the zero fill). Each output pixel is one input pixel times 1, so the
    result is exact; on the CPU two small batched matmuls are ~10× faster than a per-image gather.
    """
    X = tf.reshape(tf.cast(images, tf.float32), [-1, SIDE, SIDE])  # [B, row, column]
    i = tf.range(SIDE)
    S_y = tf.one_hot(i[None, :] - dy[:, None], SIDE)  # [B, 28, 28]: row i of the result is row i − dy
    S_x = tf.one_hot(i[None, :] - dx[:, None], SIDE)  # column j of the result is column j − dx
    shifted = tf.matmul(tf.matmul(S_y, X), S_x, transpose_b=True)  # S_y X S_xᵀ
    # Rounded, not truncated, back to uint8: a product off by a rounding (on a GPU) still gives the pixel.
    return tf.cast(tf.round(tf.reshape(shifted, [-1, SIDE * SIDE])), images.dtype)


def epoch_shifts(k: int, seed: int, epoch: tf.Tensor, count: int) -> tf.Tensor:
    """[2, count] int32 (dx; dy), uniform in −k…k, for the images at positions 0…count − 1 of `epoch`'s order:
    a stateless draw from (seed, epoch), so the shifts of step s are a function of (seed, epoch, s)."""
    # Philox named, not "auto_select": that picks another generator under XLA, and the shifts would change.
    with tf.device("/CPU:0"):  # like the shuffle: Metal lacks kernels for some random ops
        key = tf.stack([seed, tf.cast(epoch, tf.int32)])
        key = tf.random.experimental.stateless_fold_in(key, AUGMENT_STREAM, alg="philox")
        return tf.random.stateless_uniform([2, count], key, minval=-k, maxval=k + 1, dtype=tf.int32, alg="philox")
