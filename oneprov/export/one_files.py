"""ONE's artefacts as views over the store: loaded-UUID CSV lists and ``sessions.pqt``/``datasets.pqt``.

Every file is written atomically (a temporary file, then a rename) and recorded in the ``exports``
table with its row count and sha256.

>>> from oneprov import open_store
>>> from oneprov.export import export_loaded_ids
>>> store = open_store(":memory:")
>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     export_loaded_ids(store, "/tmp")   # nothing loaded yet: a warning, no file
([], None)
>>> "record_loaded" in str(caught[0].message)
True
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import files, tables
from ..errors import BadInputError
from ..files import write_atomically
from ..store import ExportedFile, Store
from ..store.dialects import Dialect
from ..store.driver import Prepared
from ..store.engine import result_frame
from ..store.records import ROW_KEY, current, held_by, holds_everything, latest_import, with_returned
from ..store.schema import access_events, dataset_records, queries, session_records
from ..tables import SESSIONS_COLUMNS

#: Rows per batch of a streamed export: ~100 MB of Python objects at most.
_BATCH_ROWS = 100_000


def loaded_ids_filename(sessions_only: bool, when: datetime | None = None) -> str:
    """ONE's file name for a loaded-ids list: ``<YYYY-MM-DDTHH-MM-SS>_loaded_dataset_uuids.csv``.

    Parameters
    ----------
    sessions_only : bool
        A list of session UUIDs (``..._loaded_session_uuids.csv``) rather than dataset UUIDs.
    when : datetime.datetime, optional
        The time stamp. Default None: now (local time).

    Returns
    -------
    str
        The file name.
    """
    stamp = (when or datetime.now()).strftime("%Y-%m-%dT%H-%M-%S")
    return f"{stamp}_loaded_{'session' if sessions_only else 'dataset'}_uuids.csv"


def export_loaded_ids(
    store: Store,
    directory: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    sessions_only: bool = False,
    **filters: Any,
) -> tuple[list[str], Path | None]:
    """Write the UUIDs of loaded datasets (or their sessions) as ONE's CSV; return ``(ids, path)``.

    The file goes to ``path`` if given, else to ``directory`` under ONE's time-stamped name; when that
    name is taken (two saves in one second) a counter is added to the time stamp rather than
    overwriting. ``filters`` (``run``, ``project``, ``label``, ``scope``, ``since_clear``,
    ``listed_only``) are those of :func:`oneprov.store.loaded.loaded_ids`. With nothing loaded: a
    warning, ``([], None)`` and no file, as ONE does.

    The file is recorded in the store's exports.

    Parameters
    ----------
    store : Store
        The store.
    directory : str or os.PathLike, optional
        The folder of a file with ONE's time-stamped name (see :func:`loaded_ids_filename`).
        Default None (then ``path`` is needed).
    path : str or os.PathLike, optional
        The file to write (replaced if it exists). Default None: a new file in ``directory``.
    sessions_only : bool, optional
        Write the sessions' UUIDs (header ``session_uuid``) instead of the datasets'
        (``dataset_uuid``). Default False.
    **filters
        ``run``, ``project``, ``label``, ``scope`` (text) and ``since_clear``, ``listed_only``
        (bool), as :func:`oneprov.store.loaded.loaded_ids` takes them. None: every load.

    Returns
    -------
    ids : list of str
        The UUIDs written, sorted; ``[]`` when nothing was loaded.
    path : pathlib.Path or None
        The file written; None when nothing was loaded.

    Raises
    ------
    BadInputError
        Neither ``directory`` nor ``path`` is given, or the file's folder does not exist.
    TypeError
        A filter other than those above.
    DatabaseError
        The database cannot be read or written.

    Warns
    -----
    UserWarning
        Nothing loaded matches the filters: no file is written.
    """
    if path is not None:
        target = Path(path).expanduser().absolute()
    elif directory is not None:
        target = Path(directory).expanduser().absolute() / loaded_ids_filename(sessions_only)
    else:
        raise BadInputError("export_loaded_ids needs a directory or a path")
    if not target.parent.is_dir():
        raise BadInputError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    ids = store.loaded_ids(sessions_only=sessions_only, **filters)
    if not ids:
        warnings.warn("No datasets loaded; check that the `record_loaded` attribute is True "
                      "and that the filters match a run", stacklevel=2)
        return [], None
    # ONE's file: a header line, then one UUID per line, each ending with a newline.
    header = b"session_uuid\n" if sessions_only else b"dataset_uuid\n"
    body = ids.text.encode("ascii")

    def write(f) -> None:
        f.write(header)
        f.write(body)
        f.write(b"\n")

    if path is not None:
        write_atomically(target, write)
    else:
        stamp, rest = target.name.split("_", 1)
        n = 1
        while not write_atomically(target, write, overwrite=False):
            n += 1
            target = target.with_name(f"{stamp}-{n}_{rest}")
    params = {"project": filters.get("project"), "label": filters.get("label"), "scope": filters.get("scope"),
              "since_clear": filters.get("since_clear", False)}
    store.record_exports([ExportedFile("loaded_session_ids" if sessions_only else "loaded_dataset_ids", target,
                                       len(ids), filters.get("run"), params)])
    return ids, target


def cache_frames(store: Store, run: str | None = None, query: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sessions and datasets to export, in the normalised layout of :mod:`oneprov.tables`.

    Without ``run``: every session and dataset in the store in its current state, or only those
    ``query`` returned (e.g. one import of cache tables: a client's tables), in the state it gave
    them. With ``run``: exactly the sessions and datasets that run queried or loaded, each in the
    latest state the run saw it in.

    Parameters
    ----------
    store : Store
        The store.
    run : str, optional
        A run id (``query`` is then ignored). Default None.
    query : int, optional
        A query id. Default None.

    Returns
    -------
    sessions : pandas.DataFrame
        Columns ``id``, ``lab``, ``subject``, ``date``, ``number``, ``task_protocol``, ``projects``;
        sorted by ``id``.
    datasets : pandas.DataFrame
        Columns ``eid``, ``id``, ``rel_path``, ``file_size`` (bytes), ``hash`` (md5), ``exists``,
        ``qc``, ``default_revision``; sorted by ``eid``, then ``id``.

    Raises
    ------
    DatabaseError
        The database cannot be read.
    """
    with _snapshot(store) as conn:
        ss, ds = _cache_selects(conn, run, query)
        return result_frame(conn.execute(ss)), result_frame(conn.execute(ds))


