"""What a provenance export describes: the runs of a run, a scope or a label, their loads and files.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run("demo", label="paper")
>>> select(store, label="paper").runs[0]["id"] == run
True
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import BadInputError
from ..store import Store
from ..store.schema import SUCCESS_OUTCOMES, access_events, dataset_records, exports, projects, runs


@dataclass
class Selection:
    """Runs (dicts of their rows), their successful loads (with the dataset state each loaded) and exports."""

    what: str                  # "run <id>", "scope <name>", "label <name>"
    runs: list[dict[str, Any]]
    loads: list[dict[str, Any]]
    exports: list[dict[str, Any]]

    def datasets(self) -> list[dict[str, Any]]:
        """Each dataset record loaded, once (the state a run saw)."""
        seen: dict[int, dict] = {}
        for load in self.loads:
            seen.setdefault(load["record_id"], load)
        return list(seen.values())


def select(store: Store, *, run: str | None = None, scope: str | None = None, label: str | None = None) -> Selection:
    """The runs named by exactly one of ``run`` (a run id), ``scope`` (a scope name: the loads made
    inside it, in every run) or ``label`` (every run with it); with their loads and exports."""
    given = [(k, v) for k, v in (("run", run), ("scope", scope), ("label", label)) if v is not None]
    if len(given) != 1:
        raise BadInputError("name what to export with exactly one of --run, --scope or --label")
    kind, value = given[0]
    e, d, r = access_events.c, dataset_records.c, runs.c
    stmt = (sa.select(e.id.label("event_id"), e.run_id, e.event_time, e.method, e.outcome, e.scope, e.record_id,
                      e.bytes, e.requested_revision, e.revision_cutoff, d.uuid, d.session_uuid, d.rel_path,
                      d.collection, d.revision, d.name, d.hash, d.file_size, d.qc, d.default_revision)
            .join(dataset_records, d.id == e.record_id).join(runs, r.id == e.run_id)
            .where(e.outcome.in_(SUCCESS_OUTCOMES)).order_by(e.id))
    stmt = stmt.where({"run": r.id == value, "scope": e.scope == value, "label": r.label == value}[kind])
    with store.reading() as conn:
        loads = [row._asdict() for row in conn.execute(stmt)]
        run_ids = sorted({load["run_id"] for load in loads} | (
            set(conn.execute(sa.select(r.id).where(r.id == value if kind == "run" else r.label == value)).scalars())
            if kind != "scope" else set()))
        found = [row._asdict() for row in conn.execute(
            sa.select(runs, projects.c.name.label("project")).join(projects, projects.c.id == r.project_id)
            .where(r.id.in_(run_ids)).order_by(r.started_at))]
        written = [row._asdict() for row in conn.execute(
            sa.select(exports).where(exports.c.run_id.in_(run_ids)).order_by(exports.c.id))]
    if not found:
        raise BadInputError(f"no run matches {kind} {value!r}")
    for row in found:
        for key in ("versions", "argv", "settings"):
            if isinstance(row.get(key), str):
                try:
                    row[key] = json.loads(row[key])
                except ValueError:
                    pass
    return Selection(f"{kind} {value}", found, loads, written)


__all__ = ["Selection", "select"]
