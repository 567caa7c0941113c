"""Rows in, from any source, through one door: sessions and dataset rows recorded as one query.

Whatever the rows' origin (a folder of ONE cache tables today; an Alyx REST answer or a one-api
instance's in-memory tables next), :func:`ingest` records them as one query: a row whose values
equal its current record keeps that record; any other row becomes a new record. Records are
never changed, so a client whose tables say something else than another cache's keeps its answers.

How an import runs:

1. Every row is read and checked before anything is written: bad input changes nothing. Each
   row's digest is compared with those an earlier import stored (:mod:`.digests`): the rows
   unchanged since keep that import's records without any record being read.
2. One process at a time imports given rows: another that starts the same import waits for it and
   then uses it.
3. The rows are recorded in many short transactions (each well under a second), so that other
   processes keep recording loads while a large import runs: every row (read again), or, after
   an earlier import of mostly the same rows, only those that changed (kept from the check). The
   query is *complete* only when its last row is in, and nothing answers from an incomplete query:
   an import that fails or is killed half-way changes no answer. The records it returned are
   linked as spans of record ids, and their digests stored, for the next import.
4. Into a database without dataset records, the dataset records' secondary indexes are built once,
   after the rows are in, in the transaction that completes the import (a million random inserts
   into an index cost several times one sort).

The rows come as a :class:`Rows` object: the sessions as one normalised frame, the datasets as
normalised arrow batches (the layouts of :mod:`oneprov.tables`), which it can read twice;
:class:`RowSource` says where they came from, and is what the query records.

>>> import tempfile
>>> from oneprov import open_store
>>> from oneprov.synthetic import make_repository
>>> repo = make_repository(tempfile.mkdtemp(), write_files=False)
>>> result = import_cache(open_store(":memory:"), repo.root)
>>> (result.sessions, result.datasets) == (len(repo.sessions), len(repo.datasets))
True
"""
from __future__ import annotations

import functools
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from tqdm.auto import tqdm

from ..errors import BadInputError, DuplicateIdError
from ..files import process_alive
from ..secrets import scrub
from ..tables import DATASETS_ARROW, DATASETS_COLUMNS, SESSIONS_COLUMNS, STATE_COLUMNS, Folder, dataset_values
from . import dialects, digests
from .driver import prepared
from .engine import Database, mapped_errors
from .migrate import BULK_FOREIGN_KEYS, BULK_INDEXES, missing_foreign_keys, missing_indexes
from .records import ROW_KEY, link, merged_spans, spans_of
from .recording import new_query
from .schema import dataset_records, queries, revisions, session_records, utcnow

_log = logging.getLogger("oneprov.store")

#: Rows read from a datasets table and prepared at a time.
IMPORT_BATCH = 100_000
#: How long one write transaction of an import may hold the write lock, in seconds: others wait that long.
WRITE_SECONDS = 0.3
#: Dataset rows of an import's first write transaction, and of any at the least (then sized by time).
FIRST_PART, MIN_PART = 5_000, 1_000
#: While other connections committed in the last this many seconds, an import gives way to them...
CONTENDED_S = 2.0
#: ...at most this often, in seconds (a load waits about this long behind an import, at most).
GIVE_WAY_EVERY_S = 0.5
#: Rows ingested in one transaction (a REST answer, an edit of the tables in memory), read once.
SMALL_ROWS = 20_000
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
    def dataset_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]: ...   # called twice: check, then write
    def count_datasets(self) -> int | None: ...
    def metadata(self) -> dict[str, Any]: ...   # recorded as the query's params["metadata"]
    def verify(self) -> None: ...   # raise if the rows read may not be those of the source's checksum


@dataclass(frozen=True)
class ImportResult:
    """What an ingest did."""

    query_id: int
    sessions: int          # rows of sessions
    datasets: int          # rows of datasets
    changed: int           # dataset rows new or changed (each a new record)
    unchanged_tables: bool  # the same rows were ingested before from the same source: nothing was written


def import_cache(db: Database, tables_dir: str | os.PathLike, *, run_id: str | None = None,
                 progress: bool | None = None, batch_size: int = IMPORT_BATCH, force: bool = False,
                 origin: dict[str, Any] | None = None) -> ImportResult:
    """Ingest ONE cache tables (``sessions.pqt``, ``datasets.pqt``) as one recorded query.

    ``origin`` (recorded with the query's parameters, mode 'remote') says where downloaded tables
    came from: the Alyx base URL, its ``cache/info`` answer and the data-release tag.
    Importing tables identical to an earlier import into this database writes nothing and
    returns that import (unless ``force``). A row repeating an earlier row (the same dataset id in
    the same session at the same path) is left out with a warning. The datasets table streams in
    batches, with progress bars on a terminal (``progress``).

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.import_cache(...)``).
    tables_dir : str or os.PathLike
        The folder holding ``datasets.pqt`` (required) and ``sessions.pqt``.
    run_id : str, optional
        The run that imports the tables. Default None: no run.
    progress : bool, optional
        Show progress bars. Default None: when standard error is a terminal.
    batch_size : int, optional
        Dataset rows read and prepared at a time. Default :data:`IMPORT_BATCH` (100,000).
    force : bool, optional
        Import the tables even if identical tables were imported before. Default False.
    origin : dict of str to object, optional
        Where downloaded tables came from (``base_url``, ``cache_info``, ``tag``); the query is then
        of mode 'remote'. Default None: local tables.

    Returns
    -------
    ImportResult
        The import's query id, its numbers of session and dataset rows, how many dataset rows were
        new or changed (each a new record), and ``unchanged_tables``: True when an earlier import
        of the same tables was returned and nothing was written.

    Raises
    ------
    BadInputError
        The folder or its ``datasets.pqt`` does not exist; a table is not readable parquet, lacks a
        column, or holds a bad value (a malformed UUID, an unknown QC, a bad date...); a table
        changed while it was read. Nothing answers from a failed import.
    DuplicateIdError
        The sessions table gives one id to several sessions (a :class:`~oneprov.BadInputError`, and
        one-api's ``ALFMultipleObjectsFound``).
    DatabaseError
        The database cannot be written.

    Warns
    -----
    UserWarning
        Some rows repeat the dataset id, session and path of an earlier row (the first is imported).
    """
    folder = Folder.open(tables_dir)
    source = RowSource("import_cache", str(folder.path), folder.checksum(),
                       {"tables_dir": str(folder.path), **({"origin": origin} if origin else {})},
                       "remote" if origin else "local")
    return ingest(db, source, folder, run_id=run_id, progress=progress, batch_size=batch_size, reuse=not force,
                  name=str(folder.files["datasets"]))