@contextmanager
def _snapshot(store: Store) -> Iterator[Connection]:
    """A read transaction whose statements all see one state of the store.

    (PostgreSQL's default gives each statement its own snapshot; SQLite's read transactions keep one.)
    """
    with store.reading() as conn:
        store.dialect.snapshot(conn)
        yield conn


def _cache_selects(conn: Connection, run: str | None, query: int | None) -> tuple[sa.Select, sa.Select]:
    """The SELECTs of :func:`cache_frames`: sessions sorted by id, datasets by (eid, id)."""
    d, s = dataset_records, session_records
    ds = sa.select(d.c.session_uuid.label("eid"), d.c.uuid.label("id"), d.c.rel_path, d.c.file_size, d.c.hash,
                   d.c.exists, d.c.qc, d.c.default_revision)
    ss = sa.select(s.c.uuid.label("id"), *(s.c[c] for c in SESSIONS_COLUMNS[1:]))
    if run is not None:
        # Each row in the latest state the run saw: the records its queries returned and its loads used.
        seen = sa.union_all(
            sa.select(d.c.id).select_from(with_returned(queries, queries.c.id, d)).where(queries.c.run_id == run),
            sa.select(access_events.c.record_id).where(access_events.c.run_id == run,
                                                       access_events.c.record_id.is_not(None))).subquery("seen")
        latest = (sa.select(sa.func.max(d.c.id)).where(d.c.id.in_(sa.select(seen.c.id)))
                  .group_by(*(d.c[c] for c in ROW_KEY["dataset_records"])))
        ds = ds.where(d.c.id.in_(latest))
        queried = (sa.select(sa.func.max(s.c.id)).select_from(with_returned(queries, queries.c.id, s))
                   .where(queries.c.run_id == run).group_by(s.c.uuid))
        loaded = sa.select(d.c.session_uuid).where(d.c.id.in_(latest))
        # a session whose datasets the run loaded without a query returning it: as it is now
        ss = ss.where(sa.or_(s.c.id.in_(queried), sa.and_(current(s), s.c.uuid.in_(loaded),
                                                          s.c.uuid.not_in(sa.select(s.c.uuid).where(s.c.id.in_(queried))))))
    elif query is not None:
        # A query holding every record holds them all: skip the membership test, whose plans cost
        # 2-3 times the plain scan (a lookup per row, or a sort).
        if not holds_everything(conn, query, s):
            ss = ss.where(held_by(s, query))
        if not holds_everything(conn, query, d):
            ds = ds.where(held_by(d, query))
    else:
        latest = latest_import(conn)
        if not holds_everything(conn, latest, s):
            ss = ss.where(current(s))
        if not holds_everything(conn, latest, d):
            ds = ds.where(current(d))
    # UUIDs are fixed-format lowercase hex: every collation orders them as bytes, as ONE sorts them.
    # The datasets are sorted, rather than read along an index by session: that walk reads the
    # table in session order, a random read per row unless the import inserted in that order.
    return ss.order_by(s.c.uuid), ds.order_by(d.c.session_uuid + sa.literal_column("''"), d.c.uuid)


