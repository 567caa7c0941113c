"""Rows in, from any source, through one door: sessions and dataset rows recorded as one query.

Whatever the rows' origin (a folder of ONE cache tables today; an Alyx REST answer or a one-api
instance's in-memory tables next), :func:`ingest` records them as one query: a row whose values
equal its current record is linked to that record; any other row becomes a new record. Records are
never changed, so a client whose tables say something else than another cache's keeps its answers.

A large import is written in many short transactions (each well under a second), so that other
processes keep recording loads while it runs; the query is *complete* only when its last row is
in, and nothing answers from an incomplete query: an import that fails or is killed half-way
changes no answer. One process at a time imports given tables: another that starts the same
import waits for it and then uses it.

The rows come as a :class:`Rows` object: the sessions as one normalised frame, the datasets as
normalised frames in batches (the layouts of :mod:`oneprov.tables`); :class:`RowSource` says where
they came from, and is what the query records.

>>> import tempfile
>>> from oneprov import open_store
>>> from oneprov.synthetic import make_repository
>>> repo = make_repository(tempfile.mkdtemp(), write_files=False)
>>> result = import_cache(open_store(":memory:"), repo.root)
>>> (result.sessions, result.datasets) == (len(repo.sessions), len(repo.datasets))
True
"""
from __future__ import annotations

import json
import os
import queue
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from tqdm.auto import tqdm

from ..errors import BadInputError
from ..tables import DATASETS_COLUMNS, SESSIONS_COLUMNS, STATE_COLUMNS, Folder
from .engine import Database
from .recording import new_query
from .runs import process_alive
from .schema import (
    dataset_records, queries, query_datasets, query_sessions, revisions, session_records, utcnow,
)
from .records import ROW_KEY

#: Rows read from a datasets table and prepared at a time.
IMPORT_BATCH = 100_000
#: How long one write transaction of an import may hold the write lock, in seconds: others wait that long.
WRITE_SECONDS = 0.3
#: An import of the same tables by a process on another host counts as alive while it wrote a row this recently.
STALE_IMPORT_S = 120.0


@dataclass(frozen=True)
class RowSource:
    """Where ingested rows came from, as their query records it.

    ``location`` is the tables folder (or, later, the Alyx URL); ``checksum`` a digest of what was
    read, when the rows came from files; ``params`` the query's parameters (JSON), to which the
    rows' own :meth:`Rows.metadata` is added when they are written.
    """

    method: str
    location: str
    checksum: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    mode: str = "local"


class Rows(Protocol):
    """Sessions and dataset rows to ingest, normalised as :mod:`oneprov.tables` reads them."""

    def sessions(self) -> pd.DataFrame: ...
    def datasets(self, batch_size: int) -> Iterator[pd.DataFrame]: ...
    def count_datasets(self) -> int | None: ...
    def metadata(self) -> dict[str, Any]: ...   # recorded as the query's params["metadata"]


@dataclass(frozen=True)
class ImportResult:
    """What an ingest did."""

    query_id: int
    sessions: int          # rows of sessions
    datasets: int          # rows of datasets
    changed: int           # dataset rows new or changed (each a new record)
    unchanged_tables: bool  # the same rows were ingested before from the same source: nothing was written


def import_cache(db: Database, tables_dir: str | os.PathLike, *, run_id: str | None = None,
                 progress: bool | None = None, batch_size: int = IMPORT_BATCH, force: bool = False) -> ImportResult:
    """Ingest ONE cache tables (``sessions.pqt``, ``datasets.pqt``) as one recorded query.

    Importing tables identical to an earlier import into this database writes nothing and
    returns that import (unless ``force``). A row repeating an earlier row (the same dataset id in
    the same session at the same path) is left out with a warning. The datasets table streams in
    batches, with a progress bar on a terminal (``progress``).
    """
    folder = Folder.open(tables_dir)
    source = RowSource("import_cache", str(folder.path), folder.checksum(), {"tables_dir": str(folder.path)}, "local")
    return ingest(db, source, folder, run_id=run_id, progress=progress, batch_size=batch_size, reuse=not force,
                  name=str(folder.files["datasets"]))


