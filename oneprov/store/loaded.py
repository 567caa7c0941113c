"""The UUIDs of the datasets (or sessions) that runs loaded: ONE's loaded-ids list, as a query.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> loaded_ids(store, run="no such run"), loaded_ids(store).text
([], '')
"""
from __future__ import annotations

import sqlalchemy as sa

from .engine import Database
from .schema import SUCCESS_OUTCOMES, access_events, projects, run_marks, runs

#: Ids joined into one text per query by :func:`loaded_ids` (~37 bytes each).
LOADED_IDS_CHUNK = 2_000_000


class LoadedIds(list):
    """The sorted, distinct ids (a list of str), and ``text``: the same ids, one per line, no final newline."""

    text: str = ""


def loaded_ids(
    db: Database,
    *,
    run: str | None = None,
    project: str | None = None,
    label: str | None = None,
    scope: str | None = None,
    sessions_only: bool = False,
    since_clear: bool = False,
    listed_only: bool = False,
) -> LoadedIds:
    """The sorted UUIDs of datasets (or their sessions) successfully loaded.

    Restrict to a run id, a project, a run label or a scope; ``since_clear`` and ``listed_only``
    keep only the loads after the run's latest 'clear_list' mark that were made with
    ``record_loaded`` on (together: the run's *current list*, ONE's ``save_loaded_ids``).

    The database joins the ids into text (``group_concat``/``string_agg``), in chunks of
    :data:`LOADED_IDS_CHUNK`: a million rows fetched one by one through the driver would cost
    more than the query. A run's loads are read from its index on access_events alone, in id
    order, duplicates skipped as they come.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.loaded_ids(...)``).
    run : str, optional
        Only the loads of this run (a run id). Default None: every run.
    project : str, optional
        Only the loads of runs of this project. Default None.
    label : str, optional
        Only the loads of runs with this label. Default None.
    scope : str, optional
        Only the loads made in this scope. Default None.
    sessions_only : bool, optional
        Return the sessions' UUIDs instead of the datasets'. Default False.
    since_clear : bool, optional
        Only the loads after each run's latest 'clear_list' mark. Default False.
    listed_only : bool, optional
        Only the loads made with ``record_loaded`` on. Default False.

    Returns
    -------
    LoadedIds
        The sorted, distinct UUIDs (a list of str); its ``text`` holds them one per line.

    Raises
    ------
    DatabaseError
        The database cannot be read.
    """
    e = access_events.c
    column = e.session_id if sessions_only else e.dataset_id   # (a load event names its dataset's session)
    where = [e.outcome.in_(SUCCESS_OUTCOMES), e.dataset_id.is_not(None)]
    if sessions_only:
        where.append(e.session_id.is_not(None))
    if run is not None:
        where.append(e.run_id == run)
    if project is not None or label is not None:
        of_runs = sa.select(runs.c.id)
        if project is not None:
            of_runs = of_runs.join(projects, projects.c.id == runs.c.project_id).where(projects.c.name == project)
        if label is not None:
            of_runs = of_runs.where(runs.c.label == label)
        where.append(e.run_id.in_(of_runs))
    if scope is not None:
        where.append(e.scope == scope)
    if listed_only:
        where.append(e.listed == sa.true())
    ids = LoadedIds()
    texts: list[str] = []
    with db.reading() as conn:
        if since_clear:
            marks = run_marks.c
            if run is not None:  # one run: its last clear, once, rather than a lookup per event
                last_clear = conn.execute(sa.select(sa.func.max(marks.marked_at))
                                          .where(marks.run_id == run, marks.kind == "clear_list")).scalar()
                if last_clear is not None:
                    where.append(e.event_time > last_clear)
            else:
                last_clear = (sa.select(sa.func.max(marks.marked_at))
                              .where(marks.run_id == e.run_id, marks.kind == "clear_list").scalar_subquery())
                where.append(sa.or_(last_clear.is_(None), e.event_time > last_clear))
        after = None
        while True:
            chunk = (sa.select(column.label("id")).where(*where)
                     .distinct().order_by(column).limit(LOADED_IDS_CHUNK))
            if after is not None:
                chunk = chunk.where(column > after)
            chunk = chunk.subquery()
            text = conn.execute(sa.select(db.dialect.join_lines(chunk.c.id))).scalar()
            if not text:
                break
            some = text.split("\n")
            ids.extend(some)
            texts.append(text)
            if len(some) < LOADED_IDS_CHUNK:
                break
            after = some[-1]
    ids.text = "\n".join(texts)
    return ids
