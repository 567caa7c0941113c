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
from .records import count_returned, held_by, link_selected, returned_by
from .recording import new_query
from .schema import dataset_records, queries, session_records, utcnow


def _merged(records: sa.Table, key: list[str]) -> sa.Select:
    """The records of the merged tables: the answer's (``:answer``), and those of ``:tables`` whose row
    (``key``) the answer does not hold."""
    kept, answered = records.alias("kept"), records.alias("answered")
    same_row = [answered.c[c] == kept.c[c] for c in key]
    return sa.union(
        sa.select(records.c.id).select_from(returned_by(records, sa.bindparam("answer"))),
        sa.select(kept.c.id).select_from(returned_by(kept, sa.bindparam("tables"), records.name))
        .where(~sa.exists().where(*same_row, held_by(answered, sa.bindparam("answer"), records.name))))


def _adds(records: sa.Table) -> sa.Select:
    """A record of ``:answer`` that ``:tables`` does not hold (the answer changes the tables)."""
    return (sa.select(records.c.id).select_from(returned_by(records, sa.bindparam("answer")))
            .where(~held_by(records, sa.bindparam("tables"))).limit(1))


_RECORDS = [(session_records, ["uuid"]), (dataset_records, ["uuid", "session_uuid"])]
_MERGED = [(records, _merged(records, key)) for records, key in _RECORDS]
_ADDS = [_adds(records) for records, _ in _RECORDS]
_COUNT = [sa.select(count_returned(records, sa.bindparam("qid"))) for records, _ in _RECORDS]
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
        for records, merged in _MERGED:
            link_selected(conn, records, qid, merged.params(ids))
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
