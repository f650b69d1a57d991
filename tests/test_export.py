"""The SavedModel: both signatures, the in-process model's answers, atomic replacement, loading errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from mnist_mlp.config import ModelConfig
from mnist_mlp.errors import UserError
from mnist_mlp.export import SavedModelWriter, export_saved_model, load_saved_model, restore_saved_model
from mnist_mlp.model import MLP, predict_proba
from mnist_mlp.rundir import SAVED_MODEL, RunDir
from tests.conftest import child_env


@pytest.fixture(scope="module")
def model() -> MLP:
    """An untrained but non-trivial model: random weights and biases, so every term of the math counts."""
    mlp = MLP(ModelConfig(hidden=[100, 100]), seed=7)
    rng = np.random.default_rng(7)
    for bias in mlp.W0:
        bias.assign(rng.normal(0, 0.5, bias.shape).astype(np.float32))
    return mlp


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    return export_saved_model(model, tmp_path_factory.mktemp("run") / SAVED_MODEL)


def test_uint8_signature_matches_the_in_process_model(exported, model, images):
    serve = load_saved_model(exported).signatures["serving_default"]
    out = serve(images=tf.constant(images))
    expected = predict_proba(model, images).numpy()
    assert set(out) == {"probabilities", "digit"}
    assert out["probabilities"].dtype == tf.float32 and out["digit"].dtype == tf.int32
    # The same ops on the same weights: equal to float32 rounding (measured: bit-identical on the CPU).
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["digit"].numpy(), expected.argmax(axis=1))
    assert len(set(out["digit"].numpy())) > 1  # the random biases make the answers differ


def test_float_signature_takes_flat_pixels_in_unit_interval(exported, model, images):
    serve = load_saved_model(exported).signatures["serving_float"]
    pixels = tf.constant(images.reshape(len(images), 784) / 255.0, tf.float32)
    out = serve(pixels=pixels)
    expected = predict_proba(model, images).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)  # x/255 vs x·(1/255)
    np.testing.assert_array_equal(out["digit"].numpy(), expected.argmax(axis=1))


def test_signatures_declare_their_inputs(exported):
    signatures = load_saved_model(exported).signatures
    (images,) = signatures["serving_default"].structured_input_signature[1].values()
    (pixels,) = signatures["serving_float"].structured_input_signature[1].values()
    assert (images.name, images.dtype, images.shape.as_list()) == ("images", tf.uint8, [None, 28, 28])
    assert (pixels.name, pixels.dtype, pixels.shape.as_list()) == ("pixels", tf.float32, [None, 784])


def test_export_holds_copies_of_the_weights(tmp_path, images):
    """Training that goes on after an export does not change what was exported."""
    mlp = MLP(ModelConfig(hidden=[20]), seed=1)
    before = predict_proba(mlp, images).numpy()
    serving = load_saved_model(export_saved_model(mlp, tmp_path / SAVED_MODEL))
    mlp.W[0].assign(mlp.W[0] * 3.0)
    np.testing.assert_allclose(serving.signatures["serving_default"](images=images)["probabilities"], before, rtol=1e-6)


def test_re_export_replaces_the_model_and_leaves_no_temporary_folders(tmp_path, images):
    target = tmp_path / SAVED_MODEL
    first, second = MLP(ModelConfig(hidden=[20]), seed=1), MLP(ModelConfig(hidden=[30, 10]), seed=2)
    export_saved_model(first, target)
    export_saved_model(second, target)
    out = load_saved_model(target).signatures["serving_default"](images=images)
    np.testing.assert_allclose(out["probabilities"], predict_proba(second, images).numpy(), rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [SAVED_MODEL]


def test_a_failed_export_keeps_the_previous_model(tmp_path, images, monkeypatch):
    target = tmp_path / SAVED_MODEL
    old = MLP(ModelConfig(hidden=[20]), seed=1)
    export_saved_model(old, target)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(MLP(ModelConfig(hidden=[30]), seed=2), target)
    monkeypatch.undo()
    out = load_saved_model(target).signatures["serving_default"](images=images)
    np.testing.assert_allclose(out["probabilities"], predict_proba(old, images).numpy(), rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [SAVED_MODEL]


def test_writer_exports_a_finished_run(tmp_path, model, images):
    run = RunDir(tmp_path)
    SavedModelWriter().on_finish(SimpleNamespace(run=run, model=model))
    out = load_saved_model(tmp_path / SAVED_MODEL).signatures["serving_default"](images=images)
    np.testing.assert_array_equal(out["digit"].numpy(), predict_proba(model, images).numpy().argmax(axis=1))


def test_restoring_copies_the_weights_into_a_fresh_model(exported, model, images):
    fresh = MLP(ModelConfig(hidden=[100, 100]), seed=0)  # other initial weights, zero biases
    restore_saved_model(fresh, exported)
    for mine, theirs in zip(fresh.variables_in_order, model.variables_in_order, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    np.testing.assert_array_equal(predict_proba(fresh, images).numpy(), predict_proba(model, images).numpy())


def test_restoring_into_another_architecture_says_so(exported):
    other = MLP(ModelConfig(hidden=[50]), seed=0)
    with pytest.raises(
        UserError, match=r"does not fit this model \(layer sizes 784-100-100-10; config.yaml says 784-50-10\)"
    ):
        restore_saved_model(other, exported)


def test_loading_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match=r"not a SavedModel \(no saved_model.pb\)"):
        load_saved_model(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"\x08garbage that is no protobuf")
    with pytest.raises(UserError, match=f"^{tmp_path}: cannot load the SavedModel"):
        load_saved_model(tmp_path)


@pytest.mark.slow
def test_loading_needs_tensorflow_only(exported, model, images, tmp_path):
    """A fresh interpreter in which `import mnist_mlp` fails loads the model and gives the same answers."""
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["mnist_mlp"] = None  # any import of this package now raises ImportError
        import numpy as np
        import tensorflow as tf
        serve = tf.saved_model.load({str(exported)!r}).signatures["serving_default"]
        images = np.load({str(tmp_path / "images.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, serve(images=tf.constant(images))["probabilities"].numpy())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=child_env())
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), predict_proba(model, images).numpy(), rtol=1e-6)