def ingest_rows(db: Database, rows: Rows, *, method: str, location: str, run_id: str | None = None,
                params: dict[str, Any] | None = None, mode: str = "local", progress: bool | None = None,
                checksum: str | None = None) -> ImportResult:
    """Record rows that no file holds (tables in memory, a REST answer) as one query of ``method``
    from ``location`` (a description: an Alyx URL, "in-memory edit of query 3" ...). With a
    ``checksum`` of what was received, the same rows from the same location are written once.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.ingest(...)``).
    rows : Rows
        The sessions and dataset rows, normalised (e.g. :class:`oneprov.tables.Frames` over
        one-api's tables).
    method : str
        The query's method (e.g. "record_one", "edit_cache").
    location : str
        Where the rows came from, as text; the query's source.
    run_id : str, optional
        The run that ingests them. Default None: no run.
    params : dict of str to object, optional
        The query's parameters (JSON); the rows' own metadata is added to them. Default None.
    mode : str, optional
        'local' or 'remote'. Default 'local'.
    progress : bool, optional
        Show progress bars. Default None: when standard error is a terminal.
    checksum : str, optional
        A digest of the rows as received. Default None: the rows are always written.

    Returns
    -------
    ImportResult
        What the ingest did (see :func:`import_cache`).

    Raises
    ------
    BadInputError
        A row holds a bad value. Nothing answers from a failed ingest.
    DuplicateIdError
        Several sessions have one id.
    DatabaseError
        The database cannot be written.
    """
    return ingest(db, RowSource(method, location, checksum, params or {}, mode), rows, run_id=run_id,
                  progress=progress, reuse=checksum is not None)


def ingest(db: Database, source: RowSource, rows: Rows, *, run_id: str | None = None, progress: bool | None = None,
           batch_size: int = IMPORT_BATCH, reuse: bool = True, name: str | None = None) -> ImportResult:
    """Record ``rows`` from ``source`` as one query; return what it did (see the module's text).

    With ``reuse``, rows whose ``source`` (location and checksum) was ingested before are not
    written again: that earlier query is returned (and while another process is ingesting them,
    this one waits for it). ``name`` names the rows in messages (default: the location).
    Logged on ``oneprov.store``: what was recorded, at INFO.
    """
    name = name or source.location
    started = time.perf_counter()
    result = _ingest(db, source, rows, run_id=run_id, progress=progress, batch_size=batch_size, reuse=reuse, name=name)
    if result.unchanged_tables:
        _log.info("%s: the same rows were recorded before, as query %d (nothing written)", name, result.query_id)
    else:
        _log.info("%s: %d sessions and %d datasets rows recorded as query %d (%d new dataset records) in %.2f s",
                  name, result.sessions, result.datasets, result.query_id, result.changed,
                  time.perf_counter() - started)
    return result


