"""The one check every audit question starts with: the run asked about exists."""
from __future__ import annotations

import sqlalchemy as sa

from ..errors import BadInputError
from ..store import Store
from ..store.schema import runs


def require_runs(store: Store, *run_ids: str) -> None:
    """Raise :class:`~oneprov.errors.BadInputError` naming the first of ``run_ids`` that is no run's id."""
    with store.reading() as conn:
        known = set(conn.execute(sa.select(runs.c.id).where(runs.c.id.in_(run_ids))).scalars())
    for run_id in run_ids:
        if run_id not in known:
            raise BadInputError(f"no run {run_id!r} (give a run id; store.resolve_run finds one by label or prefix)")
