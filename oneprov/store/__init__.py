"""The store: one provenance database, its transactional write API and its read API.

Every recording call (a run started, a query with its results, a batch of load events, an import of
cache tables) is one transaction: all of it is in the database, or none of it. :class:`Store` is
the face of this package; each method is one function of a module here:

- ``engine.py``: URLs, engines, the read and write transactions, database errors mapped once;
  ``dialects.py``: every statement that differs between SQLite and PostgreSQL;
  ``migrate.py``: the schema version; ``schema.py``: the tables;
- ``runs.py``: runs and their marks; ``recording.py``: queries, load events, exports;
  ``ingest.py``: rows from any source as one recorded query (a cache-tables folder is one);
  ``answers.py``: a REST answer's few rows in one short transaction;
  ``merging.py``: a remote client's tables, grown by the REST answers it is given;
- ``catalog.py``: what one client sees; ``revisions.py``: ONE's revision choice in SQL;
  ``loaded.py``: the loaded-ids list; ``sql.py``: read-only ad-hoc SQL;
  ``roles.py``: client and auditor roles on a shared PostgreSQL.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run(project="demo")
>>> store.runs()["project"].tolist()
['demo']
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine.url import URL

from ..errors import DatabaseError
from . import sql
from .engine import Database, create_engine, database_url, no_database, sqlite_path
from .ingest import ImportResult
from .loaded import LoadedIds
from .migrate import head_revision, preflight, schema_status, upgrade as upgrade_schema
from .recording import ExportedFile

__all__ = ["Store", "open_store", "ImportResult", "ExportedFile", "LoadedIds"]


def open_store(db: str | os.PathLike | URL | None = None, *, upgrade: bool = True, create: bool = True) -> "Store":
    """Open the provenance database ``db`` (a path or SQLAlchemy URL; default ``$ONEPROV_DB``).

    A new SQLite file is created and migrated to the newest schema; an older schema is upgraded; a
    schema newer than this oneprov knows is refused with :class:`~oneprov.SchemaVersionError`.
    With ``upgrade=False`` an out-of-date schema is refused instead of upgraded; with
    ``create=False`` a database that does not exist, or holds no oneprov schema, is refused and
    nothing is created (commands that only read, or add to what exists).

    Parameters
    ----------
    db : str, os.PathLike, sqlalchemy.engine.URL or None, optional
        The database. A path (or any text without ``://``) is a SQLite file; ``":memory:"`` an
        in-memory SQLite database; other text a SQLAlchemy URL (``postgresql+psycopg://...``).
        Default None: ``$ONEPROV_DB``.
    upgrade : bool, optional
        Migrate an older schema to the newest (default True). With False, an out-of-date schema
        is refused.
    create : bool, optional
        Create the database and its schema when they do not exist (default True). With False, a
        missing SQLite file or a database without a oneprov schema is refused.

    Returns
    -------
    Store
        The open store. Release its connections with :meth:`Store.close`, or use it in a
        ``with`` block.

    Raises
    ------
    SchemaVersionError
        The schema is newer than this oneprov knows. Nothing was changed.
    DatabaseError
        No database was given and ``$ONEPROV_DB`` is unset; the URL is invalid or of an unsupported
        back end; the database cannot be opened, created or migrated; it holds tables but no oneprov
        schema; it is out of date with ``upgrade=False``; or it does not exist with ``create=False``.
    """
    url = database_url(db)
    path = sqlite_path(url)
    if not create and path is not None and not Path(path).exists():
        raise DatabaseError(no_database(path))
    preflight(db)
    engine = create_engine(db)
    try:
        status = schema_status(engine)
        if not create and status.current is None:
            raise DatabaseError(f"{Database(engine).where} holds no oneprov schema: nothing was created")
        if upgrade:
            upgrade_schema(engine)
        elif not status.up_to_date:
            raise DatabaseError(f"database {Database(engine).where} is at schema version "
                                f"{status.current}, not {status.head}: run `oneprov db upgrade`")
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


class Store(Database):
    """A provenance database. Create it with :func:`open_store`.

    Its methods are the functions of this package's modules, with the store as their first
    argument: ``store.start_run(...)`` is ``runs.start_run(store, ...)``.
    """

    @property
    def schema_version(self) -> str | None:
        """The database's schema version (an Alembic revision id, text), read now; None without a schema."""
        return schema_status(self.engine).current

    @property
    def head_version(self) -> str:
        """The newest schema version this oneprov knows (an Alembic revision id, text)."""
        return head_revision()

    # The functions that take a store first, as its methods:
    from .runs import finish_run, mark, resolve_run, retire_run, start_run, list_runs as runs
    from .recording import record_access, record_exports, record_query
    from .ingest import import_cache, ingest_rows as ingest
    from .merging import latest_tables, merge_tables
    from .answers import record_answer
    from .revisions import datasets_last_before
    from .loaded import loaded_ids

    def sql(self, query: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Run one read-only SQL query and return its rows; writes are refused.

        Named parameters (``:name``) are bound from ``params``, never formatted into the SQL.
        The query runs on a new read-only connection to the store's database (for an in-memory
        store that is another, empty database).

        Parameters
        ----------
        query : str
            One SQL statement that returns rows (a SELECT, or ``WITH ... SELECT``).
        params : dict of str to object, optional
            The values of the query's named parameters (``:name``). Default None: no parameters.

        Returns
        -------
        pandas.DataFrame
            The rows, one column per result column, in the order the query returns them.

        Raises
        ------
        ReadOnlyError
            The statement tries to change the database, is more than one statement, or is not a query.
            A :class:`~oneprov.DatabaseError`.
        DatabaseError
            The query fails (a syntax error, an unknown table or column, a missing parameter), or
            the database cannot be opened.
        """
        return sql.read_only_query(self.engine.url, query, params)