def _ingest(db: Database, source: RowSource, rows: Rows, *, run_id: str | None, progress: bool | None,
            batch_size: int, reuse: bool, name: str) -> ImportResult:
    """:func:`ingest`, once its name is known."""
    if reuse and source.checksum is not None:
        with db.reading() as conn:   # (no write lock for tables seen before: the common case)
            done = _earlier(conn, source)
        if done is not None and done.completed_at is not None:
            return ImportResult(done.id, done.n_sessions, done.n_datasets, 0, True)
    show = progress if progress is not None else sys.stderr.isatty()
    if (rows.count_datasets() or SMALL_ROWS + 1) <= SMALL_ROWS:
        return _ingest_small(db, source, rows, _sessions(rows, name), run_id=run_id, reuse=reuse, name=name)
    # One connection for the whole import: its page cache stays warm. One transaction per step.
    failure: BaseException | None = None
    try:
        # The datasets are read and checked in a thread from here on (on a second core), while the
        # sessions and the earlier import's digests are read (a re-import of 100,000 rows: 0.42 -> 0.35 s).
        with db.connection() as conn, Background(rows.dataset_batches(batch_size)) as reading:
            writer = _Writer(db.dialect, conn, db.checkpoint_soon)   # (before the check: it sees who writes meanwhile)
            sessions = _sessions(rows, name)
            with db.reading() as reader:   # (what the rows are compared with: no write lock)
                earlier = {t.name: digests.baseline(reader, source.location, t)
                           for t in (session_records, dataset_records)}
            checked = _check(reading, rows.count_datasets() or 0, show, earlier["dataset_records"])
            claim = _claim(conn, source, rows, run_id, reuse)
            if isinstance(claim, ImportResult):
                return claim
            (qid, bulk), started = claim, time.perf_counter()
            returned = {t.name: _Returned(qid, t) for t in (session_records, dataset_records)}
            with _import_session(db, conn, bulk):
                try:
                    def complete(n_datasets: int) -> None:   # (inside the import's last transaction)
                        rows.verify()
                        if bulk:
                            _build_indexes(conn)
                        for part in returned.values():
                            part.link(conn)
                        conn.execute(queries.update().where(queries.c.id == qid).values(
                            n_sessions=len(sessions), n_datasets=n_datasets,
                            duration_s=time.perf_counter() - started, completed_at=utcnow()))

                    if checked.changed is not None and sum(map(len, checked.changed)) <= writer.rows:
                        # a few rows changed since the earlier import: all of it in one transaction
                        with conn.begin():
                            _ingest_sessions(db, conn, qid, sessions, returned["session_records"],
                                             earlier["session_records"])
                            changed = _ingest_changed_datasets(db, conn, None, qid, checked, returned, name, show)
                            complete(checked.n_rows)
                        return ImportResult(qid, len(sessions), checked.n_rows, changed, False)
                    with conn.begin():
                        _ingest_sessions(db, conn, qid, sessions, returned["session_records"],
                                         earlier["session_records"])
                    if checked.changed is not None:   # only the rows changed since the earlier import
                        changed, repeated = _ingest_changed_datasets(db, conn, writer, qid, checked, returned, name,
                                                                     show), []
                    else:
                        changed, repeated = _ingest_all_datasets(db, conn, writer, qid, rows, batch_size, checked,
                                                                 returned, name, show)
                    n_datasets = checked.n_rows - len(repeated)
                    if repeated:
                        # One-api keeps such rows twice; here a row (id, session, path) is one record.
                        warnings.warn(f"{name}: {len(repeated)} row(s) repeat the dataset id, session and path of "
                                      f"an earlier row (first: {repeated[0]}); the first of each was imported",
                                      UserWarning, stacklevel=3)
                    with conn.begin():
                        complete(n_datasets)
                except BaseException as exc:
                    # Marked once this connection is gone: interrupted mid-statement, it may still hold the
                    # write lock, so it is closed, not reused. SQLite closes it only once no statement is
                    # left, and the traceback's frames hold the cursor of the interrupted one: their
                    # local variables are cleared first.
                    failure = exc
                    traceback.clear_frames(exc.__traceback__)
                    conn.invalidate()
    except BaseException:
        if failure is None:
            raise
        # (closing the connection failed too: the import's own error is the one to report)
    if failure is not None:
        _abandon(db, qid, failure)
        with mapped_errors(db.where):
            raise failure
    return ImportResult(qid, len(sessions), n_datasets, changed, False)


def _ingest_small(db: Database, source: RowSource, rows: Rows, sessions: pd.DataFrame, *, run_id: str | None,
                  reuse: bool, name: str) -> ImportResult:
    """:func:`ingest` of a few rows (a REST answer, an edit): read and checked once, then written
    and completed in one short transaction, which holds the write lock for milliseconds."""
    batches = list(rows.dataset_batches(SMALL_ROWS))   # (the reader raises on a bad row: nothing written yet)
    hashes = np.concatenate([_identities(b) for b in batches]) if batches else np.empty(0, dtype=np.int64)
    hashes.sort()
    repeats = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    repeated: list[str] = []
    started = time.perf_counter()
    params = {**source.params, "metadata": rows.metadata()}
    with db.writing() as conn:
        if reuse and source.checksum is not None:
            other = _earlier(conn, source)
            if other is not None and other.completed_at is not None:
                return ImportResult(other.id, other.n_sessions, other.n_datasets, 0, True)
        qid = new_query(conn, run_id, source.method, params, source=source.location, checksum=source.checksum,
                        mode=source.mode)
        returned = {t.name: _Returned(qid, t) for t in (session_records, dataset_records)}
        # Into an empty database, the indexes are built after the rows, in this same transaction:
        # a tenth of the cost of inserting into them row by row.
        bulk = len(hashes) > 1000 and _start_bulk(conn)
        earlier = {t.name: digests.baseline(conn, source.location, t) for t in (session_records, dataset_records)}
        _ingest_sessions(db, conn, qid, sessions, returned["session_records"], earlier["session_records"])
        changed = sum(_ingest_part(db, conn, qid, part, returned["dataset_records"], name,
                                   earlier=earlier["dataset_records"])
                      for part in _prepared(iter(batches), repeats, repeated, db.dialect) if len(part))
        n_datasets = sum(len(b) for b in batches) - len(repeated)
        if bulk:
            _build_indexes(conn)
        rows.verify()
        for part in returned.values():
            part.link(conn)
        conn.execute(queries.update().where(queries.c.id == qid).values(
            n_sessions=len(sessions), n_datasets=n_datasets, duration_s=time.perf_counter() - started,
            completed_at=utcnow()))
    if repeated:
        warnings.warn(f"{name}: {len(repeated)} row(s) repeat the dataset id, session and path of an earlier row "
                      f"(first: {repeated[0]}); the first of each was imported", UserWarning, stacklevel=3)
    return ImportResult(qid, len(sessions), n_datasets, changed, False)


# -- reading twice --------------------------------------------------------------------------

#: Rows changed since the earlier import of the same source that an import keeps from its check
#: (to write them without reading the table again); with more, it reads the table again.
KEEP_CHANGED = 100_000
#: Rows of a datasets table small enough that its check keeps them all, to be written without
#: reading the table again (100,000 rows: ~70 MB, and 0.15-0.2 s of reading and checking saved).
KEEP_READ = 200_000


