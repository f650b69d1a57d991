"""mnist_mlp/__init__.py: TensorFlow's import, quiet and without the modules it would load for features never used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from mnist_mlp import HIDDEN_DURING_TENSORFLOW_IMPORT
from tests.conftest import child_env


def test_tensorflow_imports_without_the_hidden_modules_which_still_import_afterwards():
    check = textwrap.dedent(f"""
        import importlib, sys
        import mnist_mlp
        mnist_mlp.import_tensorflow_quietly()
        hidden = {list(HIDDEN_DURING_TENSORFLOW_IMPORT)!r}
        print(hasattr(sys.modules.get("tensorflow"), "function"), [name for name in hidden if name in sys.modules])
        for name in hidden:
            try:
                importlib.import_module(name)
            except ImportError:  # not installed here (jax is the bench extra's)
                pass
        import tensorflow as tf
        print(tf.keras.layers.Dense(3)(tf.ones([2, 4])).shape, tf.keras.layers.Dense.__module__.split(".")[0])
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=child_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    # TensorFlow imported completely (a module it needs, hidden, would leave it half imported), without them; tf.keras
    # is still Keras 3, loaded on first use
    assert out.stdout.splitlines() == ["True []", "(2, 3) keras"]
