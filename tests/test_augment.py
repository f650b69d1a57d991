"""Random shifts of the training images: exact moves, zero fill, determinism, XLA, and none at k = 0."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnist_mlp.augment import epoch_shifts, shift_images
from mnist_mlp.config import Config
from mnist_mlp.device import cpu_device
from mnist_mlp.training import EpochProgress, Trainer, train_epoch
from tests.conftest import synthetic_mnist


def digits(n: int = 6, seed: int = 0) -> np.ndarray:
    """[n, 784] uint8 images with ink everywhere, so every border row and column matters."""
    return np.random.default_rng(seed).integers(1, 256, (n, 784), dtype=np.uint8)


def shifted_by_numpy(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The reference: the 28×28 image moved dx right and dy down, zeros where nothing moved in."""
    out = np.zeros((28, 28), image.dtype)
    src = image.reshape(28, 28)
    for i in range(28):
        for j in range(28):
            if 0 <= i - dy < 28 and 0 <= j - dx < 28:
                out[i, j] = src[i - dy, j - dx]
    return out.reshape(784)


def test_a_single_pixel_moves_by_the_known_amount():
    image = np.zeros((1, 784), np.uint8)
    image[0, 10 * 28 + 12] = 200  # row 10, column 12
    out = shift_images(tf.constant(image), tf.constant([2]), tf.constant([-1])).numpy().reshape(28, 28)
    assert out[9, 14] == 200 and np.count_nonzero(out) == 1  # one row up, two columns right


def test_shifts_equal_the_reference_with_zero_fill_and_keep_the_dtype():
    images = digits()
    dx, dy = [2, -2, 0, 1, -1, 2], [1, 0, -2, 2, -1, -2]
    out = shift_images(tf.constant(images), tf.constant(dx), tf.constant(dy))
    assert out.dtype == tf.uint8
    for b in range(len(images)):
        np.testing.assert_array_equal(out.numpy()[b], shifted_by_numpy(images[b], dx[b], dy[b]))


def test_a_zero_shift_leaves_images_bit_identical():
    images = digits()
    zero = tf.zeros([len(images)], tf.int32)
    np.testing.assert_array_equal(shift_images(tf.constant(images), zero, zero).numpy(), images)


def test_the_shift_compiles_under_xla_with_the_same_result():
    images, d = tf.constant(digits()), tf.constant([[2, -1, 0, 1, -2, 2], [0, 1, -2, 2, -1, 1]])
    eager = shift_images(images, d[0], d[1])
    xla = tf.function(lambda x, d: shift_images(x, d[0], d[1]), jit_compile=True)(images, d)
    np.testing.assert_array_equal(xla.numpy(), eager.numpy())


def test_shifts_are_a_deterministic_draw_from_seed_and_epoch_covering_minus_k_to_k():
    k = 2
    first = epoch_shifts(k, seed=0, epoch=tf.constant(1), count=6000).numpy()
    assert first.shape == (2, 6000) and first.dtype == np.int32
    np.testing.assert_array_equal(first, epoch_shifts(k, seed=0, epoch=tf.constant(1), count=6000).numpy())
    assert set(np.unique(first)) == set(range(-k, k + 1))  # every value in −k…k, nothing outside
    assert not np.array_equal(first, epoch_shifts(k, seed=0, epoch=tf.constant(2), count=6000).numpy())
    assert not np.array_equal(first, epoch_shifts(k, seed=1, epoch=tf.constant(1), count=6000).numpy())


def make_trainer(config: Config) -> Trainer:
    return Trainer(config, synthetic_mnist().train, cpu_device(config.runtime))


def trained_weights(config: Config, epochs: int = 2) -> list[np.ndarray]:
    trainer = make_trainer(config)
    for epoch in range(1, epochs + 1):
        train_epoch(trainer, EpochProgress(epoch))
    return [v.numpy() for v in trainer.model.variables_in_order]


def graph_ops(trainer: Trainer) -> set[str]:
    args = (trainer.images, trainer.labels, trainer.epoch_order(1), 0, 1, 0.1, 1)
    args = [tf.constant(a) if isinstance(a, int | float) else a for a in args]
    graph = trainer.train_steps.get_concrete_function(*args).graph
    ops = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:  # the while loop's body
        ops |= {node.op for node in function.node_def}
    return ops


def test_k_zero_puts_no_augmentation_in_the_graph_and_k_two_does(tiny_config):
    augmentation = {"BatchMatMulV2", "StatelessRandomUniformIntV2"}  # the shift's matmuls, the draw of shifts
    assert not augmentation & graph_ops(make_trainer(tiny_config))
    assert augmentation <= graph_ops(make_trainer(tiny_config.replace(**{"train.augment_shift": 2})))


def test_augmented_training_is_reproducible_and_differs_from_plain(tiny_config):
    shifted = tiny_config.replace(**{"train.augment_shift": 2})
    first, again, plain = trained_weights(shifted), trained_weights(shifted), trained_weights(tiny_config)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], plain[0])


def test_augmented_training_under_xla_applies_the_same_shifts(tiny_config):
    """XLA reorders float arithmetic, so the weights agree closely rather than bitwise; other shifts would
    move them far apart."""
    config = tiny_config.replace(**{"train.augment_shift": 3})
    plain = trained_weights(config, epochs=1)
    xla = trained_weights(config.replace(**{"runtime.jit_compile": True}), epochs=1)
    for a, b in zip(plain, xla, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    other_seed = trained_weights(config.replace(**{"seed": 1}), epochs=1)
    assert not np.allclose(plain[0], other_seed[0], rtol=1e-4, atol=1e-5)


def test_evaluation_never_shifts(tiny_config):
    """Validation and test go through evaluate(), which sees the images as given whatever augment_shift is."""
    plain, shifted = make_trainer(tiny_config), make_trainer(tiny_config.replace(**{"train.augment_shift": 2}))
    a, b = plain.evaluate(plain.images, plain.labels), shifted.evaluate(shifted.images, shifted.labels)
    assert a.loss == b.loss and np.array_equal(a.predictions, b.predictions)