def ingest(db: Database, source: RowSource, rows: Rows, *, run_id: str | None = None, progress: bool | None = None,
           batch_size: int = IMPORT_BATCH, reuse: bool = True, name: str | None = None) -> ImportResult:
    """Record ``rows`` from ``source`` as one query; return what it did.

    With ``reuse``, rows whose ``source`` (location and checksum) was ingested before are not
    written again: that earlier query is returned (and while another process is ingesting them,
    this one waits for it). ``name`` names the rows in messages (default: the location).

    Every row is read and checked, and staged in a temporary table, before anything is written: bad
    input changes nothing. Then the rows are recorded in short write transactions, and the query
    completes in a last one.
    """
    name = name or source.location
    if reuse and source.checksum is not None:
        with db.reading() as conn:   # (no write lock for tables seen before: the common case)
            done = _earlier(conn, source)
        if done is not None and done.completed_at is not None:
            return ImportResult(done.id, done.n_sessions, done.n_datasets, 0, True)
    show = progress if progress is not None else sys.stderr.isatty()
    # One connection for the whole import: its temporary stage and its warm page cache.
    with db.connection() as conn, db.dialect.import_session(conn):
        sessions = rows.sessions()
        if sessions["id"].duplicated().any():
            raise BadInputError(f"duplicate session id {sessions['id'][sessions['id'].duplicated()].iloc[0]!r} "
                                "in sessions table")
        stage = _stage_table("_import_rows", dataset_records, _DATASET_COLUMNS)
        with _temporary(conn, stage):
            n_read, n_staged, repeated = _stage(db, conn, stage, rows, batch_size, show)
            claim = _claim(conn, source, rows, run_id, reuse)
            if isinstance(claim, ImportResult):
                return claim
            qid, started = claim, time.perf_counter()
            try:
                with conn.begin():
                    _ingest_sessions(db, conn, qid, sessions)
                changed = _record_staged(db, conn, stage, n_staged, qid, repeated, name, show)
                n_datasets = n_read - len(repeated)
                if repeated:
                    # One-api keeps such rows twice; here a row (id, session, path) is one record.
                    warnings.warn(f"{name}: {len(repeated)} row(s) repeat the dataset id, session and path of an "
                                  f"earlier row (first: {repeated[0]}); the first of each was imported", UserWarning,
                                  stacklevel=3)
                with conn.begin():
                    conn.execute(queries.update().where(queries.c.id == qid).values(
                        n_sessions=len(sessions), n_datasets=n_datasets, duration_s=time.perf_counter() - started,
                        completed_at=utcnow()))
            except BaseException as exc:
                _abandon(db, qid, exc)
                raise
    return ImportResult(qid, len(sessions), n_datasets, changed, False)


@contextmanager
def _temporary(conn: Connection, table: sa.Table) -> Iterator[None]:
    """A temporary table of ``conn`` for the block; its cleanup never hides the error that ended the
    block (the next import on this pooled connection drops a table left behind)."""
    with _reading(conn):
        table.drop(conn, checkfirst=True)
        table.create(conn)
    try:
        yield
    except BaseException:
        try:
            _drop(conn, table)
        except Exception:
            pass
        raise
    _drop(conn, table)


def _drop(conn: Connection, table: sa.Table) -> None:
    if conn.in_transaction():
        conn.rollback()
    with _reading(conn):
        table.drop(conn)


@contextmanager
def _reading(conn: Connection) -> Iterator[None]:
    """A transaction of ``conn`` that takes no write lock on the database (writes to temporary tables only)."""
    conn.execution_options(oneprov_read=True)
    try:
        with conn.begin():
            yield
    finally:
        conn.execution_options(oneprov_read=False)