@dataclass
class _Checked:
    """What the check of every dataset row found."""

    n_rows: int
    repeats: set[int]         # identity hashes seen more than once (candidates for repeated rows)
    earlier: digests.Baseline | None = None   # the earlier import compared with
    changed: list[pa.RecordBatch] | None = None  # the rows not unchanged since it (None: write every row)...
    replaces: list[np.ndarray] | None = None     # ...and of each, whether it is a row of it changed since
    batches: list[pa.RecordBatch] | None = None  # every row, as read (None: read again to write them)


def _sessions(rows: Rows, name: str) -> pd.DataFrame:
    """The sessions of ``rows``, refused if two have one id."""
    sessions = rows.sessions()
    if sessions["id"].duplicated().any():
        raise DuplicateIdError(f"{name}: duplicate session id "
                               f"{sessions['id'][sessions['id'].duplicated()].iloc[0]!r} in the sessions table")
    return sessions


def _check(read: Iterable[pa.RecordBatch], expected: int, show: bool, earlier: digests.Baseline | None) -> _Checked:
    """Read and check every dataset row (``read``: the reader raises on a bad one; about
    ``expected`` rows); count the rows and find the identities seen more than once. With an
    ``earlier`` import of the same source, also find the rows unchanged since: the others are kept,
    when there are few and no row repeats another."""
    # One array of every row's hash, filled in place (a list of parts and their concatenation would
    # hold it twice: 160 MB at 10 million rows).
    n = 0
    every = np.empty(expected, dtype=np.int64)
    changed: list[pa.RecordBatch] | None = [] if earlier is not None else None
    replaces: list[np.ndarray] = []
    batches: list[pa.RecordBatch] | None = [] if expected <= KEEP_READ else None
    kept = 0
    with tqdm(total=expected, unit="rows", desc="check datasets", disable=not show) as bar:
        for batch in read:
            if batches is not None and n + len(batch) <= KEEP_READ:
                batches.append(batch)
            else:
                batches = None
            if changed is not None:
                row_digests = digests.row_digests(batch, "dataset_records")
                part = row_digests[:, 2].view(np.int64)
                unmatched = earlier.match(row_digests) < 0
                kept += int(unmatched.sum())
                if kept <= KEEP_CHANGED:   # (with whether each is a row of the earlier import, changed since)
                    changed.append(batch.filter(pa.array(unmatched)))
                    replaces.append(earlier.replaces(row_digests[unmatched]))
                else:
                    changed = None
            else:
                part = _identities(batch)
            if n + len(part) > len(every):    # (more rows than the table's metadata said)
                every = np.concatenate([every[:n], np.empty(max(len(part), n), dtype=np.int64)])
            every[n:n + len(part)] = part
            n += len(part)
            bar.update(len(batch))
    every = every[:n]
    every.sort()
    repeats = set(every[1:][every[1:] == every[:-1]].tolist())
    changed = None if repeats else changed
    return _Checked(n, repeats, earlier, changed, replaces if changed is not None else None, batches)


def _identities(batch: pa.RecordBatch) -> np.ndarray:
    """A 64-bit hash of each row's identity (dataset id, session, rel_path) of normalised rows
    (a hash seen twice is then compared value by value)."""
    return digests.row_identities(batch, "dataset_records")


@dataclass(frozen=True)
class _Part:
    """Dataset rows to write: normalised (arrow), in session and path order; each row's digest; and,
    for a back end that is given Python values (:attr:`Dialect.fills_arrow` false), their values by
    column (:data:`_DATASET_COLUMNS`), made in the reader's thread."""

    rows: pa.RecordBatch | pa.Table
    digests: np.ndarray
    values: list[list] | None

    def __len__(self) -> int:
        return len(self.digests)

    def slice(self, start: int, n: int) -> "_Part":
        return _Part(self.rows.slice(start, n), self.digests[start:start + n],
                     None if self.values is None else [column[start:start + n] for column in self.values])

    def take(self, at: np.ndarray) -> "_Part":
        return _Part(self.rows.take(pa.array(at, pa.int64())), self.digests[at],
                     None if self.values is None else [[column[k] for k in at] for column in self.values])

    def column_values(self) -> list[list]:
        return self.values if self.values is not None else dataset_values(self.rows)


def _prepared(batches: Iterator[pa.RecordBatch | pa.Table], repeats: set[int], repeated: list[str],
              dialect: dialects.Dialect) -> Iterator[_Part]:
    """Each batch of normalised dataset rows as a part to write, in session and path order, without
    rows that repeat an earlier row (their ids are added to ``repeated``); with Python values when
    the ``dialect`` is given those."""
    seen: set[tuple] = set()
    for batch in batches:
        row_digests = digests.row_digests(batch, "dataset_records")
        if repeats:
            candidates = np.flatnonzero(np.isin(row_digests[:, 2].view(np.int64), list(repeats)))
            keep = np.ones(len(batch), dtype=bool)
            identities = zip(*(batch.column(c).take(pa.array(candidates)).to_pylist() for c in ("id", "eid", "rel_path")))
            for k, identity in zip(candidates, identities):
                keep[k] = identity not in seen
                seen.add(identity)
            repeated.extend(batch.column("id").filter(pa.array(~keep)).to_pylist())
            batch, row_digests = batch.filter(pa.array(keep)), row_digests[keep]
        # In session order, the inserts walk the indexes by session in order instead of jumping
        # around them at random (fewer pages written, and each once).
        order = pc.sort_indices(batch, sort_keys=[("eid", "ascending"), ("rel_path", "ascending"), ("id", "ascending")])
        rows = batch.take(order)
        yield _Part(rows, row_digests[order.to_numpy()], None if dialect.fills_arrow else dataset_values(rows))


