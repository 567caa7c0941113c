"""Rows in, from any source, through one door: sessions and dataset rows recorded as one query.

Whatever the rows' origin (a folder of ONE cache tables today; an Alyx REST answer or a one-api
instance's in-memory tables next), :func:`ingest` writes them in one transaction: the current state
of each session and dataset, one history row per dataset that is new or changed, and the query
that returned them with a link to every row in the state it was in. A bad row anywhere leaves the
database as it was.

The rows come as a :class:`Rows` object: the sessions as one normalised frame, the datasets as
normalised frames in batches (the layouts of :mod:`oneprov.tables`); :class:`RowSource` says where
they came from, and is what the query records.

>>> import tempfile
>>> from oneprov import open_store
>>> from oneprov.synthetic import make_repository
>>> from oneprov.tables import Folder
>>> repo = make_repository(tempfile.mkdtemp(), write_files=False)
>>> result = import_cache(open_store(":memory:"), repo.root)
>>> (result.sessions, result.datasets) == (len(repo.sessions), len(repo.datasets))
True
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import warnings
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
from .schema import dataset_history, datasets, queries, query_datasets, query_sessions, revisions, sessions, utcnow

#: Rows read from a datasets table and written per statement batch during an import.
IMPORT_BATCH = 100_000


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
    sessions: int          # rows in the sessions table
    datasets: int          # rows in the datasets table
    changed: int           # datasets new or changed (each added one history row)
    unchanged_tables: bool  # the same rows were ingested before from the same source: nothing was written


def import_cache(db: Database, tables_dir: str | os.PathLike, *, run_id: str | None = None,
                 progress: bool | None = None, batch_size: int = IMPORT_BATCH, force: bool = False) -> ImportResult:
    """Ingest ONE cache tables (``sessions.pqt``, ``datasets.pqt``) as one recorded query.

    Importing tables identical to an earlier import into this database writes nothing and
    returns that import (unless ``force``). A row repeating the id of an earlier row (seen in real
    Alyx exports) is left out with a warning. The datasets table streams in batches, with a
    progress bar on a terminal (``progress``).
    """
    folder = Folder.open(tables_dir)
    source = RowSource("import_cache", str(folder.path), folder.checksum(), {"tables_dir": str(folder.path)}, "local")
    return ingest(db, source, folder, run_id=run_id, progress=progress, batch_size=batch_size, reuse=not force,
                  name=str(folder.files["datasets"]))


def ingest(db: Database, source: RowSource, rows: Rows, *, run_id: str | None = None, progress: bool | None = None,
           batch_size: int = IMPORT_BATCH, reuse: bool = True, name: str | None = None) -> ImportResult:
    """Record ``rows`` from ``source`` as one query, in one transaction; return what it did.

    With ``reuse``, rows whose ``source`` (location and checksum) was ingested before are not
    written again: that earlier query is returned. Changed rows update the current state and
    append to the dataset history. ``name`` names the rows in messages (default: the location).
    """
    name = name or source.location
    with db.writing() as conn, db.dialect.import_session(conn), db.dialect.bulk_load(conn):
        if reuse and source.checksum is not None:
            previous = conn.execute(
                sa.select(queries.c.id, queries.c.n_sessions, queries.c.n_datasets)
                .where(queries.c.source == source.location, queries.c.checksum == source.checksum,
                       queries.c.method == source.method, queries.c.error.is_(None))
                .order_by(queries.c.id.desc()).limit(1)).first()
            if previous is not None:
                return ImportResult(previous.id, previous.n_sessions, previous.n_datasets, 0, True)
        started = time.perf_counter()
        qid = new_query(conn, run_id, source.method, {**source.params, "metadata": rows.metadata()},
                        source=source.location, checksum=source.checksum, mode=source.mode)
        n_sessions = _ingest_sessions(db, conn, qid, rows.sessions())
        n_datasets = changed = 0
        repeated: list[str] = []
        show = progress if progress is not None else sys.stderr.isatty()
        with tqdm(total=rows.count_datasets(), unit="rows", desc="import datasets", disable=not show) as bar:
            # Batch k+1 is read and checked in a thread while batch k is written: SQLite works
            # without holding the GIL, so the two overlap on two cores.
            for batch in in_background(_prepared(rows.datasets(batch_size))):
                changed += _ingest_datasets(db, conn, qid, batch, name)
                repeated.extend(batch.repeated)
                n_datasets += batch.rows
                bar.update(batch.rows)
        n_datasets -= len(repeated)
        if repeated:
            # Real Alyx exports repeat ids (one-api keeps both rows); a dataset id names one record here.
            warnings.warn(f"{name}: {len(repeated)} row(s) repeat a dataset id of an earlier row "
                          f"(first: {repeated[0]}); the first row of each id was imported", UserWarning, stacklevel=3)
        conn.execute(queries.update().where(queries.c.id == qid).values(
            n_sessions=n_sessions, n_datasets=n_datasets, duration_s=time.perf_counter() - started))
    return ImportResult(qid, n_sessions, n_datasets, changed, False)


_SESSION_FIELDS = SESSIONS_COLUMNS[1:]
#: A dataset row as staged and stored: the normalised columns, ``eid`` named ``session_id``.
_DATASET_COLUMNS = ["session_id" if c == "eid" else c for c in DATASETS_COLUMNS]
#: Everything but the id may change between imports.
_DATASET_MUTABLE = _DATASET_COLUMNS[1:]


def _ingest_sessions(db: Database, conn: Connection, qid: int, frame: pd.DataFrame) -> int:
    if frame["id"].duplicated().any():
        raise BadInputError(f"duplicate session id {frame['id'][frame['id'].duplicated()].iloc[0]!r} in sessions table")
    now = utcnow()
    rows = _records(frame)
    stage = _stage_table("_incoming_sessions", sessions, SESSIONS_COLUMNS)
    stage.create(conn)
    try:
        if rows:
            conn.execute(stage.insert(), rows)
        i, s = stage.c, sessions.c
        same = sa.and_(*(s[f].is_not_distinct_from(i[f]) for f in _SESSION_FIELDS))
        new_or_changed = sa.select(*(i[c] for c in SESSIONS_COLUMNS),
                                   sa.literal(now).label("first_seen_at"), sa.literal(now).label("updated_at")) \
            .where(~sa.exists().where(s.id == i.id, same))
        ins = db.dialect.insert(sessions).from_select([*SESSIONS_COLUMNS, "first_seen_at", "updated_at"], new_or_changed)
        conn.execute(ins.on_conflict_do_update(
            index_elements=["id"], set_={f: ins.excluded[f] for f in [*_SESSION_FIELDS, "updated_at"]}))
        conn.execute(query_sessions.insert().from_select(["query_id", "session_id"], sa.select(sa.literal(qid), i.id)))
    finally:
        stage.drop(conn)
    return len(rows)


def _ingest_datasets(db: Database, conn: Connection, qid: int, batch: "_Batch", name: str) -> int:
    """Upsert one batch; ids seen before in this ingest are left out and added to ``batch.repeated``.

    The batch goes into a temporary stage table, each row with the id of the history row it
    will get (``state_id``); set-based statements then write the current state (``datasets``),
    one history row per new or changed dataset, and a ``query_datasets`` link for every row.
    """
    n = len(batch.values[0])
    # Numbered as if every row were new (renumbered below if not), when the dialect can do it up front.
    reserved = db.dialect.reserve_state_ids(conn, n)
    now = utcnow()
    stage = _stage_table("_incoming_datasets", datasets, [*_DATASET_COLUMNS, "state_id"], extra=[
        sa.Column("changed", sa.Boolean, nullable=False, server_default=sa.true())])  # new or changed
    stage.create(conn)
    try:
        db.dialect.fill(conn, stage, [*_DATASET_COLUMNS, "state_id"],
                        list(zip(*batch.values, reserved if reserved is not None else [None] * n)))
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
            conn.execute(stage.update().where(d.id == i.id).values(changed=~same, state_id=sa.case((same, d.state_id))))
        if known or reserved is None:
            db.dialect.number_history_rows(conn, stage)
        changed_rows = sa.select(*(i[c] for c in _DATASET_COLUMNS), i.state_id, sa.literal(now), sa.literal(now)) \
            .where(i.changed == sa.true())
        ins = db.dialect.insert(datasets).from_select([*_DATASET_COLUMNS, "state_id", "first_seen_at", "updated_at"],
                                                      changed_rows)
        conn.execute(ins.on_conflict_do_update(
            index_elements=["id"], set_={f: ins.excluded[f] for f in [*_DATASET_MUTABLE, "state_id", "updated_at"]}))
        conn.execute(dataset_history.insert().from_select(
            ["id", "dataset_id", "query_id", "observed_at", *STATE_COLUMNS],
            sa.select(i.state_id, i.id, sa.literal(qid), sa.literal(now), *(i[c] for c in STATE_COLUMNS))
            .where(i.changed == sa.true())))
        n_changed = conn.execute(sa.select(sa.func.count()).where(i.changed == sa.true())).scalar_one()
        r = revisions.c
        conn.execute(revisions.insert().from_select(
            ["name", "first_seen_at"],
            sa.select(i.revision, sa.literal(now)).distinct().where(i.revision != "", i.revision.not_in(sa.select(r.name)))))
        conn.execute(query_datasets.insert().from_select(
            ["query_id", "dataset_id", "state_id"], sa.select(sa.literal(qid), i.id, i.state_id)))
    except sa.exc.IntegrityError as exc:
        raise BadInputError(f"cannot import {name!r}: {exc.orig}") from None
    finally:
        stage.drop(conn)
    return n_changed


@dataclass
class _Batch:
    """Rows of a datasets table ready to stage: column values in id order, without repeated ids."""
    rows: int                # rows read, repeated ones included
    values: list[list]       # per column of _DATASET_COLUMNS
    repeated: list[str]      # ids that repeat an earlier row of the batch (more are found in the database)


def _prepared(frames: Iterator[pd.DataFrame]) -> Iterator[_Batch]:
    """Each normalised datasets frame as a :class:`_Batch`."""
    for frame in frames:
        dup = frame["id"].duplicated()
        # In id order, the inserts of _ingest_datasets walk each index on the dataset id in order
        # instead of jumping around it at random (fewer pages written, and each once).
        kept = frame[~dup].rename(columns={"eid": "session_id"}).sort_values("id")
        yield _Batch(len(frame), _column_values(kept, _DATASET_COLUMNS), frame["id"][dup].tolist())


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


def _stage_table(name: str, like: sa.Table, columns: list[str], extra: list[sa.Column] = ()) -> sa.Table:
    """A temporary table with some of ``like``'s columns, for set-based upserts."""
    return sa.Table(name, sa.MetaData(), *(sa.Column(c, like.c[c].type) for c in columns), *extra,
                    prefixes=["TEMPORARY"])


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts of plain Python values, with None for every kind of missing value."""
    out = frame.astype(object).where(frame.notna(), None)
    return out.to_dict("records")
