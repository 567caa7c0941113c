"""Exceptions raised by oneprov.

Every error that reaches a user names the input at fault (a file, a column, a row, a URL) and is
raised before anything is written, so that the database is left as it was.
"""
from __future__ import annotations


class OneprovError(Exception):
    """Base class of every error oneprov raises on purpose."""


class BadInputError(OneprovError, ValueError):
    """Input (a table, a UUID, a QC value, a path) that oneprov refuses; nothing was stored."""


class DatabaseError(OneprovError):
    """The database cannot be opened or used (wrong URL, not a database, not writable...)."""


class SchemaVersionError(DatabaseError):
    """The database schema was made by a newer oneprov than this one."""


class ReadOnlyError(DatabaseError):
    """A statement tried to change a database that was opened read-only."""