def _ingest_all_datasets(db: Database, conn: Connection, writer: _Writer, qid: int, rows: Rows, batch_size: int,
                         checked: _Checked, returned: dict[str, _Returned], name: str,
                         show: bool) -> tuple[int, list[str]]:
    """Record every dataset row, read again, one short write transaction per part (compared first with
    the earlier import the check found, if any); return how many rows became new records, and the
    ids of the rows left out as repeats."""
    repeated: list[str] = []
    # Batch k+1 is read and prepared in a thread while batch k is written: SQLite works without
    # holding the GIL, so the two overlap on two cores. (Leaving the block stops the thread, also
    # when a write fails.)
    batches = iter(checked.batches) if checked.batches is not None else rows.dataset_batches(batch_size)
    with tqdm(total=checked.n_rows, unit="rows", desc="import datasets", disable=not show) as bar, \
            Background(_prepared(batches, checked.repeats, repeated, db.dialect)) as prepared:
        changed = _write_parts(db, conn, writer, qid, prepared, returned["dataset_records"], name, bar,
                               earlier=checked.earlier)
    return changed, repeated


def _ingest_changed_datasets(db: Database, conn: Connection, writer: _Writer | None, qid: int, checked: _Checked,
                             returned: dict[str, _Returned], name: str, show: bool) -> int:
    """Record the dataset rows of an import that the check compared with an earlier import: the
    unchanged rows keep their records (nothing to write but their digests); the rows of the earlier
    import that changed get new records; the other rows are written as any row is. Return how many
    rows became new records. With a ``writer``, in transactions of its size; without, in ``conn``'s."""
    def unchanged() -> None:
        for ids, row_digests in checked.earlier.unchanged():
            returned["dataset_records"].add(conn, ids, row_digests)

    changed = pa.Table.from_batches(checked.changed, schema=DATASETS_ARROW)
    replacing = pa.array(np.concatenate([np.zeros(0, dtype=bool), *checked.replaces]))
    parts = [(_prepared(iter([changed.filter(replacing)]), set(), [], db.dialect), True),
             (_prepared(iter([changed.filter(pc.invert(replacing))]), set(), [], db.dialect), False)]
    if writer is None:
        unchanged()
        return sum(_ingest_part(db, conn, qid, part, returned["dataset_records"], name, new=new)
                   for prepared, new in parts for part in prepared if len(part))
    writer.write(unchanged, int(checked.earlier.used.sum()))
    with tqdm(total=len(changed), unit="rows", desc="import changed datasets", disable=not show) as bar:
        return sum(_write_parts(db, conn, writer, qid, prepared, returned["dataset_records"], name, bar, new=new)
                   for prepared, new in parts)


def _write_parts(db: Database, conn: Connection, writer: _Writer, qid: int, prepared: Iterator[_Part],
                 returned: _Returned, name: str, bar: tqdm, *, new: bool = False,
                 earlier: digests.Baseline | None = None) -> int:
    """Write prepared rows (of :func:`_prepared`) in parts of the writer's size, a transaction each
    (``new`` and ``earlier``: see :func:`_ingest_part`); return how many rows became new records."""
    changed = 0
    for rows in prepared:
        start = 0
        while start < len(rows):
            part = rows.slice(start, writer.rows)
            changed += writer.write(lambda: _ingest_part(db, conn, qid, part, returned, name, new=new, earlier=earlier),
                                    len(part))
            start += len(part)
            bar.update(len(part))
    return changed


# -- one import at a time -------------------------------------------------------------------

def _earlier(conn: Connection, source: RowSource) -> Any:
    """The latest ingest of the same rows from the same source that did not fail (None if none)."""
    q = queries.c
    return conn.execute(
        sa.select(q.id, q.n_sessions, q.n_datasets, q.completed_at, q.params, q.started_at)
        .where(q.source == source.location, q.checksum == source.checksum, q.method == source.method, q.error.is_(None))
        .order_by(q.id.desc()).limit(1)).first()


def _claim(conn: Connection, source: RowSource, rows: Rows, run_id: str | None,
           reuse: bool) -> tuple[int, bool] | ImportResult:
    """Start the import's query: return its id, and whether it builds the indexes after the rows (see
    :func:`_start_bulk`). Or return the import of the same rows that another process finished
    meanwhile. While another live process imports the same rows, wait for it."""
    params = {**source.params, "metadata": rows.metadata(), "importer": {"host": socket.gethostname(), "pid": os.getpid()}}
    waiting = False
    while True:
        with conn.begin():
            other = _earlier(conn, source) if reuse and source.checksum is not None else None
            if other is not None and other.completed_at is not None:
                return ImportResult(other.id, other.n_sessions, other.n_datasets, 0, True)
            if other is None or not _importing(conn, other):
                qid = new_query(conn, run_id, source.method, params, source=source.location,
                                checksum=source.checksum, mode=source.mode)
                return qid, _start_bulk(conn)
        if not waiting:
            waiting = True
            _log.info("%s: another process is recording the same rows (query %d); waiting for it", source.location,
                      other.id)
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
            if conn.execute(sa.select(dataset_records.c.id).limit(1)).first() is not None:
                _build_indexes(conn)   # (a bulk import that failed must not leave them missing)
            conn.execute(queries.update().where(queries.c.id == qid, queries.c.error.is_(None)).values(error=scrub(reason)))
    except Exception:  # the database may be what failed; the import stays incomplete either way
        pass