def _fetch(conn: Connection, dialect: Dialect, stmt: sa.Select, size: int) -> Iterator[list[tuple]]:
    """The rows of ``stmt`` as lists of at most ``size`` tuples, from the driver's cursor.

    SQLAlchemy's Row objects and result processors would cost more than the rest of the export.
    On PostgreSQL the cursor is server-side, so that memory holds one list.
    """
    if not conn.in_transaction():
        conn.begin()  # the store's BEGIN (and isolation level), which the driver cursor would skip
    sql, params = Prepared(stmt, conn.dialect).bind({})
    cursor = dialect.stream_cursor(conn)
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(size):
            yield rows
    finally:
        cursor.close()


def _arrow_type(column: sa.ColumnElement, dialect: Dialect) -> pa.DataType:
    """The arrow type of a column's values as the driver gives them (sqlite3: booleans 0/1, dates as text)."""
    if isinstance(column.type, sa.Boolean):
        return dialect.flag_type
    if isinstance(column.type, sa.Date):
        return dialect.date_type
    return pa.int64() if isinstance(column.type, sa.Integer) else pa.string()


def _store_batches(conn: Connection, dialect: Dialect, stmt: sa.Select, table: str,
                   path: Path) -> Iterator[pa.RecordBatch]:
    """The rows of ``stmt`` as record batches of ONE's ``table``, each holding whole sessions."""
    # Rows convert to arrow in one call as a struct array, in C, rather than column by column.
    row_type = pa.struct([(c.key, _arrow_type(c, dialect)) for c in stmt.selected_columns])
    if table == "sessions":
        for rows in _fetch(conn, dialect, stmt, _BATCH_ROWS):
            yield tables.sessions_batch(_columns(rows, row_type))
        return
    eid = row_type.get_field_index("eid")
    held: list[tuple] = []  # the rows of the last session fetched, which may go on in the next fetch
    for rows in _fetch(conn, dialect, stmt, _BATCH_ROWS):
        rows = held + rows if held else rows
        cut = len(rows)
        while cut and rows[cut - 1][eid] == rows[-1][eid]:
            cut -= 1
        rows, held = rows[:cut], rows[cut:]
        if rows:
            yield tables.datasets_batch(_columns(rows, row_type), path)
    if held:
        yield tables.datasets_batch(_columns(held, row_type), path)


def _columns(rows: list[tuple], row_type: pa.StructType) -> dict[str, pa.Array]:
    return dict(zip(row_type.names, pa.array(rows, type=row_type).flatten()))


