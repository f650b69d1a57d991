"""Training: mini-batch steps with the hand-written gradients and an optimizer's update, many steps per compiled call.

The per-step cost of a network this small is overhead, not arithmetic, so one `tf.function` call runs
`train.steps_per_call` training steps in a graph loop over mini-batches of data already on the device. The
images stay uint8 there; each batch is scaled to [0, 1] when it is gathered. The epoch's shuffle is a
stateless function of (seed, epoch), so a run is reproducible and resumable to the bit on the CPU.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from mnist_mlp import native_stderr_silenced
from mnist_mlp.augment import epoch_shifts, shift_images
from mnist_mlp.config import Config, TrainConfig
from mnist_mlp.data import N_CLASSES, Split
from mnist_mlp.device import Device, prepare_xla_cpu
from mnist_mlp.errors import ConfigError, GpuFailure, describe_error
from mnist_mlp.gradients import loss_gradients
from mnist_mlp.model import MLP, N_PIXELS, active_units, cross_entropy, forward, one_hot_rows, to_rows
from mnist_mlp.optimizers import make_optimizer
from mnist_mlp.results import Evaluation

# Images per matmul of an evaluation, one chunk at a time: the chunk's float32 pixels and activations (about 16 MB)
# are all it adds to memory. With 10,000 images, and chunks in flight together, an evaluation took 110-250 MB more at
# its peak and was no faster (docs/performance.md).
EVAL_CHUNK = 2000


@contextlib.contextmanager
def failures_of(device: Device) -> Iterator[None]:
    """A TensorFlow error raised by a GPU (a kernel it lacks, an internal error, its memory running out)
    as GpuFailure, which `runtime.device: auto` answers by going on on the CPU; the CPU's errors stay as
    they are."""
    try:
        yield
    except tf.errors.OpError as exc:
        if device.kind != "gpu":
            raise
        raise GpuFailure(device.name, describe_error(exc)) from exc


class Diverged(Exception):
    """The training loss became non-finite or exceeded train.divergence_loss."""

    def __init__(self, epoch: int, loss: float, learning_rate: float):
        super().__init__(epoch, loss, learning_rate)  # all in args, so it pickles across processes
        self.epoch, self.loss, self.learning_rate = epoch, loss, learning_rate

    def __str__(self) -> str:
        return (
            f"training diverged in epoch {self.epoch} (mean batch loss {self.loss:.4g}) at learning rate "
            f"{self.learning_rate:g}; lower train.learning_rate (or, with the step schedule, decay it sooner: "
            "train.lr_decay_epochs)"
        )


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The rate of 1-based `epoch`. step: α · decay^⌊(epoch − 1) / every⌋ (the report: halve every 2);
    cosine: α · ½(1 + cos(π (epoch − 1) / epochs)), from α in the first epoch towards 0 after the last."""
    if config.lr_schedule == "cosine":
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config.epochs))
    return config.learning_rate * config.lr_decay ** ((epoch - 1) // config.lr_decay_epochs)


def check_batches(config: TrainConfig, train_images: int) -> None:
    """An epoch needs at least one full batch."""
    if train_images < config.batch_size:
        raise ConfigError(
            f"{train_images} training images (after data.train_limit and data.validation_size) are fewer "
            f"than one batch of train.batch_size={config.batch_size}"
        )


def memory_needed(config: Config, images: int) -> int:
    """Bytes of the tensors a run holds at once, estimated from the layer sizes: the images on the device
    (uint8), the weights with their gradients and update temporaries (3 copies, float32), and the
    activations of the larger of a batch and an evaluation chunk with their gradients (3 copies)."""
    sizes = [N_PIXELS, *config.model.hidden, N_CLASSES]
    parameters = sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))
    activations = max(config.train.batch_size, EVAL_CHUNK) * sum(sizes)
    return images * N_PIXELS + 4 * 3 * (parameters + activations)


