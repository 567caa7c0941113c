"""Which records take part: each row's current record, and the records a query holds.

A row (a session UUID; a dataset UUID in a session at a path) has a record per state it was seen
in. Its *current* record is its latest record of a complete query: what the ``sessions`` and
``datasets`` views show (migration 0008 writes the same rule in SQL). A client's catalog is the
records its import holds.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> with store.reading() as conn:
...     conn.execute(sa.select(sa.func.count()).where(current(dataset_records))).scalar()
0
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import dialects
from .schema import dataset_records, queries, query_datasets, query_sessions

#: What identifies a row of each record table: its records are its states.
ROW_KEY = {"session_records": ["uuid"], "dataset_records": ["uuid", "session_uuid", "rel_path"]}
#: The link table of each record table.
LINKS = {"session_records": query_sessions, "dataset_records": query_datasets}


def current(records: sa.Table) -> sa.ColumnElement[bool]:
    """Whether a record is its row's current state: the latest record of a complete query."""
    newer = records.alias("newer")
    same_row = [newer.c[c] == records.c[c] for c in ROW_KEY[records.name]]
    latest = (sa.select(sa.func.max(newer.c.id)).join(queries, queries.c.id == newer.c.query_id)
              .where(*same_row, queries.c.completed_at.is_not(None)).scalar_subquery())
    return records.c.id == latest


def held_by(records: sa.Table, query: int | sa.BindParameter) -> sa.ColumnElement[bool]:
    """Whether a record is one that ``query`` returned (an EXISTS: one key lookup per record, where an
    IN would first gather all of the query's links)."""
    link = LINKS[records.name]
    return sa.select(sa.literal_column("1")).where(link.c.query_id == query, link.c.record_id == records.c.id).exists()


def latest_import(conn: Connection) -> int | None:
    """The id of the latest complete import of cache tables (None when there is none)."""
    q = queries.c
    return conn.execute(sa.select(sa.func.max(q.id)).where(q.method == "import_cache", q.completed_at.is_not(None))
                        ).scalar()


def holds_everything(conn: Connection, query: int | None, records: sa.Table = dataset_records) -> bool:
    """Whether ``query`` (a complete import) holds every record of ``records``, as when one cache has a
    database of its own; then every record is also current, and a membership test per row can be skipped.

    Only known on SQLite (see ``dialects.py``): elsewhere this is False and the tests are made.
    """
    if query is None:
        return False
    flag = "all_datasets" if records is dataset_records else "all_sessions"
    return bool(dialects.of(conn).coverage(conn, query).get(flag))


__all__ = ["ROW_KEY", "LINKS", "current", "held_by", "holds_everything", "latest_import"]
