"""A REST answer's rows recorded as one query, in one short transaction.

An answer holds tens of rows (a page of sessions, a session's datasets), already checked and
normalised (``oneprov.sources.alyx``): the general ingest (:mod:`.ingest`), built for millions of
rows, costs far more than such an answer. The rule is the same: a row whose values equal its current
record is linked to that record; any other row becomes a new record of this query.

>>> import datetime as dt, tempfile, pathlib
>>> from oneprov import open_store
>>> store = open_store(pathlib.Path(tempfile.mkdtemp()) / "p.sqlite")
>>> row = {"uuid": "3f0b4c1e-8a6f-4c1e-9d4b-2a7e5f6c8d90", "lab": "lab", "subject": "S1",
...        "date": dt.date(2024, 1, 8), "number": 1, "task_protocol": None, "projects": None}
>>> first = record_answer(store, location="https://alyx/sessions", sessions=[row], datasets=[])
>>> again = record_answer(store, location="https://alyx/sessions", sessions=[row], datasets=[])
>>> int(store.sql("SELECT count(*) AS n FROM session_records")["n"].iloc[0])
1
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .engine import Database
from .records import link, spans_of
from .recording import new_query
from .schema import dataset_records, queries, revisions, session_records, utcnow

_SESSION_FIELDS = ["lab", "subject", "date", "number", "task_protocol", "projects"]
_DATASET_KEY = ["uuid", "session_uuid", "rel_path"]
_DATASET_FIELDS = ["collection", "revision", "name", "file_size", "hash", "exists", "qc", "default_revision"]

_EARLIER = (sa.select(queries.c.id, queries.c.n_sessions, queries.c.n_datasets)
            .where(queries.c.source == sa.bindparam("source"), queries.c.checksum == sa.bindparam("checksum"),
                   queries.c.method == sa.bindparam("method"), queries.c.completed_at.is_not(None),
                   queries.c.error.is_(None))
            .order_by(queries.c.id.desc()).limit(1))


def _latest(records: sa.Table, key: list[str], fields: list[str]) -> sa.Select:
    """The records of complete queries of the given UUIDs (the newest of each row is its current one)."""
    return (sa.select(records.c.id, *(records.c[c] for c in key + fields))
            .join(queries, queries.c.id == records.c.query_id)
            .where(records.c.uuid.in_(sa.bindparam("uuids", expanding=True)), queries.c.completed_at.is_not(None)))


_LATEST_SESSIONS = _latest(session_records, ["uuid"], _SESSION_FIELDS)
_LATEST_DATASETS = _latest(dataset_records, _DATASET_KEY, _DATASET_FIELDS)
_KNOWN_REVISIONS = sa.select(revisions.c.name).where(revisions.c.name.in_(sa.bindparam("names", expanding=True)))
_COMPLETE = queries.update().where(queries.c.id == sa.bindparam("qid")).values(
    n_sessions=sa.bindparam("n_sessions"), n_datasets=sa.bindparam("n_datasets"),
    duration_s=sa.bindparam("duration_s"), completed_at=sa.bindparam("completed_at"))


def record_answer(db: Database, *, location: str, sessions: Sequence[dict[str, Any]], datasets: Sequence[dict[str, Any]],
                  method: str = "rest", params: dict[str, Any] | None = None, checksum: str | None = None,
                  run_id: str | None = None, mode: str = "remote") -> int:
    """Record an answer's rows as one complete query of ``method`` from ``location``; return its id.

    ``sessions`` are rows of ``uuid, lab, subject, date, number, task_protocol, projects``;
    ``datasets`` of ``uuid, session_uuid, rel_path, collection, revision, name, file_size, hash,
    exists, qc, default_revision``. With a ``checksum`` of what was received, an answer recorded
    before from the same location is that query: nothing is written.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.record_answer(...)``).
    location : str
        Where the answer came from (e.g. "https://alyx.example.org/sessions"); the query's source.
    sessions : sequence of dict
        The session rows, with the keys above, checked and normalised (UUIDs lowercase; ``date`` a
        ``datetime.date``).
    datasets : sequence of dict
        The dataset rows, with the keys above, checked and normalised (``file_size`` in bytes;
        ``qc`` a QC name; ``revision`` '' when unrevised).
    method : str, optional
        The query's method. Default 'rest'.
    params : dict of str to object, optional
        The query's parameters (e.g. the request), stored as JSON with credentials hidden. Default None.
    checksum : str, optional
        A digest of the answer as received. Default None: the answer is always written.
    run_id : str, optional
        The run that received the answer. Default None.
    mode : str, optional
        'local' or 'remote'. Default 'remote'.

    Returns
    -------
    int
        The id of the query (a new one, or the earlier one of the same answer).

    Raises
    ------
    KeyError
        A row lacks one of the keys above. Nothing was written.
    DatabaseError
        The database cannot be written (e.g. a value too long for its column on PostgreSQL).
    """
    started = time.perf_counter()
    with db.writing() as conn:
        if checksum is not None:
            earlier = conn.execute(_EARLIER, {"source": location, "checksum": checksum, "method": method}).first()
            if earlier is not None:
                return earlier.id
        qid = new_query(conn, run_id, method, params, source=location, checksum=checksum, mode=mode)
        now = utcnow()
        session_ids = _records(db, conn, _LATEST_SESSIONS, session_records, ["uuid"], _SESSION_FIELDS, sessions, qid, now)
        dataset_ids = _records(db, conn, _LATEST_DATASETS, dataset_records, _DATASET_KEY, _DATASET_FIELDS, datasets, qid, now)
        names = sorted({d["revision"] for d in datasets if d["revision"]})
        if names:
            known = set(conn.execute(_KNOWN_REVISIONS, {"names": names}).scalars())
            if set(names) - known:
                conn.execute(revisions.insert(), [{"name": n, "first_seen_at": now} for n in names if n not in known])
        link(conn, session_records, qid, spans_of(session_ids))
        link(conn, dataset_records, qid, spans_of(dataset_ids))
        conn.execute(_COMPLETE, {"qid": qid, "n_sessions": len(set(session_ids)), "n_datasets": len(set(dataset_ids)),
                                 "duration_s": time.perf_counter() - started, "completed_at": utcnow()})
    return qid


def _records(db: Database, conn: Connection, latest: sa.Select, records: sa.Table, key: list[str], fields: list[str],
             rows: Sequence[dict[str, Any]], qid: int, now: Any) -> list[int]:
    """The record of each row: its current record when that holds the same values, else a new one."""
    if not rows:
        return []
    current: dict[tuple, Any] = {}
    for record in conn.execute(latest, {"uuids": sorted({r["uuid"] for r in rows})}):
        row_key = tuple(getattr(record, c) for c in key)
        if row_key not in current or record.id > current[row_key].id:
            current[row_key] = record
    ids: list[int | None] = []
    new: dict[tuple, int] = {}   # a new row's values -> its place in ``inserted`` (a row repeated exactly: once)
    inserted: list[dict[str, Any]] = []
    for row in rows:
        record = current.get(tuple(row[c] for c in key))
        if record is not None and all(_same(getattr(record, f), row[f]) for f in fields):
            ids.append(record.id)
            continue
        values = tuple(row[c] for c in key + fields)
        if values not in new:
            new[values] = len(inserted)
            inserted.append({**{c: row[c] for c in key + fields}, "query_id": qid, "first_seen_at": now})
        ids.append(-1 - new[values])
    if inserted:
        made = db.dialect.reserve_ids(conn, records, len(inserted))   # (where every writer of records draws ids)
        conn.execute(records.insert(), [{**row, "id": i} for row, i in zip(inserted, made)])
        ids = [i if i >= 0 else made[-1 - i] for i in ids]
    return ids


def _same(stored: Any, given: Any) -> bool:
    if stored is None or given is None:
        return stored is None and given is None
    return stored == given


__all__ = ["record_answer"]
