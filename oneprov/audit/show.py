"""One run, all it recorded about itself: ``oneprov show RUN``.

The run's context (script and sha256, git commit, dirty flag and remote, working directory,
argv, versions, the ``ONE_*`` settings in force), the tables it worked from (their source, origin,
creation date and checksum; or the Alyx base URL and tag), its counts of load outcomes per scope,
and the files it exported.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run("demo", label="fig1")
>>> show(store, run)["run"]["label"]
'fig1'
"""
from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from ..store import Store
from .runs import require_runs
from ..store.schema import access_events, exports, projects, queries, run_marks, runs

_JSON_COLUMNS = ("versions", "argv", "settings")


def show(store: Store, run_id: str) -> dict[str, Any]:
    """Everything recorded about one run (a run id: resolve names first with ``store.resolve_run``),
    as a JSON-ready dict: ``run`` (its row and context), ``tables`` (what it worked from),
    ``outcomes`` (load counts per scope and outcome), ``exports``, ``marks``.

    Parameters
    ----------
    store : Store
        The store.
    run_id : str
        The run's id.

    Returns
    -------
    dict
        ``run``: the run's row (id, project, label, status, times in UTC, user, host, pid, command,
        script, git state, cwd, and ``versions``, ``argv``, ``settings`` decoded from JSON), its
        ``status`` 'interrupted' when its process was killed. ``tables``: one dict per tables query
        it worked from (``query_id``, ``method``, ``source``, ``checksum``, ``mode``, ``sessions``,
        ``datasets``, ``origin``, ``date_created``, ``base_url``, ``tag``). ``queries``: how many
        queries it made. ``outcomes``: dicts of ``scope``, ``method``, ``outcome``, ``events`` (a
        count). ``exports``: dicts of ``kind``, ``path``, ``rows``, ``bytes``, ``sha256``,
        ``created_at``. ``marks``: dicts of ``kind``, ``marked_at``, ``scope``, ``detail``.

    Raises
    ------
    BadInputError
        No run has the id ``run_id``.
    DatabaseError
        The database cannot be read.
    """
    status = store.runs()
    with store.reading() as conn:
        row = conn.execute(sa.select(runs, projects.c.name.label("project"))
                           .join(projects, projects.c.id == runs.c.project_id).where(runs.c.id == run_id)).first()
        if row is None:
            require_runs(store, run_id)   # (raises)
        info = {k: v for k, v in row._asdict().items() if k not in ("project_id",)}
        for key in _JSON_COLUMNS:
            if isinstance(info.get(key), str):
                try:
                    info[key] = json.loads(info[key])
                except ValueError:
                    pass
        listed = status[status["run_id"] == run_id]
        if len(listed):
            info["status"] = listed["status"].iloc[0]   # ('interrupted' for a killed process)
        q, m = queries.c, run_marks.c
        used = {int(d) for d in conn.execute(sa.select(m.detail).where(m.run_id == run_id, m.kind == "tables"))
                .scalars() if d and d.isdigit()}
        rows = conn.execute(sa.select(q.id, q.method, q.source, q.checksum, q.mode, q.n_sessions, q.n_datasets,
                                      q.params)
                            .where(sa.or_(q.id.in_(sorted(used)), sa.and_(q.run_id == run_id, q.method.in_(
                                ("import_cache", "record_one")))), q.completed_at.is_not(None)).order_by(q.id)).fetchall()
        merges = [r for r in rows if r.method == "merge_tables"]
        tables = [
            {"query_id": r.id, "method": r.method, "source": r.source, "checksum": r.checksum, "mode": r.mode,
             "sessions": r.n_sessions, "datasets": r.n_datasets, **_origin(r.params)}
            for r in rows if r.method != "merge_tables" or r is merges[-1]]   # (a remote client's last tables)
        e = access_events.c
        outcomes = [{"scope": r.scope, "method": r.method, "outcome": r.outcome, "events": r.n}
                    for r in conn.execute(sa.select(e.scope, e.method, e.outcome, sa.func.count().label("n"))
                                          .where(e.run_id == run_id).group_by(e.scope, e.method, e.outcome)
                                          .order_by(e.scope, e.method, e.outcome))]
        x = exports.c
        written = [r._asdict() for r in conn.execute(
            sa.select(x.kind, x.path, x.rows, x.bytes, x.sha256, x.created_at).where(x.run_id == run_id).order_by(x.id))]
        marks = [r._asdict() for r in conn.execute(
            sa.select(m.kind, m.marked_at, m.scope, m.detail).where(m.run_id == run_id, m.kind != "tables").order_by(m.id))]
        n_queries = conn.execute(sa.select(sa.func.count()).where(q.run_id == run_id)).scalar_one()
    return {"run": info, "tables": tables, "queries": n_queries, "outcomes": outcomes, "exports": written,
            "marks": marks}


def _origin(params: str | None) -> dict[str, Any]:
    """Where imported tables came from: their metadata (origin, date_created, tags) and, for
    downloaded tables, the Alyx base URL and tag."""
    try:
        values = json.loads(params or "{}")
    except ValueError:
        return {}
    meta = values.get("metadata") or {}
    table_meta = meta.get("datasets") or meta.get("sessions") or {}
    origin = values.get("origin") or {}
    return {"origin": table_meta.get("origin"), "date_created": table_meta.get("date_created"),
            "base_url": origin.get("base_url"), "tag": origin.get("tag")}


__all__ = ["show"]
