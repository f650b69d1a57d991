"""Errors the CLI prints as one `error: ...` line: the user's (exit 2), and the GPU's (exit 1)."""

import re


class UserError(Exception):
    """Bad input from the user (config, data files, paths, images): a one-line message, no traceback."""


class ConfigError(UserError):
    """A config file or `--set` override is malformed or out of range."""


class DataError(UserError):
    """MNIST could not be found, read or verified."""


class GpuMismatch(UserError):
    """The GPU's self-check found it computing other results than the CPU. Not the user's input at fault:
    the CLI prints the one line but exits 1."""


class BrokenInstall(UserError):
    """The installed packages cannot work together (found before importing them); the message says how to fix it."""


class GpuFailure(Exception):
    """The GPU raised a TensorFlow error while a run trained or evaluated on it (a kernel it lacks, an internal
    error, its memory running out). `runtime.device: auto` goes on on the CPU; `gpu` stops with one line."""

    def __init__(self, gpu: str, error: str):
        super().__init__(gpu, error)  # strings only, so that it pickles across sweep worker processes
        self.gpu, self.error = gpu, error  # the error: describe_error()'s line

    def __str__(self) -> str:
        return f"the GPU ({self.gpu}) failed: {self.error}"


# What TensorFlow's error messages wrap their one informative line in: a heading, where the op was defined (a
# traceback per root error), a count, and the node and op names after it.
_TF_ERROR_NOISE = re.compile(r"Graph execution error:|Detected at node|File \"|\d+ root error\(s\) found|\[\[")
_TF_ERROR_PREFIX = re.compile(r"^\(\d+\)\s+[A-Z_]+:\s+")  # "(0) INVALID_ARGUMENT:  " before a root error


def first_line(error: BaseException, width: int = 200) -> str:
    """An exception's message in one line, for a message of our own: its first line, else its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:width]


def describe_error(error: BaseException) -> str:
    """An exception in one line: its type and its message's first informative line (TensorFlow's run to pages)."""
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in lines if line and not _TF_ERROR_NOISE.match(line)]
    first = _TF_ERROR_PREFIX.sub("", useful[0]).split(" [[")[0].split(" [Op:")[0] if useful else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