def export_cache(
    store: Store,
    out_dir: str | os.PathLike,
    *,
    run: str | None = None,
    query: int | None = None,
    clobber: bool = False,
    origin: str | None = "oneprov",
    record: bool = True,
    by_run: str | None = None,
) -> dict[str, Path]:
    """Write ONE-format ``sessions.pqt`` and ``datasets.pqt`` into ``out_dir``; return their paths.

    The tables load in one-api's local mode. Without ``clobber`` they are merged with tables
    already in the folder, as ONE's ``save_cache`` does (rows updated by id, new rows appended,
    the earliest ``date_created`` kept, ``date_modified`` set); ``default_revision`` is always kept.
    Otherwise the rows stream from the database to the file in batches, in bounded memory.
    With ``origin=None`` the tables keep the metadata of the tables ``query`` imported (their
    ``origin`` and ``date_created``), as one-api's ``save_cache`` keeps its tables' own. Each file
    is recorded in ``exports`` (unless not ``record``), with the run that wrote it (``by_run``, as
    ``save_cache`` writes; else ``run``), which the tables' metadata names too (``oneprov_run``).

    Both files are written first, then moved in place together (a writer killed part-way leaves a
    journal, and the next export or import of the folder completes the moves).

    Parameters
    ----------
    store : Store
        The store.
    out_dir : str or os.PathLike
        The folder to write into; it must exist.
    run : str, optional
        Export what this run queried or loaded (see :func:`cache_frames`). Default None.
    query : int, optional
        Export the rows this query returned (see :func:`cache_frames`). Default None: every row in
        its current state.
    clobber : bool, optional
        Replace tables already in ``out_dir`` instead of merging with them. Default False.
    origin : str or None, optional
        The tables' ``origin`` metadata. Default "oneprov". None: keep the metadata of the tables
        ``query`` imported, with a new ``date_modified``.
    record : bool, optional
        Record the files in the store's exports. Default True.
    by_run : str, optional
        The run that writes the tables (recorded, and named in their metadata). Default None: ``run``.

    Returns
    -------
    dict of str to pathlib.Path
        The paths written, by table name: ``{'sessions': ..., 'datasets': ...}``.

    Raises
    ------
    BadInputError
        ``out_dir`` does not exist, or a table already in it cannot be read for the merge.
    OSError
        A file cannot be written or moved in place. A failure while writing leaves the tables in
        ``out_dir`` as they were.
    DatabaseError
        The database cannot be read or written.
    """
    folder = Path(out_dir).expanduser().absolute()
    if not folder.is_dir():
        raise BadInputError(f"export folder {str(folder)!r} does not exist")
    files.finish_replacing(folder)           # (a pair another export left half-replaced, its leftovers)
    written: dict[str, tables.WrittenTable] = {}
    now = datetime.now().strftime(tables.DATE_FORMAT)
    try:
        with _snapshot(store) as conn:
            selects = dict(zip(("sessions", "datasets"), _cache_selects(conn, run, query)))
            imported = _imported_metadata(conn, query) if origin is None else {}
            for name, stmt in selects.items():
                target = folder / f"{name}.pqt"
                staged = files.temporary_name(target)   # both tables are written, then moved in together
                meta = {**imported.get(name, {}), "date_modified": now} if origin is None else {"origin": origin}
                if by_run:
                    meta["oneprov_run"] = by_run
                if clobber or not target.exists():
                    # (closed here: its cursor, before the rollback)
                    with closing(_store_batches(conn, store.dialect, stmt, name, target)) as batches:
                        written[name] = tables.write_batches(batches, staged, name, meta)
                    continue
                # Merging needs every row: in memory, as ONE does.
                frame = result_frame(conn.execute(stmt))
                old = tables.read_sessions(target) if name == "sessions" else pd.concat(tables.iter_datasets(target))
                frame = tables.merge_tables(old, frame, name)
                meta = tables.merge_metadata(tables.read_metadata(target), meta)
                write = tables.write_sessions if name == "sessions" else tables.write_datasets
                written[name] = write(frame, staged, meta)
        files.replace_together([(result.path, folder / f"{name}.pqt") for name, result in written.items()])
        written = {name: dataclasses.replace(result, path=folder / f"{name}.pqt") for name, result in written.items()}
    except BaseException:
        for result in written.values():
            if result.path.parent == folder and result.path.name.endswith(".tmp"):
                result.path.unlink(missing_ok=True)
        written = {}
        raise
    finally:
        # Recorded once the read transaction is over: an in-memory store has a single connection.
        if record and written:
            store.record_exports([ExportedFile(f"{result.path.stem}_table", result.path, result.rows, by_run or run,
                                               {"clobber": clobber}) for result in written.values()])
    return {name: result.path for name, result in written.items()}


def _imported_metadata(conn: Connection, query: int | None) -> dict[str, dict]:
    """The ``one_metadata`` of each table that ``query`` (an import) read, as it recorded them."""
    if query is None:
        return {}
    params = conn.execute(sa.select(queries.c.params).where(queries.c.id == query)).scalar()
    metadata = json.loads(params or "{}").get("metadata") or {}
    return {name: meta for name, meta in metadata.items() if isinstance(meta, dict)}
