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

from sqlalchemy.engine import Connection

from ..alf import check_uuid
from ..errors import BadInputError
from ..files import file_sha256
from .dialects import EVENT_COLUMNS
from .engine import Database
from .schema import exports, queries, utcnow

_EVENT_FIELDS = frozenset(EVENT_COLUMNS)
_INSERT_QUERY = queries.insert().returning(queries.c.id)


def new_query(conn: Connection, run_id: str | None, method: str, params: dict | None = None, **values: Any) -> int:
    """Insert a ``queries`` row inside ``conn``'s transaction; return its id.

    ``values`` are the other columns (``source``, ``checksum``, ``mode``, ``scope``, counts ...).
    """
    return conn.execute(_INSERT_QUERY, {
        "run_id": run_id, "method": method, "params": json.dumps(params or {}, default=str, sort_keys=True),
        "started_at": utcnow(), **values}).scalar_one()


def record_query(
    db: Database,
    run_id: str | None,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    session_ids: Iterable[str] = (),
    dataset_ids: Iterable[str] = (),
    state_ids: Sequence[int | None] | None = None,
    read_here: bool = False,
    mode: str | None = None,
    revision_cutoff: str | None = None,
    scope: str | None = None,
    duration_s: float | None = None,
    error: str | None = None,
) -> int:
    """Record a search or list and the sessions and datasets it returned; return the query id.

    Each dataset is linked with the state it was in: ``state_ids[i]`` for ``dataset_ids[i]``
    when given (the ``state_id`` of the row the caller returned), else its current
    ``dataset_history`` row. With ``read_here`` the ids were read from this database (canonical
    and distinct) and are not checked again: the client's hot path. The links are written in
    bulk, a few statements whatever their number.
    """
    if read_here:
        sids, dids = list(session_ids), list(dataset_ids)
    else:
        sids = sorted({check_uuid(s, "session id") for s in session_ids})
        dids = sorted({check_uuid(d, "dataset id") for d in dataset_ids})
    if state_ids is not None and (len(state_ids) != len(dids) or not read_here):
        raise BadInputError("state_ids go with read_here=True and one state per dataset id "
                            f"({len(dids)} dataset ids, {len(state_ids)} state ids)")
    with db.writing() as conn:
        qid = new_query(conn, run_id, method, params, mode=mode, revision_cutoff=revision_cutoff, scope=scope,
                        duration_s=duration_s, error=error, n_sessions=len(sids), n_datasets=len(dids))
        if sids:   # (in key order: the index is then appended to, not written all over)
            db.dialect.link(conn, "sessions", {"qid": qid, "ids": sorted(sids)})
        if dids:
            if state_ids is None:
                db.dialect.link(conn, "datasets_current", {"qid": qid, "ids": sorted(dids)})
            else:
                pairs = sorted(zip(dids, state_ids))
                db.dialect.link(conn, "datasets", {"qid": qid, "ids": [d for d, _ in pairs],
                                                   "states": [s for _, s in pairs]})
    return qid


def record_access(db: Database, run_id: str, events: Sequence[dict[str, Any]]) -> list[int]:
    """Record a batch of load attempts in one transaction; return their event ids, in order.

    Each event is a dict with ``method`` and ``outcome`` and optionally ``dataset_id``,
    ``session_id``, ``rel_path``, ``requested_revision``, ``revision_cutoff``, ``scope``,
    ``path``, ``bytes``, ``detail``, ``event_time`` (default: now) and ``listed`` (default True:
    the load counts in the run's loaded-ids list). Each event is linked with the current
    state (``dataset_history`` row) of its dataset.
    """
    rows = _event_rows(events, utcnow())
    return db.dialect.insert_events(db, run_id, rows) if rows else []


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
                     get("rel_path"), get("requested_revision"), get("revision_cutoff"), get("scope"), get("path"),
                     get("bytes"), get("detail"), True if listed is None else bool(listed)))
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
    """Record files written from the store, with their size and sha256, in one transaction."""
    if not files:
        return
    values = [{"run_id": f.run_id, "kind": f.kind, "path": str(f.path), "rows": f.rows, "bytes": f.path.stat().st_size,
               "sha256": file_sha256(f.path), "params": json.dumps(f.params, default=str, sort_keys=True),
               "created_at": utcnow()} for f in files]
    with db.writing() as conn:
        conn.execute(exports.insert(), values)
