"""Recording what a run did: its queries with the rows they returned, its load attempts, its exports.

Each call is one transaction: all of it is in the database when the call returns, or none of it.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run(project="demo")
>>> record_access(store, run, [{"method": "load_dataset", "outcome": "not_found", "rel_path": "x.y.npy"}])
[1]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..alf import check_uuid
from ..errors import BadInputError
from ..files import file_sha256
from ..secrets import scrub, scrub_params
from .dialects import EVENT_COLUMNS
from .engine import Database
from .schema import dataset_records as dataset_records_table
from .records import current, link, spans_of
from .schema import exports, queries, query_dataset_spans, query_session_spans, utcnow
from .schema import session_records as session_records_table

_EVENT_FIELDS = frozenset(EVENT_COLUMNS)
_INSERT_QUERY = queries.insert().returning(queries.c.id)


def new_query(conn: Connection, run_id: str | None, method: str, params: dict | None = None, **values: Any) -> int:
    """Insert a ``queries`` row inside ``conn``'s transaction; return its id.

    ``values`` are the other columns (``source``, ``checksum``, ``mode``, ``scope``, counts,
    ``completed_at`` ...); ``started_at`` defaults to now.
    """
    return conn.execute(_INSERT_QUERY, _query_values(run_id, method, params, **values)).scalar_one()


def _query_values(run_id: str | None, method: str, params: dict | None, **values: Any) -> dict[str, Any]:
    """The columns of a new ``queries`` row: secrets hidden, parameters as JSON, ``started_at`` now by default."""
    for name in ("source", "error"):
        if isinstance(values.get(name), str):
            values[name] = scrub(values[name])
    return {"run_id": run_id, "method": method,
            "params": json.dumps(scrub_params(params or {}), default=str, sort_keys=True),
            "started_at": utcnow(), **values}


def record_query(
    db: Database,
    run_id: str | None,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    session_records: Iterable[int] = (),
    dataset_records: Iterable[int] = (),
    session_ids: Iterable[str] = (),
    dataset_ids: Iterable[str] = (),
    mode: str | None = None,
    revision_cutoff: str | None = None,
    scope: str | None = None,
    duration_s: float | None = None,
    error: str | None = None,
) -> int:
    """Record a search or list and the sessions and datasets it returned; return the query id.

    The rows are given as the records they were read from (``session_records``, ``dataset_records``:
    record ids, as a catalog returns them: the client's hot path), or by UUID (``session_ids``,
    ``dataset_ids``: each then linked with its current record). The links are written in bulk, a
    few statements whatever their number.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.record_query(...)``).
    run_id : str or None
        The run that made the query; None for a query of no run.
    method : str
        The method that made it (e.g. "search", "list_datasets").
    params : dict of str to object, optional
        Its parameters, stored as JSON (non-JSON values as text; credentials hidden). Default None.
    session_records, dataset_records : iterable of int, optional
        The records (ids in ``session_records``/``dataset_records``) of the sessions and datasets it
        returned. Default: none.
    session_ids, dataset_ids : iterable of str, optional
        The UUIDs of the sessions and datasets it returned, each linked with its current record (a
        UUID without one is left out). Default: none.
    mode : str, optional
        'local' or 'remote'. Default None.
    revision_cutoff : str, optional
        The revision cutoff in force. Default None.
    scope : str, optional
        The scope in force. Default None.
    duration_s : float, optional
        How long the query took, in seconds. Default None.
    error : str, optional
        Why the query failed; secrets in it are hidden. Default None.

    Returns
    -------
    int
        The id of the new query (in ``queries``).

    Raises
    ------
    BadInputError
        A value of ``session_ids`` or ``dataset_ids`` is not a UUID. Nothing was written.
    DatabaseError
        The database cannot be written (e.g. ``run_id`` names no run).
    """
    sids = sorted({check_uuid(s, "session id") for s in session_ids})
    dids = sorted({check_uuid(d, "dataset id") for d in dataset_ids})
    if not sids and not dids:   # the client's hot path: the records are known
        now = utcnow()
        srecs, drecs = sorted(set(session_records)), sorted(set(dataset_records))
        return db.dialect.insert_query(db, _query_values(run_id, method, params, mode=mode, revision_cutoff=revision_cutoff,
                                                         scope=scope, duration_s=duration_s, error=error,
                                                         n_sessions=len(srecs), n_datasets=len(drecs), started_at=now,
                                                         completed_at=now),
                                       {query_session_spans: spans_of(srecs), query_dataset_spans: spans_of(drecs)})
    with db.writing() as conn:
        srecs = sorted({*session_records, *_current_records(conn, session_records_table, sids)})
        drecs = sorted({*dataset_records, *_current_records(conn, dataset_records_table, dids)})
        now = utcnow()
        qid = new_query(conn, run_id, method, params, mode=mode, revision_cutoff=revision_cutoff, scope=scope,
                        duration_s=duration_s, error=error, n_sessions=len(srecs), n_datasets=len(drecs),
                        started_at=now, completed_at=now)
        link(conn, session_records_table, qid, spans_of(srecs))
        link(conn, dataset_records_table, qid, spans_of(drecs))
    return qid


def _current_records(conn: Connection, records: sa.Table, uuids: list[str]) -> list[int]:
    """The current record (the latest of a complete query) of each row of these UUIDs."""
    if not uuids:
        return []
    return conn.execute(sa.select(records.c.id).where(records.c.uuid.in_(uuids), current(records))).scalars().all()


def record_access(db: Database, run_id: str, events: Sequence[dict[str, Any]]) -> list[int]:
    """Record a batch of load attempts in one transaction; return their event ids, in order.

    Each event is a dict with ``method`` and ``outcome`` and optionally ``dataset_id``,
    ``session_id``, ``rel_path``, ``requested_revision``, ``revision_cutoff``, ``scope``,
    ``record_id`` (the dataset record the load was answered from; default: the dataset's current
    record), ``path``, ``bytes``, ``detail``, ``event_time`` (default: now) and ``listed``
    (default True: the load counts in the run's loaded-ids list).

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.record_access(...)``).
    run_id : str
        The run that made the load attempts.
    events : sequence of dict
        The load attempts, with the keys above. ``outcome`` is e.g. 'loaded', 'download_only'
        (both successful loads), 'missing', 'not_found', 'ambiguous' or 'failed'; ``dataset_id`` and
        ``session_id`` are UUIDs (any case); ``bytes`` is the file's size in bytes; ``event_time`` a
        UTC datetime without a time zone; ``detail`` free text (secrets hidden).

    Returns
    -------
    list of int
        The new events' ids, in the order of ``events`` (empty, and nothing written, without events).

    Raises
    ------
    BadInputError
        An event has no ``method`` or ``outcome``, has a key not listed above, or a malformed
        ``dataset_id`` or ``session_id``. Nothing was written.
    DatabaseError
        The database cannot be written (e.g. ``run_id`` names no run).
    """
    rows = _event_rows(events, utcnow())
    return db.dialect.insert_events(db, run_id, rows, lambda r: _with_records(db, r)) if rows else []


_d = dataset_records_table.c
# Built once: constructing them costs more than running them (a load records in about 0.1 ms).
_CURRENT_RECORDS = (sa.select(_d.uuid, sa.func.max(_d.id))
                    .where(_d.uuid.in_(sa.bindparam("uuids", expanding=True)), current(dataset_records_table))
                    .group_by(_d.uuid))
_SESSIONS_OF = sa.select(_d.id, _d.session_uuid).where(_d.id.in_(sa.bindparam("ids", expanding=True)))


def _with_records(db: Database, rows: list[tuple]) -> list[tuple]:
    """Events of a dataset without its record (or session): its current record, and that record's session."""
    wanted = sorted({row[3] for row in rows if row[3] is not None and row[9] is None})
    given = sorted({row[9] for row in rows if row[9] is not None and row[4] is None})
    with db.reading() as conn:
        latest = dict(conn.execute(_CURRENT_RECORDS, {"uuids": wanted}).all()) if wanted else {}
        no_session = {latest.get(row[3]) for row in rows if row[4] is None and row[9] is None}
        ids = sorted(({*given} | no_session) - {None})
        session_of = dict(conn.execute(_SESSIONS_OF, {"ids": ids}).all()) if ids else {}
    out = []
    for row in rows:
        record = row[9] if row[9] is not None or row[3] is None else latest.get(row[3])
        session = row[4] if row[4] is not None else session_of.get(record)
        out.append((*row[:4], session, *row[5:9], record, *row[10:]))
    return out


