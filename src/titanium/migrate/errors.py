"""Errors of the data migration; each one aborts the run with the target unchanged."""

from titanium.errors import TitaniumError


class MigrationError(TitaniumError):
    """The migration cannot go on; nothing was committed to the target."""


class SourceError(MigrationError):
    """A source SQLite file cannot be opened or read, or its schema does not fit."""


class TargetError(MigrationError):
    """The target PostgreSQL database cannot be reached or prepared."""


class TargetNotEmpty(TargetError):
    """The target already holds rows and `--truncate` was not given."""


class Interrupted(MigrationError):
    """The run was stopped (Ctrl-C); the load transaction was rolled back."""
