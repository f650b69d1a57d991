"""mnist_mlp: an MNIST digit classifier (784-100-100-10 MLP) with hand-written backprop in low-level TensorFlow."""

import contextlib
import os
import sys
from collections.abc import Iterator

# TensorFlow's C++ start-up log (CUDA probes, oneDNN notices) stays off the user's terminal unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


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
    # tf.lite imports JAX whenever it is installed (the bench extra), for a converter we never use: about
    # 170 MB of memory and a second of start-up. Hidden during the import; `import jax` works afterwards.
    hidden = "jax" not in sys.modules
    if hidden:
        sys.modules["jax"] = None  # type: ignore[assignment]  # makes `import jax` raise ImportError
    try:
        with native_stderr_silenced(), contextlib.suppress(ImportError):  # a broken install: the real import says
            import tensorflow  # noqa: F401
    finally:
        if hidden:
            del sys.modules["jax"]
