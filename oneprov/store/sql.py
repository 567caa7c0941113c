"""Ad-hoc SQL for auditors: one statement, on a connection that cannot change the database.

SQLite files are opened with ``mode=ro`` and ``PRAGMA query_only``; PostgreSQL sessions with
``default_transaction_read_only``, and the query is sent as a prepared statement so that it is
exactly one statement. A statement that tries to write raises
:class:`~oneprov.errors.ReadOnlyError`; parameters (``:name``) are bound, never formatted into the SQL.

>>> read_only_query(":memory:", "SELECT 1 AS one")["one"].tolist()
[1]
"""
from __future__ import annotations

import os

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL

from ..errors import DatabaseError, ReadOnlyError
from .engine import Database, create_engine, first_line, is_driver_error


def read_only_query(db: str | os.PathLike | URL | None, query: str, params: dict | None = None,
                    timeout: float | None = None) -> pd.DataFrame:
    """Run one SQL query on a read-only connection and return its rows as a DataFrame; stop it after
    ``timeout`` seconds (``QueryStopped``) or at Ctrl-C (``KeyboardInterrupt``)."""
    database = Database(create_engine(db, readonly=True))
    try:
        with database.reading() as conn:
            try:
                columns, rows = database.dialect.run_one_statement(conn, query, params or {}, timeout)
            except Exception as exc:
                message = first_line(exc)
                if any(word in message for word in ("readonly", "read-only", "read only")):
                    raise ReadOnlyError(f"refused: the statement tries to change the database, which "
                                        f"`sql` opens read-only ({message})") from None
                if "multiple commands" in message or "one statement at a time" in message:
                    raise ReadOnlyError("refused: give one statement at a time") from None
                if is_driver_error(exc) or isinstance(exc, sa.exc.StatementError):
                    raise DatabaseError(f"query failed on {database.where}: {message}") from None
                raise
        if columns is None:
            raise ReadOnlyError("refused: the statement returns no rows; only queries are allowed")
        return pd.DataFrame(rows, columns=columns)
    finally:
        database.close()