def _stage(db: Database, conn: Connection, stage: sa.Table, rows: Rows, batch_size: int,
           show: bool) -> tuple[int, int, list[str]]:
    """Read, check and stage every dataset row; return how many were read, how many staged (``seq``
    runs from 1 to it) and the ids of rows that repeat an earlier row of their batch. Takes no write
    lock: other processes go on recording."""
    n_read, repeated, seq = 0, [], 0
    with tqdm(total=rows.count_datasets(), unit="rows", desc="read datasets", disable=not show) as bar, _reading(conn):
        # Batch k+1 is read and checked in a thread while batch k is staged.
        for batch in in_background(_prepared(rows.datasets(batch_size))):
            n = len(batch.values[0])
            db.dialect.fill(conn, stage, ["seq", *_DATASET_COLUMNS], list(zip(range(seq + 1, seq + n + 1), *batch.values)))
            seq += n
            n_read += batch.rows
            repeated.extend(batch.repeated)
            bar.update(batch.rows)
    return n_read, seq, repeated


def _record_staged(db: Database, conn: Connection, stage: sa.Table, last: int, qid: int, repeated: list[str],
                   name: str, show: bool) -> int:
    """Record the staged rows 1..``last`` in parts, one short write transaction each; return how many
    rows became new records. Rows repeating a row this import recorded already are added to ``repeated``."""
    writer, start, changed = _Writer(), 1, 0
    with tqdm(total=last, unit="rows", desc="import datasets", disable=not show) as bar:
        while start <= last:
            stop = min(start + writer.rows - 1, last)
            changed += writer.write(conn, lambda: _ingest_datasets(db, conn, stage, start, stop, qid, repeated, name),
                                    stop - start + 1)
            bar.update(stop - start + 1)
            start = stop + 1
    return changed


# -- one import at a time -------------------------------------------------------------------

def _earlier(conn: Connection, source: RowSource) -> Any:
    """The latest ingest of the same rows from the same source that did not fail (None if none)."""
    q = queries.c
    return conn.execute(
        sa.select(q.id, q.n_sessions, q.n_datasets, q.completed_at, q.params, q.started_at)
        .where(q.source == source.location, q.checksum == source.checksum, q.method == source.method, q.error.is_(None))
        .order_by(q.id.desc()).limit(1)).first()


def _claim(conn: Connection, source: RowSource, rows: Rows, run_id: str | None, reuse: bool) -> int | ImportResult:
    """Start the import's query, or return the import of the same rows that another process finished
    meanwhile. While another live process imports the same rows, wait for it."""
    params = {**source.params, "metadata": rows.metadata(), "importer": {"host": socket.gethostname(), "pid": os.getpid()}}
    while True:
        with conn.begin():
            other = _earlier(conn, source) if reuse and source.checksum is not None else None
            if other is not None and other.completed_at is not None:
                return ImportResult(other.id, other.n_sessions, other.n_datasets, 0, True)
            if other is None or not _importing(conn, other):
                return new_query(conn, run_id, source.method, params, source=source.location,
                                 checksum=source.checksum, mode=source.mode)
        time.sleep(0.2)


def _importing(conn: Connection, query: Any) -> bool:
    """Whether the incomplete ``query`` is still being written by a live process."""
    importer = json.loads(query.params or "{}").get("importer") or {}
    if importer.get("host") == socket.gethostname():
        return importer.get("pid") != os.getpid() and process_alive(importer.get("pid"))
    last = conn.execute(sa.select(sa.func.max(dataset_records.c.first_seen_at))
                        .where(dataset_records.c.query_id == query.id)).scalar() or query.started_at
    return (utcnow() - last).total_seconds() < STALE_IMPORT_S


def _abandon(db: Database, qid: int, exc: BaseException) -> None:
    """Mark an import that will not complete (it stays invisible; others need not wait for it)."""
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"[:2000]
    try:
        with db.writing() as conn:
            conn.execute(queries.update().where(queries.c.id == qid, queries.c.error.is_(None)).values(error=reason))
    except Exception:  # the database may be what failed; the import stays incomplete either way
        pass