def _event_rows(events: Sequence[dict[str, Any]], now: datetime) -> list[tuple]:
    """Validated access events as tuples in :data:`EVENT_COLUMNS` order (UUIDs lowercase canonical)."""
    rows = []
    for i, event in enumerate(events):
        get = event.get
        if not get("method") or not get("outcome") or not event.keys() <= _EVENT_FIELDS:
            unknown = set(event) - _EVENT_FIELDS
            raise BadInputError(f"access event {i} is invalid: needs method and outcome"
                                + (f", unknown fields {sorted(unknown)}" if unknown else ""))
        dataset_id, session_id, listed = get("dataset_id"), get("session_id"), get("listed")
        if dataset_id is not None:
            dataset_id = check_uuid(dataset_id, "dataset id")
        if session_id is not None:
            session_id = check_uuid(session_id, "session id")
        rows.append((get("event_time") or now, event["method"], event["outcome"], dataset_id, session_id,
                     get("rel_path"), get("requested_revision"), get("revision_cutoff"), get("scope"), get("record_id"),
                     get("path"), get("bytes"), scrub(get("detail")) if get("detail") else None, True if listed is None else bool(listed)))
    return rows


@dataclass(frozen=True)
class ExportedFile:
    """A file written from the store, as :func:`record_exports` records it."""

    kind: str                    # loaded_dataset_ids, loaded_session_ids, sessions_table, datasets_table
    path: Path
    rows: int
    run_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def record_exports(db: Database, files: Sequence[ExportedFile]) -> None:
    """Record files written from the store, with their size and sha256, in one transaction.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.record_exports(...)``).
    files : sequence of ExportedFile
        The files, each with its kind, path, number of rows, run and parameters. Each file must
        exist: its size (bytes) and sha256 are read now. Empty: nothing is written.

    Returns
    -------
    None

    Raises
    ------
    OSError
        A file cannot be read (e.g. it does not exist). Nothing was written.
    DatabaseError
        The database cannot be written (e.g. a file's ``run_id`` names no run).
    """
    if not files:
        return
    values = [{"run_id": f.run_id, "kind": f.kind, "path": str(f.path), "rows": f.rows, "bytes": f.path.stat().st_size,
               "sha256": file_sha256(f.path), "params": json.dumps(scrub_params(f.params), default=str, sort_keys=True),
               "created_at": utcnow()} for f in files]
    with db.writing() as conn:
        conn.execute(exports.insert(), values)
