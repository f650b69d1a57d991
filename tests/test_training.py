"""The compiled SGD: update rule, no retracing, reproducibility, fast path = step path, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp import training
from mnist_mlp.config import Config
from mnist_mlp.device import Device, available_gpu, cpu_device, require_gpu
from mnist_mlp.gradients import backprop
from mnist_mlp.model import forward, one_hot_rows, to_rows
from mnist_mlp.results import Evaluation, confusion_matrix, headline_metrics
from mnist_mlp.training import Diverged, EpochProgress, Trainer, learning_rate, train_epoch
from tests.conftest import synthetic_mnist


def make_trainer(config: Config, n_train: int = 200) -> Trainer:
    return Trainer(config, synthetic_mnist(n_train).train, cpu_device(config.runtime))


def weights(trainer: Trainer) -> list[np.ndarray]:
    return [v.numpy() for v in trainer.model.variables_in_order]


def run_epochs(trainer: Trainer, epochs: int) -> None:
    for epoch in range(1, epochs + 1):
        train_epoch(trainer, EpochProgress(epoch))


def test_learning_rate_halves_every_two_epochs_like_the_report():
    config = Config().replace(**{"train.learning_rate": 0.001, "train.lr_decay": 0.5, "train.lr_decay_epochs": 2})
    assert [learning_rate(config.train, e) for e in range(1, 7)] == [0.001, 0.001, 0.0005, 0.0005, 0.00025, 0.00025]


def test_cosine_schedule_falls_from_alpha_towards_zero_over_the_epochs():
    config = Config().replace(**{"train.learning_rate": 0.002, "train.lr_schedule": "cosine", "train.epochs": 4})
    rates = [learning_rate(config.train, e) for e in range(1, 5)]
    assert rates == pytest.approx([0.002, 0.002 * (1 + 0.5**0.5) / 2, 0.001, 0.002 * (1 - 0.5**0.5) / 2])
    assert learning_rate(config.train, 5) == pytest.approx(0.0, abs=1e-18)  # where it would be after the last


def test_sgd_step_applies_w_minus_alpha_gradient_plus_l1_sign(tiny_config):
    """The update is W − α(∇W + λ·sign(W)), the sign term computed here by hand, biases included on request."""
    l1, lr = 0.01, 0.5
    trainer = make_trainer(tiny_config.replace(**{"train.l1": l1, "train.l1_biases": True}))
    images, labels = trainer.images[:20], trainer.labels[:20]
    for bias in trainer.model.W0:  # non-zero biases so sign(W0) matters
        bias.assign(tf.fill(bias.shape, -0.05))
    H, logits = forward(trainer.model, to_rows(images))
    grad_W, grad_W0 = backprop(trainer.model, H, logits, one_hot_rows(labels))  # cross-entropy only
    params = trainer.model.W + trainer.model.W0
    expected = [
        p.numpy() - lr * (g.numpy() + l1 * np.sign(p.numpy())) for p, g in zip(params, grad_W + grad_W0, strict=True)
    ]
    trainer.train_step(images, labels, tf.constant(lr))
    for param, want in zip(params, expected, strict=True):
        np.testing.assert_allclose(param.numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {
            "train.optimizer": "adam",
            "train.learning_rate": 0.003,
            "train.lr_schedule": "cosine",
            "train.augment_shift": 2,
        },
    ],
)
def test_compiled_calls_do_not_retrace_across_steps_or_epochs(tiny_config, settings):
    """The rate, the epoch and the step are tensor arguments: a new value is not a new graph."""
    trainer = make_trainer(tiny_config.replace(**settings))
    run_epochs(trainer, 3)  # 10 steps an epoch in calls of 3, 3, 3, 1
    for _ in range(3):
        trainer.train_step(trainer.images[:20], trainer.labels[:20], tf.constant(0.1))
    trainer.evaluate(trainer.images, trainer.labels)
    trainer.evaluate(trainer.images[:37], trainer.labels[:37])
    assert trainer.train_steps.experimental_get_tracing_count() == 1
    assert trainer.train_step.experimental_get_tracing_count() == 1
    assert trainer.evaluate_split.experimental_get_tracing_count() == 1


def test_same_seed_same_config_gives_bit_identical_weights(tiny_config):
    first, second = make_trainer(tiny_config), make_trainer(tiny_config)
    run_epochs(first, 2)
    run_epochs(second, 2)
    assert all(np.array_equal(a, b) for a, b in zip(weights(first), weights(second), strict=True))
    other = make_trainer(tiny_config.replace(seed=1))
    run_epochs(other, 2)
    assert not np.array_equal(weights(first)[0], weights(other)[0])


@pytest.mark.parametrize("steps_per_call", [1, 4, 10])
def test_fast_path_without_xla_gives_the_same_weights_as_the_step_path(tiny_config, steps_per_call):
    config = tiny_config.replace(**{"train.steps_per_call": steps_per_call, "train.l1": 0.001})
    config = config.replace(**{"runtime.jit_compile": False})
    fast, slow = make_trainer(config), make_trainer(config)
    run_epochs(fast, 2)
    batch = config.train.batch_size
    for epoch in (1, 2):
        order = slow.epoch_order(epoch).numpy()
        lr = tf.constant(learning_rate(config.train, epoch), tf.float32)
        for step in range(slow.steps_per_epoch):
            index = order[step * batch : (step + 1) * batch]
            slow.train_step(tf.gather(slow.images, index), tf.gather(slow.labels, index), lr)
    assert all(np.array_equal(a, b) for a, b in zip(weights(fast), weights(slow), strict=True))


def test_each_epoch_visits_a_new_shuffle_of_all_images(tiny_config):
    trainer = make_trainer(tiny_config)
    first, second = trainer.epoch_order(1).numpy(), trainer.epoch_order(2).numpy()
    assert sorted(first.tolist()) == list(range(200)) and not np.array_equal(first, second)
    assert np.array_equal(first, trainer.epoch_order(1).numpy())


@pytest.mark.parametrize("seed", [0, 2**40 + 3])
def test_the_shuffle_is_the_order_of_earlier_versions_with_or_without_xla(tiny_config, seed):
    """Runs begun before the shuffle was compiled resume on the same batches: it sorts by the keys they drew as
    float32 uniforms. Under XLA the float draw differs (XLA turns the same Philox bits into other floats)."""
    config = tiny_config.replace(seed=seed)
    trainer = make_trainer(config)
    for epoch in (1, 7):
        with tf.device("/CPU:0"):
            keys = tf.random.stateless_uniform([200], seed=[seed, epoch])  # the earlier versions' draw
        expected = np.argsort(keys.numpy(), kind="stable")
        assert np.array_equal(trainer.epoch_order(epoch).numpy(), expected)
        under_xla = tf.function(trainer._epoch_order, jit_compile=True, autograph=False)
        assert np.array_equal(under_xla(tf.constant(epoch)).numpy(), expected)


def test_loss_after_update_reports_the_loss_on_the_new_weights(tiny_config):
    before, after = (make_trainer(tiny_config.replace(**{"train.loss_after_update": flag})) for flag in (False, True))
    loss_before = train_epoch(before, EpochProgress(1)).loss_sum
    loss_after = train_epoch(after, EpochProgress(1)).loss_sum
    assert all(np.array_equal(a, b) for a, b in zip(weights(before), weights(after), strict=True))
    assert loss_after < loss_before  # each batch's loss once its own step has been taken


def test_a_diverging_rate_stops_with_a_clear_message(tiny_config):
    trainer = make_trainer(tiny_config.replace(**{"train.learning_rate": 1e4}))
    with pytest.raises(Diverged, match="training diverged in epoch 1 .* lower train.learning_rate"):
        run_epochs(trainer, 2)


def test_stop_request_leaves_the_epoch_part_done(tiny_config):
    trainer = make_trainer(tiny_config)
    calls = []
    state = train_epoch(
        trainer, EpochProgress(1), should_stop=lambda: len(calls) >= 2, on_call=lambda s, n: calls.append(s.step)
    )
    assert calls == [3, 6] and state.step == 6 and state.seconds > 0


def test_confusion_matrix_and_per_digit_error():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, predicted)
    assert matrix[0].tolist()[:3] == [1, 1, 0] and matrix[1].tolist()[:3] == [0, 2, 1] and matrix.sum() == 6
    from mnist_mlp.results import Evaluation

    ev = Evaluation(0.0, predicted, matrix)
    assert ev.accuracy == pytest.approx(4 / 6)
    np.testing.assert_allclose(ev.per_digit_error[:3], [0.5, 1 / 3, 0.0])


def test_dead_units_are_the_units_zero_on_every_image_counted_across_chunks(tiny_config, monkeypatch):
    """A fixed small case: units made dead by a large negative bias, one unit alive only for the last image (in
    the last chunk), one only for the first (blank) image, the rest alive. Evaluation equals a direct NumPy
    forward pass and count."""
    monkeypatch.setattr(training, "EVAL_CHUNK", 7)  # 30 images in chunks of 7, 7, 7, 7, 2: the OR crosses chunks
    trainer = make_trainer(tiny_config)
    images = np.zeros((30, 784), np.uint8)
    images[:, :392] = np.arange(30, dtype=np.uint8)[:, None] * 8  # brighter down the set
    labels = np.arange(30, dtype=np.uint8) % 10
    W1, W01 = trainer.model.W[0], trainer.model.W0[0]
    top = np.full((392, 16), 0.001, np.float32)
    top[:, 9] = -0.001
    W1.assign(np.concatenate([top, np.full((392, 16), -1.0, np.float32)]))  # only the top half has ink
    bias = np.full((16, 1), 0.5, np.float32)
    bias[[2, 5, 11]] = -100.0  # dead: W1ᵀx ≤ 392 · 0.001 · 232/255 < 100 for every image
    bias[7] = -0.001 * 392 * 29 * 8 / 255 + 1e-3  # fires for the brightest (last) image only
    bias[9] = 1e-3  # fires for the blank first image only (its weights are negative)
    W01.assign(bias)
    evaluation = trainer.evaluate(tf.constant(images), tf.constant(labels))

    X = images.T.astype(np.float32) / 255
    H1 = np.maximum(0, W1.numpy().T @ X + W01.numpy())
    H2 = np.maximum(0, trainer.model.W[1].numpy().T @ H1 + trainer.model.W0[1].numpy())
    direct = [np.count_nonzero(~(H > 0).any(axis=1)) / H.shape[0] for H in (H1, H2)]
    assert evaluation.dead_units == pytest.approx(direct, abs=1e-12)
    assert evaluation.dead_units[0] == 3 / 16  # 2, 5 and 11; unit 7 is alive through the last chunk alone
    assert evaluation.active[0][7] and H1[7, -1] > 0 and not H1[7, :-1].any()
    assert evaluation.active[0][9] and H1[9, 0] > 0 and not H1[9, 1:].any()
    assert [a.shape for a in evaluation.active] == [(16,), (12,)]


def test_gpu_request_without_a_gpu_is_a_clear_error():
    if available_gpu():
        pytest.skip("this machine has a GPU")
    from mnist_mlp.errors import ConfigError

    with pytest.raises(ConfigError, match="runtime.device is gpu but TensorFlow lists no GPU"):
        require_gpu(Config().runtime.__class__(device="gpu"))


def test_mean_per_digit_error_averages_over_the_digits_the_split_holds():
    labels = np.array([0, 0, 1, 1, 2, 2])  # digits 3-9 absent, as in a small test slice
    predicted = np.array([0, 1, 1, 1, 2, 2])  # digit 0: one of two wrong
    evaluation = Evaluation(0.5, predicted, confusion_matrix(labels, predicted))
    assert evaluation.per_digit_error[:3].tolist() == [0.5, 0.0, 0.0] and not evaluation.per_digit_error[3:].any()
    assert headline_metrics(evaluation)["mean_per_digit_test_error"] == pytest.approx(0.5 / 3)


def test_evaluation_in_one_call_matches_a_numpy_count_across_chunk_boundaries(tiny_config, monkeypatch):
    monkeypatch.setattr(training, "EVAL_CHUNK", 64)  # 200 images: chunks of 64, 64, 64 and 8
    trainer = make_trainer(tiny_config)
    evaluation = trainer.evaluate(trainer.images, trainer.labels)
    _, logits = forward(trainer.model, to_rows(trainer.images))
    logits = logits.numpy().astype(np.float64).T  # [10, 200]: a column per image, as the report has it
    labels = trainer.labels.numpy().astype(np.int64)
    log_p = logits - np.log(np.exp(logits - logits.max(axis=0)).sum(axis=0)) - logits.max(axis=0)
    np.testing.assert_allclose(evaluation.loss, -log_p[labels, np.arange(200)].mean(), rtol=1e-6)
    np.testing.assert_array_equal(evaluation.predictions, logits.argmax(axis=0))
    np.testing.assert_array_equal(evaluation.confusion, confusion_matrix(labels, logits.argmax(axis=0)))


def test_xla_fast_path_matches_the_step_path_within_float_rounding_and_repeats_bit_for_bit(tiny_config):
    """XLA fuses and reorders float32 sums, so it is not bit-identical to the step path: after 2 epochs
    of SGD with L1 the weights agree to rtol 1e-4, atol 1e-5. Two XLA runs agree exactly."""
    config = tiny_config.replace(**{"train.l1": 0.001, "runtime.jit_compile": True})
    xla, again, steps = (
        make_trainer(config),
        make_trainer(config),
        make_trainer(tiny_config.replace(**{"train.l1": 0.001, "runtime.jit_compile": False})),
    )
    assert xla.device.jit_compile and not steps.device.jit_compile
    for trainer in (xla, again, steps):
        run_epochs(trainer, 2)
    for a, b, c in zip(weights(xla), weights(again), weights(steps), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_grappler_leaves_matmul_and_bias_unfused(tiny_config):
    """Biases are added after the matmul as an AddV2 of a [1, N] row, never a BiasAdd, and TensorFlow's graph
    optimizer (grappler, as the plain path runs it) does not fuse the two into a _FusedMatMul, the kernel that
    has given wrong results on Metal with ReLU."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    trainer = make_trainer(tiny_config.replace(**{"runtime.jit_compile": False}))
    step = trainer.train_step.get_concrete_function(trainer.images[:20], trainer.labels[:20], tf.constant(0.1))
    with step.graph.as_default():
        graph = tf.compat.v1.train.export_meta_graph(graph=step.graph)
    graph.collection_def["train_op"].node_list.value.extend(out.name for out in step.outputs)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), graph)
    ops = {node.op for node in optimized.node} | {n.op for f in optimized.library.function for n in f.node_def}
    assert "MatMul" in ops and "AddV2" in ops
    assert not {op for op in ops if "Fused" in op or op == "BiasAdd"}


