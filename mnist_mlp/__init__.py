"""mnist_mlp: an MNIST digit classifier (784-100-100-10 MLP) with hand-written backprop in low-level TensorFlow."""

import contextlib
import os
import sys
from collections.abc import Iterator

# TensorFlow's C++ start-up log (CUDA probes, oneDNN notices) stays off the user's terminal unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"

# What TensorFlow imports for features we never use, hidden during its import (an `import` of them then raises
# ImportError, which TensorFlow and Keras catch; they import as usual afterwards, and tf.keras still loads Keras 3
# when first used): tf.lite's optional JAX converter (about 170 MB of memory and a second of start-up when the bench
# extra installs JAX); Keras, which TensorFlow loads eagerly only to learn its version, and SciPy and h5py, which
# TensorFlow's legacy Keras code imports for features of its own (41 MB of the training process's memory together,
# docs/performance.md); and matplotlib, which Keras loads for its image-gallery plots (ours are drawn by the plot
# worker, plot_worker.py). Not requests: TensorFlow needs it (tests/test_package.py fails on an incomplete import).
HIDDEN_DURING_TENSORFLOW_IMPORT = ("jax", "keras", "scipy", "h5py", "matplotlib")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration, unless the user asked for TensorFlow's logs.

    Some of TensorFlow's C++ logging ignores TF_CPP_MIN_LOG_LEVEL: plugins registering themselves at import,
    XLA announcing a compilation. Python exceptions still surface (they are printed after the block).
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow without its start-up noise; later imports reuse the loaded module.

    A TensorFlow that the installed Metal plugin cannot load with raises BrokenInstall first (one line saying how to
    fix it) instead of the plugin's traceback.
    """
    if "tensorflow" in sys.modules:
        return
    from mnist_mlp.errors import BrokenInstall
    from mnist_mlp.versions import installed_metal_clash

    if clash := installed_metal_clash():
        raise BrokenInstall(clash)
    hidden = [name for name in HIDDEN_DURING_TENSORFLOW_IMPORT if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        with native_stderr_silenced(), contextlib.suppress(ImportError):  # a broken install: the real import says
            _import_tensorflow()
    finally:
        for name in hidden:
            del sys.modules[name]
    if plugin_load_error:
        print(f"warning: {plugin_load_error}; going on without it, on the CPU", file=sys.stderr)


plugin_load_error: str | None = None  # why a TensorFlow plugin (Metal's) failed to load, for doctor; None: it did


def _import_tensorflow() -> None:
    """`import tensorflow`; should a plugin in site-packages/tensorflow-plugins (the Metal GPU's) fail to load
    (a missing library or symbol: TensorFlow raises as it loads them, at the end of its import), the reason
    kept in plugin_load_error (for a warning line, and for doctor), and TensorFlow imported again without its
    plugins: the CPU works without them."""
    global plugin_load_error
    try:
        import tensorflow
    except Exception as exc:
        if "tensorflow-plugins" not in str(exc):
            raise
        from mnist_mlp.errors import describe_error
        from mnist_mlp.versions import REINSTALL

        plugin_load_error = f"a TensorFlow plugin failed to load ({describe_error(exc)}); reinstall: {REINSTALL}"
        exists = os.path.exists  # TensorFlow loads the plugins found in every site-packages' tensorflow-plugins
        os.path.exists = lambda path: os.path.basename(os.fspath(path)) != "tensorflow-plugins" and exists(path)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.path.exists = exists


def sweep_worker_process(*args: object) -> None:
    """Where a sweep's worker process starts (sweep.py): TensorFlow imported quietly first, as the sweep's own
    module imports it at the top, then the worker."""
    import_tensorflow_quietly()
    from mnist_mlp.sweep import worker_main

    worker_main(*args)
