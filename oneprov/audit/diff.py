"""What changed between two runs, record by record, and why: ``oneprov diff RUN_A RUN_B``.

A *dataset* is a file name in a collection of a session; each run's last successful load of it is
compared:

- ``only in A`` / ``only in B``: loaded by one run and not the other;
- ``other revision``: loaded at another revision, with the cause: ``cutoff`` (the runs asked for
  other revisions or ran with another ``ONE_REVISION_LAST_BEFORE``), ``default flag`` (the row one
  run loaded was flagged default for it and not for the other), ``QC`` (the other run's tables had
  QC that ONE's filter drops on it), else ``tables`` (the rows offered differed);
- ``hash changed`` / ``size changed`` / ``QC changed``: the same dataset row seen in another state;
- ``other dataset id``: the same path under another UUID;
- ``search``: searches with the same parameters (the ``cause`` column) that returned other sessions.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> diff(store, store.start_run("a"), store.start_run("b")).empty
True
"""
from __future__ import annotations

import json
from typing import Any

import pandas as pd
import sqlalchemy as sa

from ..store import Store
from .runs import require_runs
from ..store.records import held_by, with_returned
from ..store.schema import SUCCESS_OUTCOMES, access_events, dataset_records, queries, run_marks, session_records

#: The columns of :func:`diff`'s frame, in order.
COLUMNS = ["change", "cause", "session_id", "collection", "name", "a", "b", "dataset_id_a", "dataset_id_b"]
_DROPPED_BY_DEFAULT = ("CRITICAL",)


def diff(store: Store, run_a: str, run_b: str) -> pd.DataFrame:
    """The differences between runs ``run_a`` and ``run_b`` (run ids), one row each (see the
    module's text); columns :data:`COLUMNS`.

    Parameters
    ----------
    store : Store
        The store.
    run_a, run_b : str
        The ids of the two runs (resolve names first with ``store.resolve_run``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: ``change``, ``cause`` (why, for 'other revision'; the parameters,
        for 'search'), ``session_id``, ``collection``, ``name``, ``a`` and ``b`` (what each run saw:
        a rel_path, revision, hash, size, QC or count of sessions), ``dataset_id_a`` and
        ``dataset_id_b``. Missing values are None. Empty when the runs agree.

    Raises
    ------
    BadInputError
        ``run_a`` or ``run_b`` is no run's id.
    DatabaseError
        The database cannot be read.
    """
    require_runs(store, run_a, run_b)
    a, b = _loads(store, run_a), _loads(store, run_b)
    rows: list[tuple] = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            seen = x or y
            rows.append(("only in A" if y is None else "only in B", None, *key, seen["rel_path"] if x else None,
                         seen["rel_path"] if y else None, x and x["uuid"], y and y["uuid"]))
            continue
        if x["rel_path"] != y["rel_path"]:
            rows.append(("other revision", _cause(store, x, y), *key, x["revision"] or "(unrevised)",
                         y["revision"] or "(unrevised)", x["uuid"], y["uuid"]))
            continue
        if x["uuid"] != y["uuid"]:
            rows.append(("other dataset id", None, *key, x["uuid"], y["uuid"], x["uuid"], y["uuid"]))
            continue
        for field, change in (("hash", "hash changed"), ("file_size", "size changed"), ("qc", "QC changed")):
            if x[field] != y[field] and not (pd.isna(x[field]) and pd.isna(y[field])):
                rows.append((change, None, *key, _text(x[field]), _text(y[field]), x["uuid"], y["uuid"]))
    rows += _searches(store, run_a, run_b)
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(object)
    return frame.where(frame.notna(), None)


def _text(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _loads(store: Store, run_id: str) -> dict[tuple, dict]:
    e, d = access_events.c, dataset_records.c
    frame = store.frame(
        sa.select(e.id, e.run_id, e.requested_revision, e.revision_cutoff, d.uuid, d.session_uuid, d.collection, d.name,
                  d.rel_path, d.revision, d.hash, d.file_size, d.qc, d.default_revision)
        .join(dataset_records, d.id == e.record_id)
        .where(e.run_id == run_id, e.outcome.in_(SUCCESS_OUTCOMES)).order_by(e.id))
    frame = frame.astype(object).where(frame.notna(), None)   # (a missing value is None, never a truthy NaN)
    return {(r["session_uuid"], r["collection"], r["name"]): r for r in frame.to_dict("records")}


def _cause(store: Store, x: dict, y: dict) -> str:
    """Why two runs loaded other revisions of one dataset: the cutoff they asked for, else how each
    run's tables held the row the other run loaded."""
    asked = (x["requested_revision"] or x["revision_cutoff"], y["requested_revision"] or y["revision_cutoff"])
    if asked[0] != asked[1]:
        return f"cutoff ({asked[0] or 'none'} / {asked[1] or 'none'})"
    for row, run in ((x, y["run_id"]), (y, x["run_id"])):
        there = _in_tables(store, run, row)
        if there is not None and there["qc"] in _DROPPED_BY_DEFAULT and row["qc"] not in _DROPPED_BY_DEFAULT:
            return "QC"
        if there is not None and bool(there["default_revision"]) != bool(row["default_revision"]):
            return "default flag"
    return "tables"


def _in_tables(store: Store, run_id: str, row: dict) -> dict | None:
    """The state of a dataset row in the last tables ``run_id`` worked from (None: not there, or no tables)."""
    m, d = run_marks.c, dataset_records.c
    with store.reading() as conn:
        mark = conn.execute(sa.select(m.detail).where(m.run_id == run_id, m.kind == "tables")
                            .order_by(m.id.desc()).limit(1)).scalar()
        if not mark or not mark.isdigit():
            return None
        found = conn.execute(sa.select(d.qc, d.default_revision)
                             .where(held_by(dataset_records, int(mark)), d.uuid == row["uuid"],
                                    d.session_uuid == row["session_uuid"], d.rel_path == row["rel_path"])).first()
    return None if found is None else found._asdict()


def _searches(store: Store, run_a: str, run_b: str) -> list[tuple]:
    """Searches run by both with the same parameters whose sessions differ."""
    q, s = queries.c, session_records.c

    def found(run_id: str) -> dict[str, set[str]]:
        rows = store.frame(sa.select(q.id, q.params, s.uuid)
                           .select_from(with_returned(queries, q.id, session_records, outer=True))
                           .where(q.run_id == run_id, q.method == "search"))
        out: dict[str, set[str]] = {}
        for params, group in rows.groupby("params"):
            out[_normalised(params)] = set(group["uuid"].dropna())
        return out
    a, b = found(run_a), found(run_b)
    out = []
    for params in sorted(set(a) & set(b)):
        if a[params] != b[params]:
            out.append(("search", params, None, None, None, f"{len(a[params])} sessions",
                        f"{len(b[params])} sessions (+{len(b[params] - a[params])}, -{len(a[params] - b[params])})",
                        None, None))
    return out


def _normalised(params: str) -> str:
    values = json.loads(params or "{}")
    values.pop("offset", None)
    return json.dumps(values, sort_keys=True)


__all__ = ["COLUMNS", "diff"]