class Trainer:
    """Holds the model and its optimizer, the training data on the device and the compiled training and
    evaluation calls."""

    def __init__(self, config: Config, train: Split, device: Device):
        self.config, self.device = config, device
        self.batch_size = config.train.batch_size
        check_batches(config.train, len(train))
        self.steps_per_epoch = len(train) // self.batch_size  # the remainder waits for another shuffle
        with failures_of(device), tf.device(device.name):
            self.model = MLP(config.model, config.seed)
            self.optimizer = make_optimizer(config.train, self.params)  # its slots, if any, on the device too
            self.images, self.labels = self.to_device(train)
        if device.jit_compile:
            prepare_xla_cpu()
        # autograph=False: the loops are explicit tf.while_loops and every `if` tests a Python value, so there is
        # nothing for AutoGraph to rewrite; skipping its source transformation saves start-up time.
        self.train_steps = tf.function(self._train_steps, jit_compile=device.jit_compile, autograph=False)
        self.train_step = tf.function(self.step, autograph=False)  # one step per call: the slow path (bench, tests)
        self._shuffle = tf.function(self._epoch_order, autograph=False)
        self.evaluate_split = tf.function(
            self._evaluate_split,
            input_signature=[tf.TensorSpec([None, N_PIXELS], tf.uint8), tf.TensorSpec([None], tf.uint8)],
            autograph=False,
        )

    def to_device(self, split: Split) -> tuple[tf.Tensor, tf.Tensor]:
        """A split's uint8 images [N, 784] and labels [N] as tensors on the training device."""
        with failures_of(self.device), tf.device(self.device.name):
            return tf.constant(split.images.reshape(len(split), -1)), tf.constant(split.labels)

    @property
    def params(self) -> list[tf.Variable]:
        """What the optimizer updates: W^1 … W^L, then W0^1 … W0^L (the order of loss_gradients' results)."""
        return self.model.W + self.model.W0

    def forward_backward(self, X: tf.Tensor, y: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor, list]:
        """What a step computes before its update, from Xᵀ and yᵀ (rows): the activations H, the logits, the
        batch loss and the gradients g = ∇W + λ·sign(W) in `params` order (the GPU check compares them all)."""
        cfg = self.config.train
        H, logits = forward(self.model, X)
        loss = cross_entropy(logits, y)
        grad_W, grad_W0 = loss_gradients(self.model, H, logits, y, cfg.l1, cfg.l1_biases)
        return H, logits, loss, grad_W + grad_W0

    def step(self, images: tf.Tensor, labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        """One mini-batch: forward, hand-written backprop, the optimizer's update; returns the batch loss."""
        with tf.device(self.device.name):  # else, on a Mac with runtime.device=cpu, ops could land on the GPU
            X, y = to_rows(images), one_hot_rows(labels)
            _, _, loss, grads = self.forward_backward(X, y)
            # The optimizer's update, e.g. SGD's W ← W − α(∇W + λ·sign(W)) (optimizers.py)
            self.optimizer.apply_gradients(zip(grads, self.params, strict=True), lr)
            if self.config.train.loss_after_update:  # the report's way: the batch's loss again, on the new weights
                loss = cross_entropy(forward(self.model, X)[1], y)
            return loss

    def _train_steps(self, images, labels, order, first_step, count, lr, epoch) -> tf.Tensor:
        """`count` training steps from `first_step` of the epoch's order; returns the sum of their batch losses.
        With train.augment_shift = k > 0 each batch is shifted at random by up to k pixels (augment.py)."""
        k = self.config.train.augment_shift
        if k:  # a Python test: with 0 the graph has no augmentation ops at all
            shifts = epoch_shifts(k, self.config.seed, epoch, self.steps_per_epoch * self.batch_size)

        def one_step(step: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            batch = tf.slice(order, [step * self.batch_size], [self.batch_size])
            batch_images = tf.gather(images, batch)
            if k:
                d = tf.slice(shifts, [0, step * self.batch_size], [2, self.batch_size])
                batch_images = shift_images(batch_images, d[0], d[1])
            return step + 1, total + self.step(batch_images, tf.gather(labels, batch), lr)

        # An explicit while_loop, not `for step in tf.range(...)`: AutoGraph's range loop makes XLA treat the
        # bounds as compile-time constants and recompile for every new first_step (seconds per epoch).
        with tf.device(self.device.name):
            last = first_step + count
            _, total = tf.while_loop(lambda step, _: step < last, one_step, [first_step, tf.constant(0.0)])
            return total

    def epoch_order(self, epoch: int) -> tf.Tensor:
        """The epoch's shuffle of the training images: a stateless draw from (seed, epoch), on the training device."""
        order = self._shuffle(tf.constant(epoch, tf.int32))
        with tf.device(self.device.name):
            return tf.identity(order)

    def _epoch_order(self, epoch: tf.Tensor) -> tf.Tensor:
        """The images sorted by a random key each: Philox's 32-bit draws from (seed, epoch), of which the low 23
        bits, the bits a float32 uniform draw keeps (so the order is the one earlier versions drew as floats); ties
        in index order. Drawn as integers because XLA turns bits into floats differently (a test compares both);
        compiled, but not by XLA, whose sort took 2-3x as long here (about 22 ms against 7 ms per epoch)."""
        with tf.device("/CPU:0"):  # Metal lacks kernels for some random ops
            seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(epoch, tf.int64)])  # seeds < 2^63
            bits = tf.random.stateless_uniform(
                [self.images.shape[0]], seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
            )
            keys = tf.bitwise.bitwise_and(tf.bitcast(bits, tf.int32), 0x7FFFFF)
            return tf.argsort(keys, stable=True)  # int32

    def run_steps(self, order: tf.Tensor, first_step: int, count: int, lr: float, epoch: int) -> float:
        """Run `count` steps of `epoch` in one compiled call; returns the summed batch loss (a sync point)."""
        first_step, count, epoch = (tf.constant(n, tf.int32) for n in (first_step, count, epoch))
        args = (first_step, count, tf.constant(lr, tf.float32), epoch)
        xla_log_silenced = native_stderr_silenced() if self.device.jit_compile else contextlib.nullcontext()
        with xla_log_silenced, failures_of(self.device):
            return float(self.train_steps(self.images, self.labels, order, *args))

    def evaluate(self, images: tf.Tensor, labels: tf.Tensor) -> Evaluation:
        """Mean loss, predictions, confusion matrix and the hidden units ever active, over a split held on the
        device: one compiled call."""
        with failures_of(self.device):
            loss_sums, confusion, predictions, active = self.evaluate_split(images, labels)
            loss_sum = float(np.sum(loss_sums.numpy(), dtype=np.float64))  # the chunks' float32 sums, added here
            active = tuple(a.numpy() for a in active)
            predictions, confusion = predictions.numpy(), confusion.numpy().astype(np.int64)
        return Evaluation(loss_sum / int(labels.shape[0]), predictions, confusion, active)

    def _evaluate_split(self, images: tf.Tensor, labels: tf.Tensor) -> tuple:
        """Each chunk's summed loss, the confusion counts, the predicted digits and the active units, in chunks
        of EVAL_CHUNK images. Only float32, int32 and bool on the device: Metal has no float64."""
        n = tf.shape(labels)[0]
        chunks = (n + EVAL_CHUNK - 1) // EVAL_CHUNK

        def one_chunk(i, loss_sums, confusion, predictions, active):
            x, y = images[i * EVAL_CHUNK : (i + 1) * EVAL_CHUNK], labels[i * EVAL_CHUNK : (i + 1) * EVAL_CHUNK]
            Y = one_hot_rows(y)
            H, logits = forward(self.model, to_rows(x))
            predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
            M = tf.cast(tf.shape(y)[0], tf.float32)
            # Counts as Y Pᵀ of one-hot columns, from rows: exact in float32 (< 2^24 images), a kernel every device has.
            confusion += tf.matmul(Y, one_hot_rows(predicted), transpose_a=True, name="confusion")
            active = [a | chunk for a, chunk in zip(active, active_units(H), strict=True)]
            return (
                i + 1,
                loss_sums.write(i, cross_entropy(logits, Y) * M),
                confusion,
                predictions.write(i, predicted),
                active,
            )

        with tf.device(self.device.name):
            none_active = [tf.zeros([size], tf.bool) for size in self.model.sizes[1:-1]]
            loss_sums = tf.TensorArray(tf.float32, size=chunks)
            found = tf.TensorArray(tf.int32, size=chunks, infer_shape=False)
            start = [0, loss_sums, tf.zeros([N_CLASSES, N_CLASSES]), found, none_active]
            _, loss_sums, confusion, found, active = tf.while_loop(
                lambda i, *_: i < chunks, one_chunk, start, parallel_iterations=1
            )
            # Rounded, not truncated: a count off by a rounding (a GPU's float32 sum of ones) is still a count.
            return loss_sums.stack(), tf.cast(tf.round(confusion), tf.int32), found.concat(), active


@dataclass
class EpochProgress:
    """Where an epoch stands between compiled calls (also what an interrupted run checkpoints)."""

    epoch: int
    step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


def train_epoch(
    trainer: Trainer,
    state: EpochProgress,
    on_call: Callable[[EpochProgress, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> EpochProgress:
    """Run the rest of `state.epoch` in calls of train.steps_per_call steps; `state` is updated in place.

    Returns early (state.step < steps_per_epoch) when should_stop() turns true between calls.
    Raises Diverged when the running loss is not finite or above train.divergence_loss.
    """
    cfg = trainer.config.train
    lr = learning_rate(cfg, state.epoch)
    order = trainer.epoch_order(state.epoch)
    while state.step < trainer.steps_per_epoch and not should_stop():
        count = min(cfg.steps_per_call, trainer.steps_per_epoch - state.step)
        started = time.perf_counter()
        state.loss_sum += trainer.run_steps(order, state.step, count, lr, state.epoch)
        state.seconds += time.perf_counter() - started
        state.step += count
        running = state.loss_sum / state.step
        if not math.isfinite(running) or running > cfg.divergence_loss:
            raise Diverged(state.epoch, running, lr)
        if on_call:
            on_call(state, trainer.steps_per_epoch)
    return state
