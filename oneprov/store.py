"""The store: one provenance database, its transactional write API and its read API.

Every recording call (a run started, a query with its results, a batch of load events, an import of
cache tables) is one transaction: all of it is in the database, or none of it.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run(project="demo")
>>> store.runs()["project"].tolist()
['demo']
"""
from __future__ import annotations

import getpass
import hashlib
import itertools
import json
import os
import platform
import queue
import re
import socket
import sqlite3
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL
from tqdm.auto import tqdm

from . import database, revisions, tables
from .alf import check_uuid
from .errors import BadInputError, DatabaseError
from .schema import (
    SUCCESS_OUTCOMES, access_events, dataset_history, datasets, exports, projects, queries,
    query_datasets, query_sessions, revisions as revisions_table, run_marks, runs, sessions,
)

#: Rows read from a datasets table and written per statement batch during an import.
IMPORT_BATCH = 100_000
#: Ids joined into one text per query by :meth:`Store.loaded_ids` (~37 bytes each).
LOADED_IDS_CHUNK = 2_000_000
#: SQLite page cache of an import's connection, in MiB (see :func:`_import_cache_size`).
IMPORT_CACHE_MIB = 256


def utcnow() -> datetime:
    """Now, in UTC, without a time zone (the database's convention)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def open_store(db: str | os.PathLike | URL | None = None, *, upgrade: bool = True) -> "Store":
    """Open the provenance database ``db`` (a path or SQLAlchemy URL; default ``$ONEPROV_DB``).

    A new SQLite file is created and migrated to the newest schema; an older schema is upgraded; a
    schema newer than this oneprov knows is refused with :class:`~oneprov.SchemaVersionError`.
    With ``upgrade=False`` an out-of-date schema is refused instead of upgraded.
    """
    database.preflight(db)
    engine = database.create_engine(db)
    try:
        if upgrade:
            database.upgrade(engine)
        else:
            status = database.schema_status(engine)
            if not status.up_to_date:
                raise DatabaseError(f"database {database.redact(engine.url)} is at schema version "
                                    f"{status.current}, not {status.head}: run `oneprov db upgrade`")
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


@dataclass(frozen=True)
class ImportResult:
    """What an import of cache tables did."""

    query_id: int
    sessions: int          # rows in the sessions table
    datasets: int          # rows in the datasets table
    changed: int           # datasets new or changed (each added one history row)
    unchanged_tables: bool  # the same tables were imported before: nothing was written


class Store:
    """A provenance database. Create it with :func:`open_store`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name

    def __repr__(self) -> str:
        return f"Store({database.redact(self.engine.url)!r})"

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite): committed on success, else rolled back."""
        with database.connect_errors(self.engine), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read transaction that never takes the write lock."""
        with database.connect_errors(self.engine), database.reader(self.engine).connect() as conn:
            yield conn
            conn.rollback()

    @property
    def schema_version(self) -> str | None:
        return database.schema_status(self.engine).current

    @property
    def head_version(self) -> str:
        return database.head_revision()

    def _insert(self, table: sa.Table):
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # -- runs --------------------------------------------------------------------------------

    def start_run(
        self,
        project: str | None = None,
        *,
        label: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        base_url: str | None = None,
        revision_cutoff: str | None = None,
        versions: dict[str, str] | None = None,
    ) -> str:
        """Record a new run (status 'running') and return its id, a new UUID.

        ``project`` defaults to ``$ONEPROV_PROJECT``, else "default".
        """
        project = project or os.environ.get("ONEPROV_PROJECT") or "default"
        run_id = str(uuid.uuid4())
        versions = {"python": platform.python_version(), "oneprov": _version(), **(versions or {})}
        with self.transaction() as conn:
            project_id = self._project_id(conn, project)
            conn.execute(runs.insert().values(
                id=run_id, project_id=project_id, label=label, status="running", started_at=utcnow(),
                user_name=_user(), host=socket.gethostname(), pid=os.getpid(),
                command=scrub_credentials(" ".join(sys.argv))[:4000], versions=json.dumps(versions),
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                base_url=scrub_credentials(base_url) if base_url else None, revision_cutoff=revision_cutoff,
            ))
        return run_id

    def _project_id(self, conn: Connection, name: str) -> int:
        conn.execute(self._insert(projects).values(name=name, created_at=utcnow())
                     .on_conflict_do_nothing(index_elements=["name"]))
        return conn.execute(sa.select(projects.c.id).where(projects.c.name == name)).scalar_one()

    def finish_run(self, run_id: str, status: str = "finished", error: str | None = None) -> None:
        """Close a run: 'finished', or 'failed' with the error that ended it."""
        if status not in ("finished", "failed"):
            raise BadInputError(f"unknown run status {status!r}: expected 'finished' or 'failed'")
        with self.transaction() as conn:
            done = conn.execute(runs.update().where(runs.c.id == run_id, runs.c.status == "running")
                                .values(status=status, finished_at=utcnow(), error=error))
            if done.rowcount != 1:
                raise BadInputError(f"no running run {run_id!r}")

    def mark(self, run_id: str, kind: str, *, scope: str | None = None, detail: str | None = None) -> None:
        """Append a mark to a run (e.g. 'clear_list' when the loaded-ids list is cleared)."""
        with self.transaction() as conn:
            conn.execute(run_marks.insert().values(run_id=run_id, marked_at=utcnow(), kind=kind,
                                                   scope=scope, detail=detail))

    def retire_run(self, run_id: str, reason: str) -> None:
        """Retire a run (e.g. one left 'running' by a killed process, or one found wrong).

        Retiring adds a 'retired' mark with the reason; nothing of the run is changed or deleted.
        """
        if not reason or not reason.strip():
            raise BadInputError("retiring a run needs a reason")
        with self.transaction() as conn:
            if conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is None:
                raise BadInputError(f"no run {run_id!r}")
            conn.execute(run_marks.insert().values(run_id=run_id, marked_at=utcnow(), kind="retired",
                                                   detail=reason.strip()))

    def runs(self, project: str | None = None) -> pd.DataFrame:
        """Every run, newest first, with its project, counts of loads and queries, and whether it was retired.

        ``status`` is running, finished or failed as recorded, or 'interrupted' for a run still
        'running' whose process (on this host) no longer exists: it was killed.
        """
        loads = (sa.select(sa.func.count()).where(access_events.c.run_id == runs.c.id,
                                                  access_events.c.outcome.in_(SUCCESS_OUTCOMES))
                 .scalar_subquery())
        n_queries = sa.select(sa.func.count()).where(queries.c.run_id == runs.c.id).scalar_subquery()
        retired = sa.exists().where(run_marks.c.run_id == runs.c.id, run_marks.c.kind == "retired")
        stmt = (sa.select(runs.c.id.label("run_id"), projects.c.name.label("project"), runs.c.label,
                          runs.c.status, runs.c.started_at, runs.c.finished_at, runs.c.user_name,
                          runs.c.host, runs.c.pid, loads.label("loads"), n_queries.label("queries"),
                          retired.label("retired"))
                .join(projects, projects.c.id == runs.c.project_id)
                .order_by(runs.c.started_at.desc(), runs.c.id))
        if project is not None:
            stmt = stmt.where(projects.c.name == project)
        frame = self._frame(stmt)
        # A killed process cannot close its run: show it as interrupted when its process is gone.
        host = socket.gethostname()
        gone = [status == "running" and h == host and not _process_alive(pid)
                for status, h, pid in zip(frame["status"], frame["host"], frame["pid"])]
        frame.loc[gone, "status"] = "interrupted"
        return frame

    def resolve_run(self, run: str, project: str | None = None) -> str:
        """A run id from an id, a unique id prefix, a label (its latest run) or 'last'."""
        stmt = sa.select(runs.c.id).join(projects, projects.c.id == runs.c.project_id)
        if project is not None:
            stmt = stmt.where(projects.c.name == project)
        newest = stmt.order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(1)
        with self.reading() as conn:
            if run == "last":
                found = conn.execute(newest).scalars().all()
            else:
                found = conn.execute(stmt.where(runs.c.id.startswith(run.lower(), autoescape=True))).scalars().all()
                if not found:
                    found = conn.execute(newest.where(runs.c.label == run)).scalars().all()
        if len(found) != 1:
            raise BadInputError(f"no run matches {run!r}" if not found else f"run {run!r} is ambiguous: {len(found)} runs match")
        return found[0]

    # -- recording ---------------------------------------------------------------------------

    def record_query(
        self,
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
        with self.transaction() as conn:
            qid = conn.execute(_INSERT_QUERY, {
                "run_id": run_id, "method": method, "params": json.dumps(params or {}, default=str, sort_keys=True),
                "started_at": utcnow(), "mode": mode, "revision_cutoff": revision_cutoff, "scope": scope,
                "duration_s": duration_s, "error": error, "n_sessions": len(sids),
                "n_datasets": len(dids)}).scalar_one()
            if sids:   # (in key order: the index is then appended to, not written all over)
                _link(conn, "sessions", {"qid": qid, "ids": sorted(sids)})
            if dids:
                if state_ids is None:
                    _link(conn, "datasets_current", {"qid": qid, "ids": sorted(dids)})
                else:
                    pairs = sorted(zip(dids, state_ids))
                    _link(conn, "datasets", {"qid": qid, "ids": [d for d, _ in pairs], "states": [s for _, s in pairs]})
        return qid

    def _new_query(self, conn: Connection, run_id: str | None, method: str, params: dict | None, **values) -> int:
        return conn.execute(queries.insert().values(
            run_id=run_id, method=method, params=json.dumps(params or {}, default=str, sort_keys=True),
            started_at=utcnow(), **values).returning(queries.c.id)).scalar_one()

    def record_access(self, run_id: str, events: Sequence[dict[str, Any]]) -> list[int]:
        """Record a batch of load attempts in one transaction; return their event ids, in order.

        Each event is a dict with ``method`` and ``outcome`` and optionally ``dataset_id``,
        ``session_id``, ``rel_path``, ``requested_revision``, ``revision_cutoff``, ``scope``,
        ``path``, ``bytes``, ``detail``, ``event_time`` (default: now) and ``listed`` (default True:
        the load counts in the run's loaded-ids list). Each event is linked with the current
        state (``dataset_history`` row) of its dataset.
        """
        rows = _event_rows(events, utcnow())
        if not rows:
            return []
        if self.dialect == "postgresql":
            return self._record_access_postgresql(run_id, rows)
        # SQLite: through the driver (SQLAlchemy's execution costs several times SQLite's commit).
        to_text = _sqlite_time(self.engine.dialect)
        with database.sqlite_write(self.engine) as cursor:
            if len(rows) == 1:  # the common case, the client's: one load, one transaction
                row = rows[0]
                cursor.execute(_SQLITE_INSERT_EVENT, (run_id, to_text(row[0]), *row[1:], row[3]))
                return [cursor.lastrowid]
            # The datasets' states first, each looked up once, in id order (somewhat fewer page reads
            # than a lookup per event; most of a large batch's time goes to inserting its random
            # dataset ids into ix_access_events_dataset_id).
            wanted = sorted({row[3] for row in rows if row[3] is not None})
            state: dict[str, int | None] = {}
            for i in range(0, len(wanted), _SQLITE_MAX_PARAMS):
                chunk = wanted[i:i + _SQLITE_MAX_PARAMS]
                state.update(cursor.execute(f"SELECT id, state_id FROM datasets WHERE id IN "
                                            f"({', '.join('?' * len(chunk))})", chunk).fetchall())
            # BEGIN IMMEDIATE holds the write lock: the ids after the largest one are ours.
            base = cursor.execute("SELECT coalesce(max(id), 0) FROM access_events").fetchone()[0]
            cursor.executemany(_SQLITE_INSERT_EVENT_ID, [(base + k, run_id, to_text(row[0]), *row[1:], state.get(row[3]))
                                                        for k, row in enumerate(rows, 1)])
            return list(range(base + 1, base + len(rows) + 1))

    def _record_access_postgresql(self, run_id: str, rows: list[tuple]) -> list[int]:
        names = ", ".join(_EVENT_COLUMNS)
        with self.transaction() as conn:
            if len(rows) == 1:
                marks = ", ".join(f"%({c})s" for c in _EVENT_COLUMNS)
                return [conn.exec_driver_sql(
                    f"INSERT INTO access_events (run_id, {names}, state_id) VALUES (%(run_id)s, {marks}, "
                    "(SELECT state_id FROM datasets WHERE id = %(state_of)s)) RETURNING id",
                    {"run_id": run_id, **dict(zip(_EVENT_COLUMNS, rows[0])), "state_of": rows[0][3]}).scalar_one()]
            # Ids drawn from the sequence first (concurrent writers never get the same one), so
            # that they follow the events' order; then every row in one statement, from arrays.
            ids = sorted(conn.exec_driver_sql(
                "SELECT nextval(pg_get_serial_sequence('access_events', 'id')) FROM generate_series(1, %(n)s)",
                {"n": len(rows)}).scalars().all())
            arrays = ", ".join(f"%({c})s::{t}[]" for c, t in zip(["id", *_EVENT_COLUMNS], _PG_ARRAY_TYPES))
            values = ", ".join(f"v.{c}" for c in _EVENT_COLUMNS)
            conn.exec_driver_sql(
                f"INSERT INTO access_events (id, run_id, {names}, state_id) "
                f"SELECT v.id, %(run_id)s, {values}, d.state_id "
                f"FROM unnest({arrays}) AS v (id, {names}) LEFT JOIN datasets d ON d.id = v.dataset_id",
                {"run_id": run_id, "id": ids, **dict(zip(_EVENT_COLUMNS, map(list, zip(*rows))))})
            return ids

    # -- import of ONE cache tables ----------------------------------------------------------

    def import_cache(
        self,
        tables_dir: str | os.PathLike,
        *,
        run_id: str | None = None,
        progress: bool | None = None,
        batch_size: int = IMPORT_BATCH,
        force: bool = False,
    ) -> ImportResult:
        """Ingest ONE cache tables (``sessions.pqt``, ``datasets.pqt``) as one recorded query.

        Importing tables identical to an earlier import into this database writes nothing and
        returns that import (unless ``force``). A row repeating the id of an earlier row (seen in
        real Alyx exports) is left out with a warning. Changed rows update the current state and append to
        the dataset history. Everything happens in one transaction: a bad row anywhere leaves the
        database as it was. The datasets table streams in batches, with a progress bar on a
        terminal (``progress``).
        """
        folder = Path(tables_dir).expanduser().absolute()
        files = {name: folder / f"{name}.pqt" for name in ("sessions", "datasets")}
        if not folder.is_dir():
            raise BadInputError(f"cache tables folder {str(folder)!r} does not exist")
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise BadInputError(f"missing cache table {missing[0]!r}: expected sessions.pqt and datasets.pqt in {str(folder)!r}")
        checksum = _digest(files.values())
        source = str(folder)
        with self.transaction() as conn, _import_cache_size(conn), _bulk_load(conn):
            if not force:
                previous = conn.execute(
                    sa.select(queries.c.id, queries.c.n_sessions, queries.c.n_datasets)
                    .where(queries.c.source == source, queries.c.checksum == checksum,
                           queries.c.method == "import_cache", queries.c.error.is_(None))
                    .order_by(queries.c.id.desc()).limit(1)).first()
                if previous is not None:
                    return ImportResult(previous.id, previous.n_sessions, previous.n_datasets, 0, True)
            started = time.perf_counter()
            meta = {name: tables.read_metadata(path) for name, path in files.items()}
            qid = self._new_query(conn, run_id, "import_cache", {"tables_dir": source, "metadata": meta},
                                  source=source, checksum=checksum, mode="local")
            n_sessions = self._import_sessions(conn, qid, tables.read_sessions(files["sessions"]))
            total = tables.count_rows(files["datasets"])
            n_datasets = changed = 0
            repeated: list[str] = []
            show = progress if progress is not None else sys.stderr.isatty()
            with tqdm(total=total, unit="rows", desc="import datasets", disable=not show) as bar:
                # Batch k+1 is read and checked in a thread while batch k is written: SQLite
                # works without holding the GIL, so the two overlap on two cores.
                for batch in _in_background(_prepared(tables.iter_datasets(files["datasets"], batch_size=batch_size))):
                    changed += self._import_datasets(conn, qid, batch, files["datasets"])
                    repeated.extend(batch.repeated)
                    n_datasets += batch.rows
                    bar.update(batch.rows)
            n_datasets -= len(repeated)
            if repeated:
                # Real Alyx exports repeat ids (one-api keeps both rows); a dataset id names one record here.
                warnings.warn(f"{files['datasets']}: {len(repeated)} row(s) repeat a dataset id of an earlier row "
                              f"(first: {repeated[0]}); the first row of each id was imported", UserWarning,
                              stacklevel=2)
            conn.execute(queries.update().where(queries.c.id == qid).values(
                n_sessions=n_sessions, n_datasets=n_datasets, duration_s=time.perf_counter() - started))
        return ImportResult(qid, n_sessions, n_datasets, changed, False)

    def _import_sessions(self, conn: Connection, qid: int, frame: pd.DataFrame) -> int:
        if frame["id"].duplicated().any():
            raise BadInputError(f"duplicate session id {frame['id'][frame['id'].duplicated()].iloc[0]!r} in sessions table")
        now = utcnow()
        rows = _records(frame)
        stage = _stage_table("_incoming_sessions", sessions, ["id", "lab", "subject", "date", "number",
                                                               "task_protocol", "projects"])
        stage.create(conn)
        try:
            if rows:
                conn.execute(stage.insert(), rows)
            i, s = stage.c, sessions.c
            fields = ["lab", "subject", "date", "number", "task_protocol", "projects"]
            same = sa.and_(*(s[f].is_not_distinct_from(i[f]) for f in fields))
            new_or_changed = sa.select(*(i[c] for c in ["id", *fields]),
                                       sa.literal(now).label("first_seen_at"), sa.literal(now).label("updated_at")) \
                .where(~sa.exists().where(s.id == i.id, same))
            ins = self._insert(sessions).from_select(["id", *fields, "first_seen_at", "updated_at"], new_or_changed)
            conn.execute(ins.on_conflict_do_update(
                index_elements=["id"], set_={f: ins.excluded[f] for f in [*fields, "updated_at"]}))
            conn.execute(query_sessions.insert().from_select(
                ["query_id", "session_id"], sa.select(sa.literal(qid), i.id)))
        finally:
            stage.drop(conn)
        return len(rows)

    def _import_datasets(self, conn: Connection, qid: int, batch: _Batch, path: Path) -> int:
        """Upsert one batch; ids seen before in this import are left out and added to ``batch.repeated``.

        The batch goes into a temporary stage table, each row with the id of the history row it
        will get (``state_id``); set-based statements then write the current state (``datasets``),
        one history row per new or changed dataset, and a ``query_datasets`` link for every row.
        """
        n = len(batch.values[0])
        sqlite = self.dialect != "postgresql"
        if sqlite:
            # This transaction holds SQLite's write lock (BEGIN IMMEDIATE): the history ids after
            # the largest one are ours. Numbered as if every row were new (renumbered below if not).
            base = conn.execute(sa.select(sa.func.coalesce(sa.func.max(dataset_history.c.id), 0))).scalar_one()
            state_ids = range(base + 1, base + n + 1)
        else:
            state_ids = itertools.repeat(None)  # drawn from the sequence (_number_history_rows)
        now = utcnow()
        stage = _stage_table("_incoming_datasets", datasets, [*_DATASET_COLUMNS, "state_id"], extra=[
            sa.Column("changed", sa.Boolean, nullable=False, server_default=sa.true())])  # new or changed
        stage.create(conn)
        try:
            _fill(conn, stage, [*_DATASET_COLUMNS, "state_id"], list(zip(*batch.values, state_ids)))
            i, d = stage.c, datasets.c
            known = conn.execute(sa.select(sa.func.count()).select_from(stage.join(datasets, d.id == i.id))).scalar_one()
            if known:  # (never in a first import: then every row is new and there is nothing to compare)
                earlier = query_datasets.c
                again = conn.execute(sa.select(i.id).join(
                    query_datasets, sa.and_(earlier.query_id == qid, earlier.dataset_id == i.id))).scalars().all()
                if again:
                    batch.repeated.extend(again)
                    conn.execute(stage.delete().where(i.id.in_(again)))
                # A row equal to its dataset's current state is unchanged and keeps its history row.
                same = sa.and_(*(d[f].is_not_distinct_from(i[f]) for f in _DATASET_MUTABLE))
                conn.execute(stage.update().where(d.id == i.id).values(
                    changed=~same, state_id=sa.case((same, d.state_id))))
            if known or not sqlite:
                self._number_history_rows(conn, stage)
            changed_rows = sa.select(*(i[c] for c in _DATASET_COLUMNS), i.state_id, sa.literal(now), sa.literal(now)) \
                .where(i.changed == sa.true())
            ins = self._insert(datasets).from_select([*_DATASET_COLUMNS, "state_id", "first_seen_at", "updated_at"],
                                                     changed_rows)
            conn.execute(ins.on_conflict_do_update(
                index_elements=["id"], set_={f: ins.excluded[f] for f in [*_DATASET_MUTABLE, "state_id", "updated_at"]}))
            history = ["qc", "default_revision", "exists", "hash", "file_size"]
            conn.execute(dataset_history.insert().from_select(
                ["id", "dataset_id", "query_id", "observed_at", *history],
                sa.select(i.state_id, i.id, sa.literal(qid), sa.literal(now), *(i[c] for c in history))
                .where(i.changed == sa.true())))
            n_changed = conn.execute(sa.select(sa.func.count()).where(i.changed == sa.true())).scalar_one()
            r = revisions_table.c
            conn.execute(revisions_table.insert().from_select(
                ["name", "first_seen_at"],
                sa.select(i.revision, sa.literal(now)).distinct()
                .where(i.revision != "", i.revision.not_in(sa.select(r.name)))))
            conn.execute(query_datasets.insert().from_select(
                ["query_id", "dataset_id", "state_id"], sa.select(sa.literal(qid), i.id, i.state_id)))
        except sa.exc.IntegrityError as exc:
            raise BadInputError(f"cannot import {str(path)!r}: {exc.orig}") from None
        finally:
            stage.drop(conn)
        return n_changed

    def _number_history_rows(self, conn: Connection, stage: sa.Table) -> None:
        """Set ``state_id`` of the stage's new or changed rows to the ids their history rows will get.

        With the ids known up front, the datasets upsert sets ``state_id`` itself, instead of a
        second pass over ``datasets`` looking up each dataset's newest history row.
        """
        if self.dialect == "postgresql":
            # Concurrent imports draw from the same sequence: nextval never hands out an id twice.
            seq = conn.execute(sa.text("SELECT pg_get_serial_sequence('dataset_history', 'id')")).scalar_one()
            seq = sa.literal_column("'{}'::regclass".format(seq.replace("'", "''")))
            conn.execute(stage.update().where(stage.c.changed == sa.true()).values(state_id=sa.func.nextval(seq)))
            return
        # SQLite holds the write lock: the ids after the largest are free. Numbering only the
        # changed rows, in id order, leaves no gaps in the history ids.
        base = conn.execute(sa.select(sa.func.coalesce(sa.func.max(dataset_history.c.id), 0))).scalar_one()
        conn.execute(sa.text(
            f"UPDATE {stage.name} SET state_id = :base + n.k FROM (SELECT rowid AS r, row_number() OVER (ORDER BY id) AS k "
            f"FROM {stage.name} WHERE changed) AS n WHERE {stage.name}.rowid = n.r"), {"base": base})

    # -- reading -----------------------------------------------------------------------------

    def _frame(self, stmt: sa.Select, params: dict | None = None) -> pd.DataFrame:
        with self.reading() as conn:
            return result_frame(conn.execute(stmt, params or {}))

    def sql(self, query: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Run one read-only SQL query and return its rows; writes are refused.

        Named parameters (``:name``) are bound from ``params``, never formatted into the SQL.
        """
        return database.read_only_query(self.engine.url, query, params)

    def datasets_last_before(
        self,
        revision: str | None = None,
        eid: str | Iterable[str] | None = None,
        qc: str | int = "FAIL",
        *,
        ignore_qc_not_set: bool = False,
        within_query: int | None = None,
        ids: Iterable[str] | None = None,
        strict: bool = True,
    ) -> pd.DataFrame:
        """The revision ONE would choose for each dataset, for one session, several, or all.

        ``revision=None`` picks each dataset's default revision; ``revision='2024-04-01'`` the last
        revision on or before that date (the unrevised file always a candidate). Datasets with QC
        above ``qc`` are left out (CRITICAL by default). ``within_query`` restricts the choice to the
        datasets an earlier query (e.g. an import) returned, ``ids`` to the given dataset rows.
        One SQL statement (see :mod:`oneprov.revisions`); the rows come in no particular order.
        """
        where, session = [], None
        if isinstance(eid, str):
            session = check_uuid(eid, "session id")  # a bound parameter of a statement compiled once
        elif eid is not None:
            where.append(datasets.c.session_id.in_([check_uuid(e, "session id") for e in eid]))
        if within_query is not None:
            where.append(datasets.c.id.in_(sa.select(query_datasets.c.dataset_id)
                                           .where(query_datasets.c.query_id == within_query)))
        if ids is not None:
            where.append(datasets.c.id.in_(list(ids)))
        with self.reading() as conn:
            return revisions.last_before(conn, revision, qc=qc, ignore_qc_not_set=ignore_qc_not_set,
                                         where=where, strict=strict, session=session)

    def loaded_ids(
        self,
        *,
        run: str | None = None,
        project: str | None = None,
        label: str | None = None,
        scope: str | None = None,
        sessions_only: bool = False,
        since_clear: bool = False,
        listed_only: bool = False,
    ) -> list[str]:
        """The sorted UUIDs of datasets (or their sessions) successfully loaded.

        Restrict to a run id, a project, a run label or a scope; ``since_clear`` and ``listed_only``
        keep only the loads after the run's latest 'clear_list' mark that were made with
        ``record_loaded`` on (together: the run's *current list*, ONE's ``save_loaded_ids``).
        """
        return self._loaded_ids(run=run, project=project, label=label, scope=scope, sessions_only=sessions_only,
                                since_clear=since_clear, listed_only=listed_only)[0]

    def _loaded_ids(self, *, run: str | None, project: str | None, label: str | None, scope: str | None,
                    sessions_only: bool, since_clear: bool, listed_only: bool) -> tuple[list[str], str]:
        """:meth:`loaded_ids` and the same ids as one text, one per line (no final newline).

        The database joins the ids into text (``group_concat``/``string_agg``), in chunks of
        :data:`LOADED_IDS_CHUNK`: a million rows fetched one by one through the driver would cost
        more than the query. A run's loads are read from its index on access_events alone, in
        id order, duplicates skipped as they come.
        """
        e = access_events.c
        column = datasets.c.session_id if sessions_only else e.dataset_id
        source = access_events.join(datasets, datasets.c.id == e.dataset_id) if sessions_only else access_events
        where = [e.outcome.in_(SUCCESS_OUTCOMES), e.dataset_id.is_not(None)]
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
        ids: list[str] = []
        texts: list[str] = []
        with self.reading() as conn:
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
                chunk = (sa.select(column.label("id")).select_from(source).where(*where)
                         .distinct().order_by(column).limit(LOADED_IDS_CHUNK))
                if after is not None:
                    chunk = chunk.where(column > after)
                chunk = chunk.subquery()
                if self.dialect == "postgresql":
                    joined = sa.func.string_agg(chunk.c.id, postgresql.aggregate_order_by(sa.literal("\n"), chunk.c.id))
                else:
                    # SQLite keeps a FROM subquery's ORDER BY when it has a LIMIT or feeds an aggregate
                    # other than count/min/max: group_concat sees the ids in order.
                    joined = sa.func.group_concat(chunk.c.id, sa.literal("\n"))
                text = conn.execute(sa.select(joined)).scalar()
                if not text:
                    break
                some = text.split("\n")
                if ids:
                    ids.extend(some)
                else:
                    ids = some
                texts.append(text)
                if len(some) < LOADED_IDS_CHUNK:
                    break
                after = some[-1]
        return ids, "\n".join(texts)

    def record_export(self, conn: Connection, *, kind: str, path: Path, rows: int,
                      run_id: str | None = None, params: dict | None = None) -> None:
        """Record a file written from the store (its size and sha256) in ``exports``."""
        conn.execute(exports.insert().values(
            run_id=run_id, kind=kind, path=str(path), rows=rows, bytes=path.stat().st_size,
            sha256=tables.file_sha256(path), params=json.dumps(params or {}, default=str, sort_keys=True),
            created_at=utcnow()))


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_SECRET_OPTION = re.compile(r"(?i)(--?(?:password|passwd|token|secret)[= ])\S+|((?:password|token|secret)=)[^&\s]+")


def scrub_credentials(text: str) -> str:
    """Hide passwords and tokens in a command line or URL before it is stored or logged.

    >>> scrub_credentials("analysis.py --db postgresql://me:s3cret@host/db --token abc")
    'analysis.py --db postgresql://me:***@host/db --token ***'
    """
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    return _SECRET_OPTION.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


def result_frame(result: sa.CursorResult) -> pd.DataFrame:
    """A DataFrame of a result's rows.

    Rows become plain tuples first: pandas probes each SQLAlchemy Row for array attributes, and
    every probe raises inside SQLAlchemy (about 8x slower).
    """
    return pd.DataFrame([tuple(row) for row in result.fetchall()], columns=list(result.keys()))


_INSERT_QUERY = queries.insert().returning(queries.c.id)

#: A query's result rows, linked in one statement: a JSON array (SQLite) or arrays (PostgreSQL)
#: unpacked in SQL, instead of one INSERT (and one state lookup) per row.
_LINKS = {
    "sqlite": {
        "sessions": "INSERT INTO query_sessions (query_id, session_id) SELECT :qid, value FROM json_each(:ids)",
        "datasets": "INSERT INTO query_datasets (query_id, dataset_id, state_id) "
                    "SELECT :qid, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:pairs)",
        "datasets_current": "INSERT INTO query_datasets (query_id, dataset_id, state_id) "
                            "SELECT :qid, j.value, d.state_id FROM json_each(:ids) AS j LEFT JOIN datasets AS d ON d.id = j.value",
    },
    "postgresql": {
        "sessions": "INSERT INTO query_sessions (query_id, session_id) SELECT :qid, unnest(CAST(:ids AS TEXT[]))",
        "datasets": "INSERT INTO query_datasets (query_id, dataset_id, state_id) "
                    "SELECT :qid, t.id, t.state FROM unnest(CAST(:ids AS TEXT[]), CAST(:states AS INTEGER[])) AS t(id, state)",
        "datasets_current": "INSERT INTO query_datasets (query_id, dataset_id, state_id) "
                            "SELECT :qid, t.id, d.state_id FROM unnest(CAST(:ids AS TEXT[])) AS t(id) "
                            "LEFT JOIN datasets AS d ON d.id = t.id",
    },
}
_LINK_STATEMENTS = {dialect: {kind: sa.text(sql) for kind, sql in kinds.items()} for dialect, kinds in _LINKS.items()}


def _link(conn: Connection, kind: str, params: dict[str, Any]) -> None:
    """Insert a query's links of one ``kind`` (see :data:`_LINKS`) in one statement."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LINK_STATEMENTS["postgresql"][kind], params)
        return
    if not _sqlite_json():  # an SQLite built without JSON1 (before 3.38 it was optional): row by row
        table, rows = ((query_sessions, [{"query_id": params["qid"], "session_id": s} for s in params["ids"]])
                       if kind == "sessions" else
                       (query_datasets, [{"query_id": params["qid"], "dataset_id": d, "state_id": st} for d, st in
                                         zip(params["ids"], params.get("states") or [None] * len(params["ids"]))]))
        if kind == "datasets_current":
            stmt = query_datasets.insert().values(query_id=params["qid"], dataset_id=sa.bindparam("b_id"),
                                                  state_id=_state_of("b_id"))
            conn.execute(stmt, [{"b_id": r["dataset_id"]} for r in rows])
        else:
            conn.execute(table.insert(), rows)
        return
    if kind == "datasets":
        params = {"qid": params["qid"], "pairs": json.dumps(list(zip(params["ids"], params["states"])))}
    else:
        params = {"qid": params["qid"], "ids": json.dumps(params["ids"])}
    conn.execute(_LINK_STATEMENTS["sqlite"][kind], params)


@lru_cache(maxsize=1)
def _sqlite_json() -> bool:
    """Whether this process's SQLite library has the JSON functions."""
    try:
        sqlite3.connect(":memory:").execute("SELECT value FROM json_each('[1]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


#: An access event's fields, in the order of :func:`_event_rows`'s tuples and of the INSERTs below.
_EVENT_COLUMNS = ("event_time", "method", "outcome", "dataset_id", "session_id", "rel_path", "requested_revision",
                  "revision_cutoff", "scope", "path", "bytes", "detail", "listed")
_EVENT_FIELDS = frozenset(_EVENT_COLUMNS)
_PG_ARRAY_TYPES = ("bigint", "timestamp", "text", "text", "text", "text", "text", "text", "text", "text", "text",
                   "bigint", "text", "boolean")
# The event's state: its dataset's current history row, looked up in the same statement.
_SQLITE_INSERT_EVENT = (f"INSERT INTO access_events (run_id, {', '.join(_EVENT_COLUMNS)}, state_id) "
                        f"VALUES (?, {', '.join('?' * len(_EVENT_COLUMNS))}, "
                        "(SELECT state_id FROM datasets WHERE id = ?))")
_SQLITE_INSERT_EVENT_ID = (f"INSERT INTO access_events (id, run_id, {', '.join(_EVENT_COLUMNS)}, state_id) "
                           f"VALUES ({', '.join('?' * (len(_EVENT_COLUMNS) + 3))})")
#: Bound parameters per statement: SQLite before 3.32 allows 999.
_SQLITE_MAX_PARAMS = 999


def _event_rows(events: Sequence[dict[str, Any]], now: datetime) -> list[tuple]:
    """Validated access events as tuples in :data:`_EVENT_COLUMNS` order (UUIDs lowercase canonical)."""
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


@cache
def _sqlite_time(dialect: sa.Dialect):
    """How SQLAlchemy stores a DateTime in SQLite (text), for values bound through the driver."""
    return access_events.c.event_time.type.dialect_impl(dialect).bind_processor(dialect)


def _state_of(param: str) -> sa.ScalarSelect:
    """The current history row of the dataset whose id is bound to ``param``."""
    return sa.select(datasets.c.state_id).where(datasets.c.id == sa.bindparam(param)).scalar_subquery()


def _stage_table(name: str, like: sa.Table, columns: list[str], extra: list[sa.Column] = ()) -> sa.Table:
    """A temporary table with some of ``like``'s columns, for set-based upserts."""
    return sa.Table(name, sa.MetaData(), *(sa.Column(c, like.c[c].type) for c in columns), *extra,
                    prefixes=["TEMPORARY"])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts of plain Python values, with None for every kind of missing value."""
    out = frame.astype(object).where(frame.notna(), None)
    return out.to_dict("records")


@contextmanager
def _import_cache_size(conn: Connection) -> Iterator[None]:
    """On SQLite, a page cache of :data:`IMPORT_CACHE_MIB` for this connection during an import.

    SQLite's default cache (2 MiB) holds a small part of the indexes an import writes to, so a
    large import rereads and rewrites index pages over and over. Other connections keep theirs;
    this one gets its old size back at the end (before the commit, which writes the pages out).
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    before = {schema: conn.exec_driver_sql(f"PRAGMA {schema}.cache_size").scalar_one() for schema in ("main", "temp")}
    conn.exec_driver_sql(f"PRAGMA main.cache_size = -{IMPORT_CACHE_MIB * 1024}")
    # the stage tables (temp) hold one batch: in a cache that size they are not written to a file
    conn.exec_driver_sql(f"PRAGMA temp.cache_size = -{IMPORT_CACHE_MIB * 1024 // 4}")
    try:
        yield
    finally:
        for schema, size in before.items():
            conn.exec_driver_sql(f"PRAGMA {schema}.cache_size = {int(size)}")


@contextmanager
def _bulk_load(conn: Connection) -> Iterator[None]:
    """On SQLite, with no datasets stored yet, build the datasets' indexes after the rows are in.

    A first import writes a million rows into tables whose indexes are keyed by random UUIDs;
    inserting into an index row by row costs several times more than building it once from the
    sorted rows. So the secondary indexes of ``datasets`` and ``dataset_history`` and the
    append-only insert checks of the tables an import fills (which look up each new row) are
    dropped here and created again from their own stored SQL before the transaction commits:
    other connections never see the schema without them, and a failed import rolls the drop back.
    An empty table has nothing for the append-only checks to protect, and primary keys stay.
    """
    if conn.dialect.name != "sqlite" or conn.execute(sa.select(datasets.c.id).limit(1)).first() is not None:
        yield
        return
    saved = conn.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND ("
        "(type = 'index' AND tbl_name IN ('datasets', 'dataset_history')) OR "
        "(type = 'trigger' AND tbl_name IN ('dataset_history', 'query_datasets') AND name LIKE '%no_replace'))"
    ).fetchall()
    quote = conn.dialect.identifier_preparer.quote
    for kind, name, _ in saved:
        conn.exec_driver_sql(f"DROP {kind.upper()} {quote(name)}")
    yield
    for _, _, sql in saved:
        conn.exec_driver_sql(sql)


@dataclass
class _Batch:
    """Rows of a datasets table ready to stage: column values in id order, without repeated ids."""
    rows: int                # rows read, repeated ones included
    values: list[list]       # per column of _DATASET_COLUMNS
    repeated: list[str]      # ids that repeat an earlier row of the batch (more are found in the database)


def _prepared(frames: Iterator[pd.DataFrame]) -> Iterator[_Batch]:
    """Each batch of ``tables.iter_datasets`` as a :class:`_Batch`."""
    for frame in frames:
        dup = frame["id"].duplicated()
        # In id order, the inserts of _import_datasets walk each index on the dataset id in
        # order instead of jumping around it at random (fewer pages written, and each once).
        kept = frame[~dup].rename(columns={"eid": "session_id"}).sort_values("id")
        yield _Batch(len(frame), _column_values(kept, _DATASET_COLUMNS), frame["id"][dup].tolist())


def _in_background(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Iterate ``items`` in a worker thread that keeps up to ``depth`` items ready.

    An exception of the worker is raised here; when the consumer stops early (or fails), the
    worker stops too and ``items`` is closed.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="oneprov-import-reader", daemon=True)
    worker.start()
    try:
        while True:
            more, item = ready.get()
            if more:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        worker.join()


#: The columns of a datasets batch, as staged; all but ``id`` may change between imports.
_DATASET_COLUMNS = ["id", "session_id", "rel_path", "collection", "revision", "name", "file_size", "hash",
                    "exists", "qc", "default_revision"]
_DATASET_MUTABLE = _DATASET_COLUMNS[1:]


def _column_values(frame: pd.DataFrame, columns: list[str]) -> list[list]:
    """The values of ``frame``'s ``columns``, one list per column, plain Python values (None when missing).

    Column by column, which is several times faster than building a dict or tuple per row.
    """
    return [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in columns]


def _fill(conn: Connection, table: sa.Table, columns: list[str], rows: list[tuple]) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in bulk, through the driver.

    SQLAlchemy's own executemany spends more time per row than SQLite needs to store it;
    PostgreSQL's COPY is several times faster than any INSERT.
    """
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy(f"COPY {quote(table.name)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        return
    marks = ", ".join("?" * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks})", rows)


def _digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(tables.file_sha256(path).encode())
    return h.hexdigest()


def _process_alive(pid: Any) -> bool:
    """Whether a process with this id exists on this host (an unknown pid counts as alive)."""
    if pid is None or pd.isna(pid):
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return None


def _version() -> str:
    from . import __version__
    return __version__
