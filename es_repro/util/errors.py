"""Errors that are the user's to fix (a config value, a data file, a busy run directory): the command line prints
them as one line, ``<kind> error: <message>``, and exits 2; the full traceback only with HYDRA_FULL_ERROR=1.
Anything else is a bug or an environment failure and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    kind = "config"


class ConfigError(UserError, ValueError):
    """A configuration value is not allowed; the message names the field and the allowed values."""


class DataError(UserError, ValueError):
    """A data file (or a row in it) is missing, malformed or too large; the message starts with <file>:<line>."""

    kind = "data"


class RunStateError(UserError, RuntimeError):
    """The run directory cannot be used as it is (held by another launch, a gap in the log, ...)."""

    kind = "run"
