"""`python -m mnist_mlp` is the `mnist-mlp` command."""

from mnist_mlp.cli import run

run()
