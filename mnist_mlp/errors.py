"""Errors of the user's making: the CLI prints them as one `error: ...` line and exits 2."""


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
