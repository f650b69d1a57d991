"""mnist_mlp: an MNIST digit classifier (784-100-100-10 MLP) with hand-written backprop in low-level TensorFlow."""

import contextlib
import os
import sys

# TensorFlow's C++ start-up log (CUDA probes, oneDNN notices) stays off the user's terminal unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 closed: some of its plugins register themselves with log
    lines that ignore TF_CPP_MIN_LOG_LEVEL. Later imports reuse the loaded module."""
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] != "3":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.suppress(ImportError):  # a broken install is reported by the real import later
                import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
