"""Which ``ONE_REVISION_LAST_BEFORE`` dates reproduce a run: ``oneprov cutoff RUN``.

With a cutoff ``X``, ONE loads, of each dataset (a file name in a collection of a session), the
greatest revision ``<= X`` (plain string order; the unrevised file, ``''``, always a candidate).
A load of revision ``r`` is reproduced by every ``X`` from ``r`` up to, not including, the next
greater revision among the candidates the run's tables held (QC at most FAIL, ONE's default).
The run is reproduced by the dates common to all its loads; when there are none, the cutoff that
reproduces most loads is proposed and the loads it does not explain are listed. Loads whose
revision was chosen by the default flag although a later revision existed are listed too: without
a cutoff ONE took the default, with any cutoff it takes the last one before.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> cutoff(store, store.start_run("demo"))["reproducible"]
True
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ..store import Store
from .runs import require_runs
from ..store.records import held_by
from ..store.schema import SUCCESS_OUTCOMES, access_events, dataset_records, run_marks

#: QC levels a default load keeps (ONE's ``qc=FAIL``).
_KEPT = ("NOT_SET", "PASS", "WARNING", "FAIL")
#: A cutoff before every revision, when only unrevised files were loaded and later revisions exist.
EARLIEST = "0000-00-00"


def cutoff(store: Store, run_id: str) -> dict[str, Any]:
    """The cutoff dates that reproduce every revision ``run_id`` loaded (a JSON-ready dict):
    ``from`` (inclusive) and ``before`` (exclusive, None: no upper bound) when ``reproducible``;
    ``proposed``, a cutoff to use; ``unexplained``, the loads it does not reproduce; ``default_not_last``,
    the loads of a default revision that a later revision would replace under a cutoff.

    Parameters
    ----------
    store : Store
        The store.
    run_id : str
        The run's id (resolve names first with ``store.resolve_run``).

    Returns
    -------
    dict
        ``run_id``; ``reproducible`` (bool); ``from`` and ``before`` (revision names, e.g.
        '2024-04-01', or None); ``proposed`` (a value for ``ONE_REVISION_LAST_BEFORE``:
        :data:`EARLIEST` for before every revision, None when no cutoff is needed); ``loads`` (how
        many datasets the run loaded); ``unexplained`` (dicts of ``dataset_id``, ``session_id``,
        ``rel_path``, ``revision``, ``reproduced_from``, ``reproduced_before``); ``default_not_last``
        (dicts of ``dataset_id``, ``session_id``, ``rel_path``, ``revision``, ``last_revision``). A
        run that loaded nothing is reproducible, with no dates.

    Raises
    ------
    BadInputError
        ``run_id`` is no run's id.
    DatabaseError
        The database cannot be read.
    """
    require_runs(store, run_id)
    loads = _loads(store, run_id)
    intervals = []
    default_not_last = []
    with store.reading() as conn:
        for load in loads:
            later = sorted(r for r in _candidate_revisions(conn, load) if r > load["revision"])
            intervals.append((load, load["revision"], later[0] if later else None))
            if load["default_revision"] and later:
                default_not_last.append({**_public(load), "last_revision": later[-1]})
    if not intervals:
        return {"run_id": run_id, "reproducible": True, "from": None, "before": None, "proposed": None,
                "loads": 0, "unexplained": [], "default_not_last": []}
    low = max(lo for _, lo, _ in intervals)
    highs = [hi for _, _, hi in intervals if hi is not None]
    high = min(highs) if highs else None
    reproducible = high is None or low < high
    if reproducible:
        proposed = low or (EARLIEST if high is not None else None)
        unexplained = []
    else:   # the cutoff (one of the loaded revisions) that explains the most loads
        def explained(x: str) -> int:
            return sum(lo <= x and (hi is None or x < hi) for _, lo, hi in intervals)
        proposed = max(sorted({lo or EARLIEST for _, lo, _ in intervals}), key=explained)
        unexplained = [{**_public(load), "reproduced_from": lo or None, "reproduced_before": hi}
                       for load, lo, hi in intervals if not (lo <= proposed and (hi is None or proposed < hi))]
    return {"run_id": run_id, "reproducible": reproducible, "from": (low or None) if reproducible else None,
            "before": high if reproducible else None, "proposed": proposed, "loads": len(intervals),
            "unexplained": unexplained, "default_not_last": default_not_last}


def _public(load: dict) -> dict:
    return {k: load[k] for k in ("dataset_id", "session_id", "rel_path", "revision")}


def _loads(store: Store, run_id: str) -> list[dict]:
    """The run's successful loads (the latest of each dataset row), with the tables query in use then."""
    e, d, m = access_events.c, dataset_records.c, run_marks.c
    with store.reading() as conn:
        marks = [(r.marked_at, int(r.detail)) for r in conn.execute(
            sa.select(m.marked_at, m.detail).where(m.run_id == run_id, m.kind == "tables").order_by(m.id))
            if r.detail and r.detail.isdigit()]
        rows = conn.execute(
            sa.select(e.event_time, e.record_id, d.uuid, d.session_uuid, d.rel_path, d.collection, d.name,
                      d.revision, d.default_revision)
            .join(dataset_records, d.id == e.record_id)
            .where(e.run_id == run_id, e.outcome.in_(SUCCESS_OUTCOMES)).order_by(e.id)).fetchall()
    latest = {}
    for r in rows:
        tables = next((q for at, q in reversed(marks) if at <= r.event_time), marks[0][1] if marks else None)
        latest[r.record_id] = {"dataset_id": r.uuid, "session_id": r.session_uuid, "rel_path": r.rel_path,
                               "collection": r.collection, "name": r.name, "revision": r.revision,
                               "default_revision": bool(r.default_revision), "tables": tables,
                               "record_id": r.record_id}
    return list(latest.values())


def _candidate_revisions(conn: sa.Connection, load: dict) -> set[str]:
    """The revisions of the load's dataset (session, collection, name) in the tables the run used
    (without tables on record: every record of it), QC at most FAIL."""
    d = dataset_records.c
    stmt = sa.select(d.revision).where(d.session_uuid == load["session_id"], d.collection == load["collection"],
                                       d.name == load["name"], d.qc.in_(_KEPT))
    if load["tables"] is not None:
        stmt = stmt.where(held_by(dataset_records, load["tables"]))
    return set(conn.execute(stmt).scalars()) | {load["revision"]}


__all__ = ["EARLIEST", "cutoff"]
