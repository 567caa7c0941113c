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


def _merge(links: sa.Table, records: sa.Table, key: list[str]) -> sa.Insert:
    """INSERT the links of the merged query ``:qid``: the answer's records, and those of ``:tables``
    whose row (``key``) the answer does not hold."""
    kept, answered = links.alias("kept"), links.alias("answered")
    record, answer_record = records.alias("r"), records.alias("a")
    answer_links = sa.select(sa.bindparam("qid"), links.c.record_id).where(links.c.query_id == sa.bindparam("answer"))
    kept_links = (
        sa.select(sa.bindparam("qid"), kept.c.record_id).select_from(kept.join(record, record.c.id == kept.c.record_id))
        .where(kept.c.query_id == sa.bindparam("tables"), ~sa.exists().where(
            answered.c.query_id == sa.bindparam("answer"), answered.c.record_id == answer_record.c.id,
            *(answer_record.c[c] == record.c[c] for c in key))))
    return links.insert().from_select(["query_id", "record_id"], sa.union(answer_links, kept_links))


def _adds(links: sa.Table) -> sa.Select:
    """A link of ``:answer`` to a record that ``:tables`` does not hold (the answer changes the tables)."""
    inner = links.alias("inner")
    return sa.select(links.c.record_id).where(links.c.query_id == sa.bindparam("answer"), ~sa.exists().where(
        inner.c.query_id == sa.bindparam("tables"), inner.c.record_id == links.c.record_id)).limit(1)


_MERGE = [_merge(query_sessions, session_records, ["uuid"]),
          _merge(query_datasets, dataset_records, ["uuid", "session_uuid"])]
_ADDS = [_adds(query_sessions), _adds(query_datasets)]
_COUNT = [sa.select(sa.func.count()).where(links.c.query_id == sa.bindparam("qid"))
          for links in (query_sessions, query_datasets)]
_COMPLETE = queries.update().where(queries.c.id == sa.bindparam("qid")).values(
    n_sessions=sa.bindparam("n_sessions"), n_datasets=sa.bindparam("n_datasets"), completed_at=sa.bindparam("now"))


def merge_tables(db: Database, tables: int | None, answer: int | None, run_id: str | None, *,
                 source: str | None = None) -> int | None:
    """The query of ``tables`` (a query id, or None for no tables yet) merged with the rows of
    ``answer`` (a query id): ``tables`` itself when the answer adds or changes nothing, else a new
    complete query (method 'merge_tables', from ``source``). A session row is keyed by its UUID; a
    dataset row by its UUID and session, as one-api's merge keys them by ``(eid, id)``.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.merge_tables(...)``).
    tables : int or None
        The query id of the client's tables; None before it has any.
    answer : int or None
        The query id of the answer's rows (e.g. from :func:`oneprov.store.answers.record_answer`);
        None: nothing to merge.
    run_id : str or None
        The run the merge is recorded in.
    source : str, optional
        The merged query's source: the client's cache folder (see :func:`latest_tables`). Default None.

    Returns
    -------
    int or None
        The query id of the merged tables: ``tables`` when ``answer`` is None, equal to ``tables``,
        or adds and changes nothing; else a new query's id.

    Raises
    ------
    DatabaseError
        The database cannot be written.
    """
    if answer is None or answer == tables:
        return tables
    with db.writing() as conn:
        ids = {"tables": -1 if tables is None else tables, "answer": answer}   # (-1: no tables, no links)
        if tables is not None and not any(conn.execute(adds, ids).first() for adds in _ADDS):
            return tables
        qid = new_query(conn, run_id, "merge_tables", {"tables": tables, "answer": answer}, source=source, mode="remote")
        for merge in _MERGE:
            conn.execute(merge, {**ids, "qid": qid})
        n_sessions, n_datasets = (conn.execute(count, {"qid": qid}).scalar_one() for count in _COUNT)
        conn.execute(_COMPLETE, {"qid": qid, "n_sessions": n_sessions, "n_datasets": n_datasets, "now": utcnow()})
    return qid


def latest_tables(db: Database, source: str) -> int | None:
    """The newest complete tables that remote answers made for ``source`` (a cache folder), or None:
    what a client of that folder answers from offline.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.latest_tables(...)``).
    source : str
        The cache folder, as the merges recorded it (an absolute path, as text).

    Returns
    -------
    int or None
        The id of the newest complete, error-free 'merge_tables' query of ``source``; None if there is none.

    Raises
    ------
    DatabaseError
        The database cannot be read.
    """
    q = queries.c
    with db.reading() as conn:
        return conn.execute(sa.select(q.id).where(q.method == "merge_tables", q.source == source,
                                                  q.completed_at.is_not(None), q.error.is_(None))
                            .order_by(q.id.desc()).limit(1)).scalar()
