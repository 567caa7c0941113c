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


# ONE's exception names, so that analysis code written against one-api reads the same. They are
# oneprov's own classes (one-api is not a dependency); catch them from ``oneprov.errors``.

class ALFError(OneprovError):
    """A dataset request that cannot be answered (ONE's base exception name)."""


class ALFObjectNotFound(ALFError):
    """No dataset, object or collection matches the request, or its file is not on disk."""


class ALFMultipleObjectsFound(ALFError):
    """The request matches several datasets or objects where one was expected."""


class ALFMultipleCollectionsFound(ALFError):
    """The request matches datasets in several collections where one was expected."""


class ALFMultipleRevisionsFound(ALFError):
    """Several revisions match where one was expected (e.g. several default revisions)."""


class ALFWarning(UserWarning):
    """A doubtful but answerable request (ONE's warning name)."""
