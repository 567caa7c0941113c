"""Exceptions raised by oneprov.

Every error that reaches a user names the input at fault (a file, a column, a row, a URL) and is
raised before anything is written, so that the database is left as it was.
"""
from __future__ import annotations

from one.alf import exceptions as _one


class OneprovError(Exception):
    """Base class of every error oneprov raises on purpose."""


class BadInputError(OneprovError, ValueError):
    """Input (a table, a UUID, a QC value, a path) that oneprov refuses; nothing was stored."""


class MissingColumnError(BadInputError, KeyError):
    """A table without a column it needs (also a ``KeyError``, as one-api raises for it)."""

    __str__ = BaseException.__str__   # (not KeyError's, which quotes the message)


class DatabaseError(OneprovError):
    """The database cannot be opened or used (wrong URL, not a database, not writable...)."""


class SchemaVersionError(DatabaseError):
    """The database schema was made by a newer oneprov than this one."""


class ReadOnlyError(DatabaseError):
    """A statement tried to change a database that was opened read-only."""


# ONE's exceptions: subclasses of one-api's own (``one.alf.exceptions``), so that analysis code that
# catches one-api's classes catches oneprov's too; their messages are one-api's (with its explanation).

class ALFError(OneprovError, _one.ALFError):
    """A dataset request that cannot be answered (one-api's ``ALFError``)."""


class ALFObjectNotFound(ALFError, _one.ALFObjectNotFound):
    """No dataset, object or collection matches the request, or its file is not on disk."""


class ALFMultipleObjectsFound(ALFError, _one.ALFMultipleObjectsFound):
    """The request matches several datasets or objects where one was expected."""


class ALFMultipleCollectionsFound(ALFError, _one.ALFMultipleCollectionsFound):
    """The request matches datasets in several collections where one was expected."""


class ALFMultipleRevisionsFound(ALFError, _one.ALFMultipleRevisionsFound):
    """Several revisions match where one was expected (e.g. several default revisions)."""


class ALFWarning(_one.ALFWarning, UserWarning):
    """A doubtful but answerable request (one-api's ``ALFWarning``)."""


class DuplicateIdError(BadInputError, ALFMultipleObjectsFound):
    """Tables that give one id to several sessions: refused (nothing stored), and to one-api's callers
    the ``ALFMultipleObjectsFound`` that one-api raises when it meets the duplicate."""

    def __init__(self, message: str):
        _one.ALFError.__init__(self, message, terse=True)