def _start_bulk(conn: Connection) -> bool:
    """In an import's first transaction: with no dataset record at all in the database, drop the
    secondary indexes of ``dataset_records``, and its foreign keys where the dialect says so (added
    again by :func:`_build_indexes`). Only plans that read ``dataset_records`` are slower meanwhile,
    and there is nothing in it to read; the import's own rows name its query, which exists. With
    records, add back any that a first import stopped half-way (killed) left missing."""
    if conn.execute(sa.select(dataset_records.c.id).limit(1)).first() is not None:
        _build_indexes(conn)   # (any that a first import stopped half-way left missing)
        return False
    if not dialects.of(conn).may_alter(conn, dataset_records):
        return False
    missing = missing_indexes(conn)
    for index in BULK_INDEXES:
        if index.name not in missing:
            index.drop(conn)
    missing = missing_foreign_keys(conn)
    if dialects.of(conn).bulk_drops_foreign_keys:
        for key in BULK_FOREIGN_KEYS:
            if key.name not in missing:
                conn.execute(sa.schema.DropConstraint(key))
    return True


def _build_indexes(conn: Connection) -> None:
    """Create the dataset records' secondary indexes and foreign keys that are missing (after a bulk
    import, or one that failed), when this connection may."""
    missing, keys = missing_indexes(conn), missing_foreign_keys(conn)
    if (missing or keys) and not dialects.of(conn).may_alter(conn, dataset_records):
        return
    for index in BULK_INDEXES:
        if index.name in missing:
            index.create(conn)
    for key in BULK_FOREIGN_KEYS:
        if key.name in keys:
            conn.execute(sa.schema.AddConstraint(key))


@contextmanager
def _import_session(db: Database, conn: Connection, bulk: bool) -> Iterator[None]:
    """The dialect's settings of an import's connection; what it committed is then checkpointed
    apart (its commits leave that to the store's thread: :meth:`Database.checkpoint_soon`)."""
    try:
        with db.dialect.import_session(conn, bulk):
            yield
    finally:
        db.checkpoint_soon()


class _Writer:
    """Runs an import's write transactions: sizes each to about :data:`WRITE_SECONDS` from the time
    the last one took, and gives way to other writers while there are any.

    A waiting writer (SQLite's busy handler) tries for the lock every 100 ms at most, and misses
    the microseconds between two transactions of the import: alone, a load could wait for seconds.
    So, while other connections have committed in the last :data:`CONTENDED_S` seconds, the import
    pauses for the dialect's ``give_way_s`` at most every :data:`GIVE_WAY_EVERY_S` seconds; alone,
    it never pauses. Create it before the import's first step, so that it sees who writes meanwhile.
    ``committed`` is called after each transaction commits.
    """

    def __init__(self, dialect: dialects.Dialect, conn: Connection, committed: Callable[[], None] = lambda: None) -> None:
        self.rows = FIRST_PART
        self.pauses = 0
        self._dialect, self._conn, self._committed = dialect, conn, committed
        self._commits = dialect.commits_by_others(conn)
        self._others_at = self._paused_at = -float("inf")

    def write(self, step: Any, n: int) -> Any:
        """Run ``step()`` (writing ``n`` rows) in a transaction; size the next part from its time."""
        self._give_way()
        started = time.perf_counter()
        with self._conn.begin():
            result = step()
        self._committed()
        seconds = max(time.perf_counter() - started, 1e-3)
        self.rows = int(min(max(n * WRITE_SECONDS / seconds, MIN_PART), IMPORT_BATCH))
        return result

    def _give_way(self) -> None:
        if not self._dialect.give_way_s:
            return
        now, commits = time.monotonic(), self._dialect.commits_by_others(self._conn)
        if commits != self._commits:
            self._commits, self._others_at = commits, now
        if now - self._others_at < CONTENDED_S and now - self._paused_at >= GIVE_WAY_EVERY_S:
            time.sleep(self._dialect.give_way_s)
            self.pauses += 1
            self._paused_at = time.monotonic()
            # (what committed during the pause is seen by the next step's check)


# -- writing records ------------------------------------------------------------------------

#: A session row's values besides its id.
_SESSION_FIELDS = SESSIONS_COLUMNS[1:]
#: Session rows recorded per statement (500,000 sessions at once, as SQLAlchemy's dicts, took 380 MB).
_SESSION_PART = 20_000
#: A dataset row as recorded: the normalised columns, ``id`` as ``uuid``, ``eid`` as ``session_uuid``.
_DATASET_COLUMNS = [{"id": "uuid", "eid": "session_uuid"}.get(c, c) for c in DATASETS_COLUMNS]


class _Returned:
    """The records an import's query returns, of one record table, as they are written: their digests
    are stored a part at a time, in the transaction that wrote the rows, and their spans are linked
    when the query completes (:meth:`link`, in its last transaction)."""

    def __init__(self, qid: int, records: sa.Table):
        self.qid, self.records = qid, records
        self.spans: list[tuple[int, int]] = []
        self.part = 0

    def add(self, conn: Connection, record_ids: Any, row_digests: np.ndarray) -> None:
        """Rows given these records (in ``conn``'s transaction), and their digests."""
        record_ids = np.asarray(record_ids, dtype=np.int64)
        if len(record_ids):
            self.spans.extend(spans_of(record_ids))
            self.part = digests.store_digests(conn, self.qid, self.records.name, record_ids, row_digests, self.part)

    def link(self, conn: Connection) -> None:
        link(conn, self.records, self.qid, merged_spans(self.spans))


