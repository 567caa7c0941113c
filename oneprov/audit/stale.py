"""Which loads are stale: every (run, dataset) whose state now differs from what the run saw.

"Now" is the latest tables of the same source the run worked from: the newest complete import of
the same tables folder (or the newest merge of the same remote client's folder, or the same
one-api instance's tables). A database shared by several caches thus judges each run by its own
source, never by another cache's rows. For each dataset a run loaded (``loaded`` or
``download_only``), the reasons, in this order:

- ``removed``: the latest tables no longer hold the row;
- ``no longer exists``: they say its file no longer exists;
- ``now CRITICAL`` / ``now FAIL``: its QC rose to that level (ONE's default filter drops CRITICAL);
- ``no longer the default revision``;
- ``another revision now chosen``: with the run's own cutoff (or none), ONE would now load another
  revision of the same collection and name;
- ``hash changed`` / ``size changed``.

>>> from oneprov import open_store
>>> stale(open_store(":memory:")).empty
True
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import sqlalchemy as sa

from ..alf import QC_LEVELS
from ..store import Store
from ..store.records import held_by
from ..store.revisions import chosen_ids
from ..store.schema import SUCCESS_OUTCOMES, access_events, dataset_records, projects, queries, run_marks, runs

#: Queries whose records are a client's tables (a source's successive states).
TABLE_METHODS = ("import_cache", "merge_tables", "record_one", "edit_cache")
#: The columns of :func:`stale`'s frame, in order.
COLUMNS = ["run_id", "label", "project", "dataset_id", "session_id", "rel_path", "reason", "seen", "now",
           "source", "loaded_at"]


def stale(store: Store, *, project: str | None = None, run: str | None = None, since: Any = None,
          include_retired: bool = False) -> pd.DataFrame:
    """One row per (run, dataset, reason) whose current state differs from what the run saw (see the
    module's text); columns :data:`COLUMNS`. ``run`` is a run id (resolve names first with
    ``store.resolve_run``); ``since`` keeps runs started at or after that date or time.

    Parameters
    ----------
    store : Store
        The store.
    project : str, optional
        Only the runs of this project. Default None: every project.
    run : str, optional
        Only this run (a run id). Default None: every run.
    since : datetime.date, datetime.datetime or str, optional
        Only the runs started at or after this time (UTC; a date is its midnight; text in ISO 8601,
        e.g. '2024-04-01' or '2024-04-01T12:00:00'). Default None: every run.
    include_retired : bool, optional
        Include retired runs. Default False.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: ``run_id``, ``label``, ``project``, ``dataset_id``, ``session_id``,
        ``rel_path``, ``reason``, ``seen`` (the value the run saw), ``now`` (the value today),
        ``source`` (the tables' source) and ``loaded_at`` (the run's last load of it, UTC), ordered
        by ``loaded_at``. Empty when nothing is stale.

    Raises
    ------
    ValueError
        ``since`` is text that is not an ISO 8601 date or time.
    DatabaseError
        The database cannot be read.
    """
    loads = _loads(store, project, run, since, include_retired)
    if loads.empty:
        return pd.DataFrame(columns=COLUMNS)
    with store.reading() as conn:
        holders = _latest_tables(conn, loads["record_id"].unique().tolist())
        loads = loads.merge(holders, on="record_id", how="inner")
        now = _rows_now(conn, loads)
        out = []
        for row in loads.itertuples(index=False):
            current = now.get((row.latest_query, row.dataset_id, row.session_id, row.rel_path))
            for reason, seen, today in _reasons(row, current):
                out.append((row.run_id, row.label, row.project, row.dataset_id, row.session_id, row.rel_path,
                            reason, seen, today, row.source, row.event_time))
        out += _revision_changes(conn, loads, now)
    frame = pd.DataFrame(out, columns=COLUMNS).drop_duplicates()
    return frame.sort_values(["loaded_at", "run_id", "rel_path", "reason"], kind="stable").reset_index(drop=True)


def _loads(store: Store, project: str | None, run: str | None, since: Any, include_retired: bool) -> pd.DataFrame:
    e, d = access_events.c, dataset_records.c
    stmt = (sa.select(e.run_id, runs.c.label, projects.c.name.label("project"), e.record_id, e.event_time,
                      e.requested_revision, e.revision_cutoff, d.uuid.label("dataset_id"),
                      d.session_uuid.label("session_id"), d.rel_path, d.collection, d.name, d.revision,
                      d.qc, d.default_revision, d.hash, d.file_size, d.exists)
            .join(dataset_records, d.id == e.record_id).join(runs, runs.c.id == e.run_id)
            .join(projects, projects.c.id == runs.c.project_id)
            .where(e.outcome.in_(SUCCESS_OUTCOMES)))
    if project is not None:
        stmt = stmt.where(projects.c.name == project)
    if run is not None:
        stmt = stmt.where(e.run_id == run)
    if since is not None:
        stmt = stmt.where(runs.c.started_at >= _as_datetime(since))
    if not include_retired:
        stmt = stmt.where(~sa.exists().where(run_marks.c.run_id == runs.c.id, run_marks.c.kind == "retired"))
    frame = store.frame(stmt)
    frame = frame.astype(object).where(frame.notna(), None)   # (a missing value is None, never a truthy NaN)
    # the latest load of each (run, dataset row) is what the run used last
    return frame.sort_values("event_time").drop_duplicates(["run_id", "record_id"], keep="last")


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    return dt.datetime.fromisoformat(str(value).replace("Z", ""))


def _latest_tables(conn: sa.Connection, record_ids: list[int]) -> pd.DataFrame:
    """For each record: the source of the newest tables query holding it, and that source's latest
    complete tables query (``latest_query``)."""
    q, d = queries.c, dataset_records.c
    # (each record against each tables query: one seek in the query's spans)
    held = conn.execute(
        sa.select(d.id, q.id, q.method, q.source).select_from(dataset_records).join(queries, sa.true())
        .where(d.id.in_(record_ids), q.method.in_(TABLE_METHODS), q.completed_at.is_not(None),
               held_by(dataset_records, q.id))).fetchall()
    frame = pd.DataFrame(held, columns=["record_id", "query_id", "method", "source"])
    if frame.empty:
        return pd.DataFrame(columns=["record_id", "source", "latest_query"])
    frame = frame.sort_values("query_id").drop_duplicates("record_id", keep="last")
    latest = {}
    for method, source in set(zip(frame["method"], frame["source"])):
        latest[(method, source)] = conn.execute(
            sa.select(sa.func.max(q.id)).where(q.method == method, q.source == source,
                                               q.completed_at.is_not(None), q.error.is_(None))).scalar()
    frame["latest_query"] = [latest[(m, s)] for m, s in zip(frame["method"], frame["source"])]
    return frame[["record_id", "source", "latest_query"]]


def _rows_now(conn: sa.Connection, loads: pd.DataFrame) -> dict[tuple, Any]:
    """The records of the latest tables for the loaded rows' sessions: (query, uuid, session, rel_path) -> row."""
    d = dataset_records.c
    out = {}
    for latest, group in loads.groupby("latest_query"):
        rows = conn.execute(
            sa.select(d.id, d.uuid, d.session_uuid, d.rel_path, d.collection, d.name, d.revision, d.qc,
                      d.default_revision, d.hash, d.file_size, d.exists)
            .where(held_by(dataset_records, int(latest)),
                   d.session_uuid.in_(group["session_id"].unique().tolist()))).fetchall()
        for r in rows:
            out[(int(latest), r.uuid, r.session_uuid, r.rel_path)] = r
        out[("sessions", int(latest))] = rows
    return out


