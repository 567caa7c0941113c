"""Runs: one analysis execution each, in a project, from its start to its end.

A run is 'running' until it is closed ('finished', or 'failed' with the error that ended it); a
killed process leaves it 'running', shown as 'interrupted' once its process is gone. Marks add to
a run without changing it: a cleared loaded-ids list, a retirement with its reason.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = start_run(store, "demo", label="fig1")
>>> resolve_run(store, "fig1") == run
True
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import socket
import sys
import uuid
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import settings
from ..files import process_alive
from ..errors import BadInputError
from ..secrets import scrub, scrub_argv
from .engine import Database
from .schema import SUCCESS_OUTCOMES, access_events, projects, queries, run_marks, runs, utcnow


def start_run(
    db: Database,
    project: str | None = None,
    *,
    label: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    revision_cutoff: str | None = None,
    versions: dict[str, str] | None = None,
    context: dict[str, Any] | None = None,
) -> str:
    """Record a new run (status 'running') and return its id, a new UUID.

    The run also records its user, host, process id, command line (secrets hidden) and start time.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.start_run(...)``).
    project : str, optional
        The run's project, created on first use. Default None: ``$ONEPROV_PROJECT``, else "default".
    label : str, optional
        A name for the run (e.g. "fig1"); :func:`resolve_run` finds a run by it. Labels need not be
        unique. Default None.
    cache_dir : str or os.PathLike, optional
        The ONE cache folder the run reads from. Default None.
    base_url : str, optional
        The Alyx base URL of a remote client (a password in it is hidden). Default None.
    revision_cutoff : str, optional
        The revision cutoff in force (``$ONE_REVISION_LAST_BEFORE``, e.g. "2024-04-01"). Default None.
    versions : dict of str to str, optional
        Package versions to record, added to those of Python and oneprov (and of ``context``);
        these win. Default None.
    context : dict of str to object, optional
        What the run records about itself (:func:`oneprov.context.run_context`: script path and
        sha256, git commit, dirty flag and remote, cwd, argv, settings, versions), already free of
        secrets. Keys other than these are ignored. Default None.

    Returns
    -------
    str
        The new run's id, a lowercase UUID.

    Raises
    ------
    BadInputError
        ``project`` is blank.
    DatabaseError
        The database cannot be written.
    """
    project = settings.project(project)
    run_id = str(uuid.uuid4())
    context = dict(context or {})
    versions = {"python": platform.python_version(), "oneprov": _version(), **context.pop("versions", {}),
                **(versions or {})}
    columns = {k: v for k, v in context.items() if k in _CONTEXT_COLUMNS}
    with db.writing() as conn:
        project_id = _project_id(db, conn, project)
        conn.execute(runs.insert().values(
            id=run_id, project_id=project_id, label=label, status="running", started_at=utcnow(),
            user_name=_user(), host=socket.gethostname(), pid=os.getpid(),
            command=scrub_argv(sys.argv)[:4000], versions=json.dumps(versions),
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            base_url=scrub(base_url) if base_url else None, revision_cutoff=revision_cutoff,
            db_role=db.dialect.current_role(conn), **columns,
        ))
    return run_id


#: The ``runs`` columns of a run's context (schema 0008).
_CONTEXT_COLUMNS = ("script_path", "script_sha256", "git_commit", "git_dirty", "git_remote", "cwd", "argv", "settings")


def _project_id(db: Database, conn: Connection, name: str) -> int:
    conn.execute(db.dialect.insert(projects).values(name=name, created_at=utcnow())
                 .on_conflict_do_nothing(index_elements=["name"]))
    return conn.execute(sa.select(projects.c.id).where(projects.c.name == name)).scalar_one()


def finish_run(db: Database, run_id: str, status: str = "finished", error: str | None = None) -> None:
    """Close a run: 'finished', or 'failed' with the error that ended it.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.finish_run(...)``).
    run_id : str
        The id of a run that is still 'running'.
    status : {'finished', 'failed'}, optional
        How the run ended. Default 'finished'.
    error : str, optional
        The error that ended it (e.g. "RuntimeError: message"); secrets in it are hidden. Default None.

    Returns
    -------
    None

    Raises
    ------
    BadInputError
        ``status`` is neither 'finished' nor 'failed', or no run ``run_id`` is 'running' (it does
        not exist, or was closed already). Nothing was changed.
    DatabaseError
        The database cannot be written.
    """
    if status not in ("finished", "failed"):
        raise BadInputError(f"unknown run status {status!r}: expected 'finished' or 'failed'")
    with db.writing() as conn:
        done = conn.execute(runs.update().where(runs.c.id == run_id, runs.c.status == "running")
                            .values(status=status, finished_at=utcnow(), error=scrub(error) if error else error))
        if done.rowcount != 1:
            raise BadInputError(f"no running run {run_id!r}")


def mark(db: Database, run_id: str, kind: str, *, scope: str | None = None, detail: str | None = None) -> None:
    """Append a mark to a run (e.g. 'clear_list' when the loaded-ids list is cleared).

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.mark(...)``).
    run_id : str
        The id of the run.
    kind : str
        What the mark says: 'clear_list' (the loaded-ids list was cleared), 'tables' (the run now
        answers from the tables of the query whose id is ``detail``), 'retired' (see :func:`retire_run`).
    scope : str, optional
        The scope in force when the mark was made. Default None.
    detail : str, optional
        Free text about the mark; secrets in it are hidden. Default None.

    Returns
    -------
    None

    Raises
    ------
    DatabaseError
        The database cannot be written, or no run has the id ``run_id``.
    """
    with db.writing() as conn:
        conn.execute(run_marks.insert().values(run_id=run_id, marked_at=utcnow(), kind=kind, scope=scope,
                                               detail=scrub(detail) if detail else detail))


def retire_run(db: Database, run_id: str, reason: str) -> None:
    """Retire a run (e.g. one left 'running' by a killed process, or one found wrong).

    Retiring adds a 'retired' mark with the reason; nothing of the run is changed or deleted.
    Retired runs are left out of :func:`oneprov.audit.stale` unless asked for.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.retire_run(...)``).
    run_id : str
        The id of the run.
    reason : str
        Why the run is retired (not blank); stripped, and secrets in it hidden.

    Returns
    -------
    None

    Raises
    ------
    BadInputError
        ``reason`` is blank, or no run has the id ``run_id``. Nothing was changed.
    DatabaseError
        The database cannot be written.
    """
    if not reason or not reason.strip():
        raise BadInputError("retiring a run needs a reason")
    with db.writing() as conn:
        if conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise BadInputError(f"no run {run_id!r}")
        conn.execute(run_marks.insert().values(run_id=run_id, marked_at=utcnow(), kind="retired",
                                               detail=scrub(reason.strip())))


def list_runs(db: Database, project: str | None = None) -> pd.DataFrame:
    """Every run, newest first, with its project, counts of loads and queries, whether it was retired,
    and its script and git commit (and whether the working tree differed from it).

    ``status`` is running, finished or failed as recorded, or 'interrupted' for a run still
    'running' whose process (on this host) no longer exists: it was killed.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.runs(...)``).
    project : str, optional
        Only the runs of this project. Default None: every run.

    Returns
    -------
    pandas.DataFrame
        One row per run, newest first, with columns ``run_id``, ``project``, ``label``, ``status``,
        ``started_at``, ``finished_at`` (UTC, without a time zone), ``user_name``, ``host``, ``pid``,
        ``loads`` (successful loads), ``queries``, ``retired`` (bool), ``script_path``, ``git_commit``
        and ``git_dirty``.

    Raises
    ------
    DatabaseError
        The database cannot be read.
    """
    loads = (sa.select(sa.func.count()).where(access_events.c.run_id == runs.c.id,
                                              access_events.c.outcome.in_(SUCCESS_OUTCOMES))
             .scalar_subquery())
    n_queries = sa.select(sa.func.count()).where(queries.c.run_id == runs.c.id).scalar_subquery()
    retired = sa.exists().where(run_marks.c.run_id == runs.c.id, run_marks.c.kind == "retired")
    stmt = (sa.select(runs.c.id.label("run_id"), projects.c.name.label("project"), runs.c.label,
                      runs.c.status, runs.c.started_at, runs.c.finished_at, runs.c.user_name,
                      runs.c.host, runs.c.pid, loads.label("loads"), n_queries.label("queries"),
                      retired.label("retired"), runs.c.script_path, runs.c.git_commit, runs.c.git_dirty)
            .join(projects, projects.c.id == runs.c.project_id)
            .order_by(runs.c.started_at.desc(), runs.c.id))
    if project is not None:
        stmt = stmt.where(projects.c.name == project)
    frame = db.frame(stmt)
    # A killed process cannot close its run: show it as interrupted when its process is gone.
    host = socket.gethostname()
    gone = [status == "running" and h == host and not process_alive(pid)
            for status, h, pid in zip(frame["status"], frame["host"], frame["pid"])]
    frame.loc[gone, "status"] = "interrupted"
    return frame


def resolve_run(db: Database, run: str, project: str | None = None) -> str:
    """The run id that ``run`` names, by one rule, first match wins: 'last' (the newest run); an
    exact run id; an exact label (the newest run with it); a unique prefix of a run id. Several
    runs under one prefix, or none at all, is an error that names them.

    A label is tried before a prefix, so that a label that looks like hex ('b', '2024', 'cafe')
    names its own run, never another whose id happens to start with it.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.resolve_run(...)``).
    run : str
        'last', a run id, a label or a prefix of a run id (surrounding spaces are ignored; ids and
        prefixes in any case).
    project : str, optional
        Look only among the runs of this project. Default None: every run.

    Returns
    -------
    str
        The run's id.

    Raises
    ------
    BadInputError
        No run matches ``run``, or several runs' ids start with it (the message names up to 10).
    DatabaseError
        The database cannot be read.
    """
    stmt = sa.select(runs.c.id, runs.c.label).join(projects, projects.c.id == runs.c.project_id)
    if project is not None:
        stmt = stmt.where(projects.c.name == project)
    newest = stmt.order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(1)
    text = run.strip()
    with db.reading() as conn:
        if text == "last":
            found = conn.execute(newest).all()
        else:
            found = conn.execute(stmt.where(runs.c.id == text.lower())).all() \
                or conn.execute(newest.where(runs.c.label == text)).all() \
                or conn.execute(stmt.where(runs.c.id.startswith(text.lower(), autoescape=True))
                                .order_by(runs.c.started_at)).all()
    where = f" in project {project!r}" if project is not None else ""
    if not found:
        raise BadInputError(f"no run{where} has the id, label or id prefix {run!r}")
    if len(found) > 1:
        names = ", ".join(f"{r.id}" + (f" ({r.label})" if r.label else "") for r in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise BadInputError(f"{run!r} is ambiguous: the ids of {len(found)} runs{where} start with it: {names}{more}; "
                            "give more characters of the id")
    return found[0].id


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return None


def _version() -> str:
    from .. import __version__
    return __version__