def _ingest_sessions(db: Database, conn: Connection, qid: int, frame: pd.DataFrame, returned: _Returned,
                     earlier: digests.Baseline | None) -> None:
    """Record the sessions (checked, distinct ids) inside ``conn``'s transaction: those unchanged since
    the ``earlier`` import keep its records, the others are compared with their current records."""
    values, columns = frame.rename(columns={"id": "uuid"}), ["uuid", *_SESSION_FIELDS]
    row_digests = digests.row_digests(frame, "session_records")
    ids = np.zeros(len(frame), dtype=np.int64)
    todo = np.arange(len(frame))
    if earlier is not None:
        found = earlier.match(row_digests)
        ids = np.maximum(found, 0)
        todo = np.flatnonzero(found < 0)
    for start in range(0, len(todo), _SESSION_PART):   # (a part at a time: bounded memory)
        at = todo[start:start + _SESSION_PART]
        part = _bound(conn, session_records, columns, _column_values(values.iloc[at], columns))
        ids[at] = _record(db, conn, session_records, columns, part, _SESSION_FIELDS, qid)[0]
    returned.add(conn, ids, row_digests)


def _ingest_part(db: Database, conn: Connection, qid: int, part: _Part, returned: _Returned, name: str, *,
                 new: bool = False, earlier: digests.Baseline | None = None) -> int:
    """Record one part of the dataset rows and their digests (inside ``conn``'s transaction); return
    how many became new records.

    Each row keeps its current record when that has the same values, and gets a new record
    otherwise. ``new``: every row is known to differ from its current record. ``earlier``: an
    earlier import to compare with first (rows unchanged since keep its records, rows of it that
    changed get new records; only the others are compared with their current records).
    """
    if new or not _anything_recorded(conn, dataset_records):
        ids, n_new = _ingest_new_datasets(db, conn, qid, part, name)
    elif earlier is None:
        ids, n_new = _ingest_known_datasets(db, conn, qid, part, name)
    else:
        ids = earlier.match(part.digests)
        todo = np.flatnonzero(ids < 0)
        changed = earlier.replaces(part.digests[todo])
        n_new = 0
        for rows, ingest_rows in ((todo[changed], _ingest_new_datasets), (todo[~changed], _ingest_known_datasets)):
            if len(rows):
                got, made = ingest_rows(db, conn, qid, part.take(rows), name)
                ids[rows] = got
                n_new += made
    returned.add(conn, ids, part.digests)
    return n_new


def _ingest_new_datasets(db: Database, conn: Connection, qid: int, part: _Part,
                         name: str) -> tuple[Sequence[int], int]:
    """Dataset rows that are all new records (a first import, or rows changed since the import they
    are compared with), written straight into ``dataset_records``. Return the rows' records, and
    how many are new."""
    now = utcnow()
    ids = db.dialect.reserve_ids(conn, dataset_records, len(part))
    constants = {"query_id": qid, "first_seen_at": now}
    try:
        if db.dialect.fills_arrow:
            columns = {"id": pa.array(np.asarray(ids, dtype=np.int64)),
                       **{column: part.rows.column(c) for column, c in zip(_DATASET_COLUMNS, DATASETS_COLUMNS)}}
            db.dialect.fill_arrow(conn, dataset_records, pa.table(columns), constants)
        else:
            db.dialect.fill(conn, dataset_records, ["id", *_DATASET_COLUMNS], list(zip(ids, *part.values)), constants)
    except sa.exc.IntegrityError as exc:
        raise BadInputError(f"cannot import {name!r}: {exc.orig}") from None
    _add_revisions(conn, pc.unique(part.rows.column("revision")).to_pylist(), now)
    return ids, len(ids)


def _ingest_known_datasets(db: Database, conn: Connection, qid: int, part: _Part,
                           name: str) -> tuple[Sequence[int], int]:
    """Dataset rows when the database holds dataset records already: each row keeps its current
    record when that has the same values, and gets a new record otherwise. Return the rows'
    records, and how many are new."""
    now = utcnow()
    values = part.column_values()
    try:
        ids, new = _record(db, conn, dataset_records, _DATASET_COLUMNS, values, STATE_COLUMNS, qid, now)
        _add_revisions(conn, (values[_DATASET_COLUMNS.index("revision")][k] for k in new), now)
    except sa.exc.IntegrityError as exc:
        raise BadInputError(f"cannot import {name!r}: {exc.orig}") from None
    return ids, len(new)


def _add_revisions(conn: Connection, names: Iterable[str], now: Any) -> None:
    """Add the revisions among ``names`` ('' is none) that are not known yet."""
    seen = {rev for rev in names if rev}
    if seen:
        known = set(conn.execute(sa.select(revisions.c.name).where(revisions.c.name.in_(sorted(seen)))).scalars())
        if seen - known:
            conn.execute(revisions.insert(), [{"name": rev, "first_seen_at": now} for rev in sorted(seen - known)])


#: The column by which :func:`_current_records` reads each table's records: a dataset's records
#: by session, which a first import wrote next to one another (by dataset UUID, every record is a
#: random page: a 1M-row re-import read them in 7.5 s instead of ~2 s) ...
_LOOKUP_BY = {"session_records": "uuid", "dataset_records": "session_uuid"}
#: ... unless the rows are few per session (the rows changed since an earlier import): then by
#: UUID, which reads only their rows' records (1,000 changed rows of 100,000: 80 -> 10 ms).
_FEW_PER_SESSION = 5
#: Values looked up per statement in :func:`_current_records` (a fixed number: one compiled form;
#: a 1M-row re-import took 10.8-11.1 s with 200, 11.3 s with 1,000).
_LOOKUP_CHUNK = 200