def _reasons(seen: Any, now: Any) -> list[tuple[str, Any, Any]]:
    if now is None:
        return [("removed", seen.rel_path, None)]
    out = []
    if seen.exists and not now.exists:
        out.append(("no longer exists", True, False))
    if now.qc in ("CRITICAL", "FAIL") and QC_LEVELS[now.qc] > QC_LEVELS[seen.qc]:
        out.append((f"now {now.qc}", seen.qc, now.qc))
    if seen.default_revision and now.default_revision is False:
        out.append(("no longer the default revision", True, False))
    if (seen.hash or None) != (now.hash or None) and seen.hash and now.hash:
        out.append(("hash changed", seen.hash, now.hash))
    if seen.file_size is not None and now.file_size is not None and not pd.isna(seen.file_size) \
            and int(seen.file_size) != int(now.file_size):
        out.append(("size changed", int(seen.file_size), int(now.file_size)))
    return out


def _revision_changes(conn: sa.Connection, loads: pd.DataFrame, now: dict) -> list[tuple]:
    """Loads for which ONE, with the run's own revision request or cutoff, would now choose another
    revision of the same dataset (collection and name) in the latest tables."""
    out = []
    for row in loads.itertuples(index=False):
        rows = [r for r in now.get(("sessions", int(row.latest_query)), [])
                if r.session_uuid == row.session_id and r.collection == row.collection and r.name == row.name
                and r.qc != "CRITICAL"]
        if not rows:
            continue
        wanted = row.requested_revision or row.revision_cutoff or None
        try:
            chosen = chosen_ids(conn, [r.id for r in rows], wanted)
        except Exception:   # (several rows flagged default: ONE itself would refuse to choose)
            continue
        picked = [r for r in rows if r.id in chosen]
        if picked and picked[0].rel_path != row.rel_path:
            out.append((row.run_id, row.label, row.project, row.dataset_id, row.session_id, row.rel_path,
                        "another revision now chosen", row.revision, picked[0].revision, row.source, row.event_time))
    return out


__all__ = ["COLUMNS", "TABLE_METHODS", "stale"]
