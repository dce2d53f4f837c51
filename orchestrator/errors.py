"""One exception hierarchy, so the CLI can turn user errors into one line and exit 2."""

from __future__ import annotations


class OrchError(Exception):
    """Base class of every error orch raises on purpose."""

    exit_code = 1


class UserError(OrchError):
    """Bad input: a config key, a value, a file, an argument. Exit status 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is wrong. The message names the full key and the bad value."""


class DataError(UserError):
    """The data named by the config cannot be used (missing file, missing target, one class...)."""


class StoreError(OrchError):
    """The results store cannot be read or written."""


class SweepFailed(OrchError):
    """A sweep ran but failed at run time (exit status 1)."""