def _record(db: Database, conn: Connection, records: sa.Table, columns: list[str], values: list[list],
            fields: list[str], qid: int, now: Any = None) -> tuple[list[int], list[int]]:
    """Give each row (``values``: one list per column of ``columns``, as the driver is given them) its
    record, inside ``conn``'s transaction: its row's current record (the latest of a complete query)
    when that has the same ``fields``, else a new record of this query, inserted here. Return each
    row's record id, and the positions of the rows that got a new one.

    The current records are read and compared here, not in SQL: in a 1M-row re-import, a stage
    table and two correlated UPDATEs over it took 7.9 s (fill 3.2 s, match 3.6 s, compare 1.2 s);
    these lookups take 3.3-4.7 s and the comparison 1.5 s.
    """
    n = len(values[0])
    key = [values[columns.index(c)] for c in ROW_KEY[records.name]]
    state = [values[columns.index(f)] for f in fields]
    by = _LOOKUP_BY[records.name]
    if len(set(values[columns.index(by)])) * _FEW_PER_SESSION > n:
        by = "uuid"
    found = _current_records(conn, records, fields, by, values[columns.index(by)]) \
        if _anything_recorded(conn, records) else {}
    ids: list[int | None] = [None] * n
    new = []
    for k, (row, same) in enumerate(zip(zip(*key), zip(*state))):
        current = found.get(row)
        # (== as SQL's IS NOT DISTINCT FROM: None equals None; SQLite's 0/1 equal False/True)
        if current is not None and current[1] == same:
            ids[k] = current[0]
        else:
            new.append(k)
    if new:
        fresh = db.dialect.reserve_ids(conn, records, len(new))
        db.dialect.fill(conn, records, ["id", *columns],
                        [(i, *(column[k] for column in values)) for i, k in zip(fresh, new)],
                        {"query_id": qid, "first_seen_at": now or utcnow()})
        for i, k in zip(fresh, new):
            ids[k] = i
    return ids, new  # type: ignore[return-value]


def _current_records(conn: Connection, records: sa.Table, fields: list[str], by: str,
                     wanted: list[str]) -> dict[tuple, tuple[int, tuple]]:
    """The current record of every row of ``records`` whose column ``by`` has one of the ``wanted``
    values: its row key -> ``(id, values of fields)``, the values as the driver returns them."""
    stmt = prepared(_lookup_statement(records, tuple(fields), by), conn.dialect)
    width = len(ROW_KEY[records.name])
    wanted = sorted(set(wanted))
    cursor = conn.connection.dbapi_connection.cursor()
    found: dict[tuple, tuple[int, tuple]] = {}
    try:
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start:start + _LOOKUP_CHUNK]
            chunk += chunk[-1:] * (_LOOKUP_CHUNK - len(chunk))   # (padded: the same statement every time)
            cursor.execute(*stmt.bind({"wanted": chunk}))
            for row in cursor.fetchall():
                key, known = row[1:1 + width], found.get(row[1:1 + width])
                if known is None or row[0] > known[0]:
                    found[key] = (row[0], row[1 + width:])
    finally:
        cursor.close()
    return found


@functools.lru_cache(maxsize=None)
def _lookup_statement(records: sa.Table, fields: tuple[str, ...], by: str) -> sa.Select:
    """The records of complete queries with given values of column ``by``: id, row key, ``fields``
    (built once: the driver's compiled form is cached by the statement)."""
    r, q = records.c, queries.c
    return (sa.select(r.id, *(r[c] for c in ROW_KEY[records.name]), *(r[f] for f in fields))
            .join(queries, q.id == r.query_id)
            .where(q.completed_at.is_not(None), r[by].in_(sa.bindparam("wanted", expanding=True))))


def _anything_recorded(conn: Connection, records: sa.Table) -> bool:
    """Whether a complete query has recorded any row of ``records``."""
    q = queries.c
    counted = q.n_datasets if records is dataset_records else q.n_sessions
    return conn.execute(sa.select(q.id).where(q.completed_at.is_not(None), counted > 0).limit(1)).first() is not None


class Background:
    """Iterate ``items`` in a worker thread, started at once, that keeps up to ``depth`` items ready.

    The worker reads ahead from the start, so the caller can do other work before it iterates.
    An exception of the worker is raised where the item would have been; when the consumer stops
    early (or fails), the worker stops too and ``items`` is closed. Iterate it once; leaving the
    ``with`` block (or :meth:`close`) stops the worker, even if it was never iterated.

    >>> with Background(iter(range(3))) as numbers:
    ...     list(numbers)
    [0, 1, 2]
    """

    def __init__(self, items: Iterator[Any], depth: int = 1) -> None:
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._items = items
        self._worker = threading.Thread(target=self._work, name="oneprov-import-reader", daemon=True)
        self._worker.start()

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if not self._put((True, item)):
                    return
            self._put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((False, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                more, item = self._ready.get()
                if more:
                    yield item
                elif item is None:
                    return
                else:
                    raise item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker (it closes ``items``) and wait for it."""
        self._stop.set()
        self._worker.join()

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _column_values(frame: pd.DataFrame, columns: list[str]) -> list[list]:
    """The values of ``frame``'s ``columns``, one list per column, plain Python values (None when missing).

    Column by column, which is several times faster than building a dict or tuple per row.
    """
    return [frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in columns]


def _bound(conn: Connection, table: sa.Table, columns: list[str], values: list[list]) -> list[list]:
    """Column values (one list per column) as SQLAlchemy binds them: through the bind processor of
    each column's type that has one (SQLite stores a date as text), for :meth:`Dialect.fill`."""
    out = list(values)
    for k, column in enumerate(columns):
        process = table.c[column].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if process is not None:
            out[k] = list(map(process, values[k]))
    return out