class _Writer:
    """Sizes write transactions to about :data:`WRITE_SECONDS` each, from the time the last one took."""

    def __init__(self) -> None:
        self.rows = 5_000

    def write(self, conn: Connection, step: Any, n: int) -> int:
        """Run ``step()`` (writing ``n`` rows) in a transaction of ``conn``; size the next part from its time."""
        started = time.perf_counter()
        with conn.begin():
            result = step()
        seconds = max(time.perf_counter() - started, 1e-3)
        self.rows = int(min(max(n * WRITE_SECONDS / seconds, 1_000), IMPORT_BATCH))
        return result


# -- writing records ------------------------------------------------------------------------

#: A session row's values besides its id.
_SESSION_FIELDS = SESSIONS_COLUMNS[1:]
#: A dataset row as staged and recorded: the normalised columns, ``id`` as ``uuid``, ``eid`` as ``session_uuid``.
_DATASET_COLUMNS = [{"id": "uuid", "eid": "session_uuid"}.get(c, c) for c in DATASETS_COLUMNS]
_DATASET_ROW = ROW_KEY["dataset_records"]


def _ingest_sessions(db: Database, conn: Connection, qid: int, frame: pd.DataFrame) -> None:
    """Record the sessions (checked, distinct ids) inside ``conn``'s transaction."""
    values = frame.rename(columns={"id": "uuid"})
    # (created and dropped in this transaction: a failure rolls both back, and no cleanup hides it)
    stage = _stage_table("_incoming_sessions", session_records, ["uuid", *_SESSION_FIELDS])
    stage.create(conn)
    if len(values):
        conn.execute(stage.insert(), [{"seq": k, **row} for k, row in enumerate(_records(values), 1)])
    everything = stage.c.seq.is_not(None)
    _match(conn, stage, everything, session_records, ROW_KEY["session_records"], _SESSION_FIELDS, qid)
    db.dialect.number_new_records(conn, stage, everything, session_records)
    _insert_new(conn, stage, everything, session_records, ["uuid", *_SESSION_FIELDS], qid)
    conn.execute(query_sessions.insert().from_select(
        ["query_id", "record_id"], sa.select(sa.literal(qid), stage.c.record_id).order_by(stage.c.record_id)))
    stage.drop(conn)


def _ingest_datasets(db: Database, conn: Connection, stage: sa.Table, start: int, stop: int, qid: int,
                     repeated: list[str], name: str) -> int:
    """Record the staged rows ``start..stop`` (inside ``conn``'s transaction); return how many became new records.

    Set-based statements find each row's current record, insert a record for every row that has
    none or differs from it, add the revisions seen, and link the query to every row's record.
    Rows this import recorded already are left out and added to ``repeated``.
    """
    now = utcnow()
    i = stage.c
    part = i.seq.between(start, stop)
    try:
        repeated.extend(_match(conn, stage, part, dataset_records, ROW_KEY["dataset_records"], STATE_COLUMNS, qid))
        db.dialect.number_new_records(conn, stage, part, dataset_records)
        _insert_new(conn, stage, part, dataset_records, _DATASET_COLUMNS, qid, now)
        n_changed = conn.execute(sa.select(sa.func.count()).where(part, i.changed == sa.true())).scalar_one()
        r = revisions.c
        conn.execute(revisions.insert().from_select(
            ["name", "first_seen_at"],
            sa.select(i.revision, sa.literal(now)).distinct()
            .where(part, i.revision != "", i.revision.not_in(sa.select(r.name)))))
        conn.execute(query_datasets.insert().from_select(
            ["query_id", "record_id"], sa.select(sa.literal(qid), i.record_id).where(part).order_by(i.record_id)))
    except sa.exc.IntegrityError as exc:
        raise BadInputError(f"cannot import {name!r}: {exc.orig}") from None
    return n_changed