# What the compiled calls may hold on a GPU (training.py says why): float32 arithmetic, int32 indices and counts,
# bool masks, resource and variant handles; uint8 images only moved, gathered and cast; int64 in constants only.
GPU_DTYPES = {"float32", "int32", "bool", "resource", "variant"}
UINT8_OPS = {"Placeholder", "Identity", "While", "Shape", "Reshape", "GatherV2", "StridedSlice", "Slice", "Cast"}


def test_the_graphs_a_gpu_runs_hold_only_dtypes_metal_has():
    """Metal has no float64 (among others): build the training loop (Adam, shifts, L1 on the biases, the loss
    after the update: every optional op) and the evaluation for a GPU, and read each op placed there."""
    config = Config().replace(
        **{
            "train.optimizer": "adam",
            "train.augment_shift": 2,
            "train.l1_biases": True,
            "train.loss_after_update": True,
        }
    )
    trainer = Trainer(config, synthetic_mnist().train, Device("/GPU:0", "gpu", False))  # placement: annotations only
    loop = trainer.train_steps.get_concrete_function(
        trainer.images, trainer.labels, trainer.epoch_order(1), *map(tf.constant, (0, 2, 0.1, 1))
    )
    evaluation = trainer.evaluate_split.get_concrete_function()
    found = set()
    for graph in (loop.graph.as_graph_def(), evaluation.graph.as_graph_def()):
        for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
            if "GPU" in node.device:
                for value in node.attr.values():
                    for dtype in [value.type] if value.type else value.list.type:
                        found.add((node.op, tf.dtypes.as_dtype(dtype).name))
    assert found, "no op was placed on the GPU"
    wrong = {(op, dtype) for op, dtype in found if dtype not in GPU_DTYPES}
    wrong -= {(op, "uint8") for op in UINT8_OPS} | {("Const", "int64")}
    assert wrong == set()
