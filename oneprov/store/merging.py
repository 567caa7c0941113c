"""A remote client's tables, grown by the answers it is given: each state is a query of its own.

one-api merges every REST answer into its in-memory tables (a row of the answer replaces the row
with the same ids). Here the same merge makes a new query whose records are the answer's, and the
previous tables' records of every row the answer does not hold. Queries never change, so each state
of a client's tables stays what it was, and a load records the record it was answered from.

>>> from oneprov import open_store
>>> merge_tables(open_store(":memory:"), None, None, None) is None
True
"""
from __future__ import annotations

import sqlalchemy as sa

from .engine import Database
from .recording import new_query
from .schema import dataset_records, queries, query_datasets, query_sessions, session_records, utcnow


def merge_tables(db: Database, tables: int | None, answer: int | None, run_id: str | None, *,
                 source: str | None = None) -> int | None:
    """The query of ``tables`` (a query id, or None for no tables yet) merged with the rows of
    ``answer`` (a query id): ``tables`` itself when the answer adds or changes nothing, else a new
    complete query (method 'merge_tables', from ``source``). A session row is keyed by its UUID; a
    dataset row by its UUID and session, as one-api's merge keys them by ``(eid, id)``."""
    if answer is None or answer == tables:
        return tables
    with db.writing() as conn:
        if tables is not None and not _adds_anything(conn, tables, answer):
            return tables
        qid = new_query(conn, run_id, "merge_tables", {"tables": tables, "answer": answer}, source=source, mode="remote")
        qs, qd = query_sessions.alias("qs"), query_datasets.alias("qd")
        s, d = session_records.alias("s"), dataset_records.alias("d")
        answered_s, answered_d = query_sessions.alias("as_"), query_datasets.alias("ad")
        a_s, a_d = session_records.alias("a_s"), dataset_records.alias("a_d")
        tables = -1 if tables is None else tables   # (no tables yet: the answer's rows alone)
        answer_sessions = sa.select(sa.literal(qid), query_sessions.c.record_id).where(query_sessions.c.query_id == answer)
        kept_sessions = (
            sa.select(sa.literal(qid), qs.c.record_id).select_from(qs.join(s, s.c.id == qs.c.record_id))
            .where(qs.c.query_id == tables, ~sa.exists().where(
                answered_s.c.query_id == answer, answered_s.c.record_id == a_s.c.id, a_s.c.uuid == s.c.uuid)))
        conn.execute(query_sessions.insert().from_select(["query_id", "record_id"],
                                                         sa.union(answer_sessions, kept_sessions)))
        answer_datasets = sa.select(sa.literal(qid), query_datasets.c.record_id).where(query_datasets.c.query_id == answer)
        kept_datasets = (
            sa.select(sa.literal(qid), qd.c.record_id).select_from(qd.join(d, d.c.id == qd.c.record_id))
            .where(qd.c.query_id == tables, ~sa.exists().where(
                answered_d.c.query_id == answer, answered_d.c.record_id == a_d.c.id, a_d.c.uuid == d.c.uuid,
                a_d.c.session_uuid == d.c.session_uuid)))
        conn.execute(query_datasets.insert().from_select(["query_id", "record_id"],
                                                         sa.union(answer_datasets, kept_datasets)))
        n_sessions = conn.execute(sa.select(sa.func.count()).where(query_sessions.c.query_id == qid)).scalar_one()
        n_datasets = conn.execute(sa.select(sa.func.count()).where(query_datasets.c.query_id == qid)).scalar_one()
        conn.execute(queries.update().where(queries.c.id == qid).values(
            n_sessions=n_sessions, n_datasets=n_datasets, completed_at=utcnow()))
    return qid


def _adds_anything(conn: sa.Connection, tables: int, answer: int) -> bool:
    """Whether ``answer`` links a record that ``tables`` does not."""
    for links in (query_sessions, query_datasets):
        inner = links.alias("inner")
        new = sa.select(links.c.record_id).where(links.c.query_id == answer, ~sa.exists().where(
            inner.c.query_id == tables, inner.c.record_id == links.c.record_id)).limit(1)
        if conn.execute(new).first() is not None:
            return True
    return False


def latest_tables(db: Database, source: str) -> int | None:
    """The newest complete tables that remote answers made for ``source`` (a cache folder), or None:
    what a client of that folder answers from offline."""
    q = queries.c
    with db.reading() as conn:
        return conn.execute(sa.select(q.id).where(q.method == "merge_tables", q.source == source,
                                                  q.completed_at.is_not(None), q.error.is_(None))
                            .order_by(q.id.desc()).limit(1)).scalar()