def _match(conn: Connection, stage: sa.Table, part: sa.ColumnElement[bool], records: sa.Table, key: list[str],
           fields: list[str], qid: int) -> list[str]:
    """Find each staged row's current record (the latest of a complete query, or of this import);
    mark the rows that equal it unchanged (``record_id`` = that record) and the others changed.

    Rows that this import recorded already are removed from the stage; their ids are returned.
    """
    i, r, q = stage.c, records.c, queries.c
    same_row = [r[c] == i[c] for c in key]
    latest = (sa.select(sa.func.max(r.id)).join(queries, q.id == r.query_id)
              .where(*same_row, sa.or_(q.completed_at.is_not(None), r.query_id == qid)).scalar_subquery())
    conn.execute(stage.update().where(part).values(match_id=latest))
    mine = sa.select(r.id).where(r.query_id == qid)
    again = conn.execute(sa.select(i.uuid).where(part, i.match_id.in_(mine))).scalars().all()
    if again:
        conn.execute(stage.delete().where(part, i.match_id.in_(mine)))
    same = sa.and_(*(r[f].is_not_distinct_from(i[f]) for f in fields))
    equal = sa.exists().where(r.id == i.match_id, same)
    conn.execute(stage.update().where(part).values(changed=~equal, record_id=sa.case((equal, i.match_id))))
    return again


def _insert_new(conn: Connection, stage: sa.Table, part: sa.ColumnElement[bool], records: sa.Table,
                columns: list[str], qid: int, now: Any = None) -> None:
    """Insert the stage's changed rows as new records (their ids are set in the stage already)."""
    now = now or utcnow()
    i = stage.c
    conn.execute(records.insert().from_select(
        ["id", *columns, "query_id", "first_seen_at"],
        sa.select(i.record_id, *(i[c] for c in columns), sa.literal(qid), sa.literal(now))
        .where(part, i.changed == sa.true()).order_by(i.record_id)))


@dataclass
class _Batch:
    """Rows of a datasets table ready to stage: column values, without rows repeated in the batch."""
    rows: int                # rows read, repeated ones included
    values: list[list]       # per column of _DATASET_COLUMNS
    repeated: list[str]      # ids of rows that repeat an earlier one of the batch


def _prepared(frames: Iterator[pd.DataFrame]) -> Iterator[_Batch]:
    """Each normalised datasets frame as a :class:`_Batch`, in session and path order."""
    for frame in frames:
        frame = frame.rename(columns={"id": "uuid", "eid": "session_uuid"})
        dup = frame.duplicated(_DATASET_ROW)
        # In session order, the inserts walk the indexes by session in order instead of jumping
        # around them at random (fewer pages written, and each once).
        kept = frame[~dup].sort_values(["session_uuid", "rel_path", "uuid"])
        yield _Batch(len(frame), _column_values(kept, _DATASET_COLUMNS), frame["uuid"][dup].tolist())


def in_background(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
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


def _column_values(frame: pd.DataFrame, columns: list[str]) -> list[list]:
    """The values of ``frame``'s ``columns``, one list per column, plain Python values (None when missing).

    Column by column, which is several times faster than building a dict or tuple per row.
    """
    return [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in columns]


def _stage_table(name: str, like: sa.Table, columns: list[str]) -> sa.Table:
    """A temporary table with some of ``like``'s columns, for set-based matching and inserts, and:
    ``seq`` (the row's place in the import), ``match_id`` (the row's current record),
    ``record_id`` (its record in this query) and ``changed`` (it needs a new record)."""
    return sa.Table(name, sa.MetaData(), sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
                    *(sa.Column(c, like.c[c].type) for c in columns),
                    sa.Column("match_id", sa.Integer), sa.Column("record_id", sa.Integer),
                    sa.Column("changed", sa.Boolean, nullable=False, server_default=sa.true()),
                    prefixes=["TEMPORARY"])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts of plain Python values, with None for every kind of missing value."""
    out = frame.astype(object).where(frame.notna(), None)
    return out.to_dict("records")
