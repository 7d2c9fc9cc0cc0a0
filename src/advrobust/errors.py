"""The project's exceptions: every message names the problem and the fix, in one line."""

from __future__ import annotations


class AdvrobustError(Exception):
    """Base class of every error advrobust raises on purpose; the CLI prints it as one line."""


class InputError(AdvrobustError, ValueError):
    """Inputs, labels or model outputs that break the model contract."""


class ConfigError(AdvrobustError, ValueError):
    """A hyperparameter, CLI option or config file field with a bad value."""


class DataError(AdvrobustError):
    """A data file that is missing, truncated, corrupt or of the wrong format."""


class ChecksumError(DataError):
    """A file whose checksum differs from the expected one (nothing is used or kept)."""


class ModelFileError(AdvrobustError):
    """A model or checkpoint file that is missing, corrupt, or of a refused format."""
