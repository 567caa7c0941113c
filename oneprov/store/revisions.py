"""Revision choice in SQL: which revision of each dataset ONE would load.

A *dataset* here is one file name in one collection of one session; its *revisions* are the rows
that differ only by the ``#revision#`` folder. ONE's rules (one-api ``filter_revision_last_before``),
applied after the QC filter:

- no revision asked: the row flagged ``default_revision`` when exactly one is flagged; otherwise the
  greatest revision (a group of one row is taken as is). Several flagged rows are an error
  (:class:`ALFMultipleRevisionsFound`).
- revision ``X`` asked: the greatest revision ``<= X``, compared as plain strings, the unrevised
  file (``''``) always a candidate; nothing when there is no candidate.

Everything happens in one statement, for one session or all of them at once. On SQLite it is a
``GROUP BY`` over ``ix_datasets_revision_choice`` (session, collection, name, revision, QC, default
flag: the choice never reads the table) whose bare ``rowid`` comes from the row of ``max(revision)``
(SQLite's documented min/max rule), then the chosen rows are read in rowid order; on PostgreSQL it
is a window function over the same groups. Revisions compare byte-wise, as Python compares them: on
PostgreSQL the comparison uses the "C" collation whatever the database's own collation is (both
statements are in ``dialects.py``). The rows of the result come in no particular order.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> store.datasets_last_before(revision="2024-01-01").empty
True
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from ..alf import QC_LEVELS, check_uuid, qc_name
from ..errors import ALFMultipleRevisionsFound
from . import dialects
from .driver import Prepared, Reader, fetch_all
from .engine import Database
from .records import current, held_by, holds_everything, latest_import
from .schema import dataset_records

__all__ = ["ALFMultipleRevisionsFound", "COLUMNS", "chosen_ids", "datasets_last_before", "last_before",
           "last_before_select", "qc_names_up_to"]

#: The columns every revision choice returns, in this order.
COLUMNS = ["dataset_uuid", "session_uuid", "rel_path", "collection", "revision", "name", "qc",
           "default_revision", "file_size", "hash", "exists", "record_id"]


def qc_names_up_to(qc: str | int, ignore_qc_not_set: bool = False) -> list[str]:
    """The QC names at or below ``qc`` (ONE keeps ``qc <= FAIL`` by default)."""
    level = QC_LEVELS[qc_name(qc)]
    return [n for n, v in QC_LEVELS.items() if v <= level and not (ignore_qc_not_set and n == "NOT_SET")]


def last_before_select(
    dialect: str,
    revision: str | sa.BindParameter | None = None,
    *,
    qc: str | int = "FAIL",
    ignore_qc_not_set: bool = False,
    where: Iterable[sa.ColumnElement[bool]] = (),
    strict: bool = True,
) -> sa.Select:
    """The SELECT that picks one revision per dataset among the rows passing ``where`` and the QC filter.

    Rows come back with :data:`COLUMNS` plus ``n_default``, the number of rows of the dataset
    flagged as default (0 when a revision is asked), in no particular order. A dataset with several
    defaults is an error only when ``strict`` (the caller reports it, see :func:`last_before`);
    without ``strict`` its greatest revision is chosen (ONE with ``assert_unique=False``).
    ``dialect`` names the back end (its statement is its own: see ``dialects.py``).
    """
    return dialects.of(dialect).revision_choice(revision, _conditions(qc, ignore_qc_not_set, where), strict, _output)


def _conditions(qc: str | int, ignore_qc_not_set: bool, where: Iterable[sa.ColumnElement[bool]]) -> list:
    return [dataset_records.c.qc.in_(qc_names_up_to(qc, ignore_qc_not_set)), *where]


def _output(row: sa.FromClause) -> list[sa.ColumnElement]:
    """The result columns (:data:`COLUMNS`) of a dataset record."""
    c = row.c
    return [c.uuid.label("dataset_uuid"), c.session_uuid, c.rel_path, c.collection, c.revision, c.name, c.qc,
            c.default_revision, c.file_size, c.hash, c.exists, c.id.label("record_id")]


def last_before(
    conn: Connection | Reader,
    revision: str | None = None,
    *,
    qc: str | int = "FAIL",
    ignore_qc_not_set: bool = False,
    where: Iterable[sa.ColumnElement[bool]] = (),
    strict: bool = True,
    session: str | None = None,
    records: str = "all",
    query: int | None = None,
) -> pd.DataFrame:
    """Run :func:`last_before_select` and return one row per chosen dataset (see :data:`COLUMNS`).

    ``conn`` is a SQLAlchemy connection, or a driver reader (the one-session fast path: ``session``
    given, no ``where``). ``records`` says which dataset records take part: ``'all'``,
    ``'current'`` (each row's latest record of a complete query) or ``'query'`` (those ``query``
    returned). ``session`` restricts
    the choice to one session (a canonical UUID) by a bound parameter: with no other ``where``, the
    statement is compiled once per back end and options (the fast path). Raises
    :class:`ALFMultipleRevisionsFound` when no revision is asked and a dataset has several default
    revisions, as ONE does (unless not ``strict``).
    """
    if session is None:   # (one session's few rows are cheaper to test than the test is to skip)
        records = _simplest(conn, records, query)
    where = list(where)
    params: dict[str, Any] = {}
    if where:
        if session is not None:
            where.append(dataset_records.c.session_uuid == session)
        where.extend(_membership(records, query))
        compiled = Prepared(last_before_select(conn.dialect.name, revision, qc=qc, ignore_qc_not_set=ignore_qc_not_set,
                                               where=where, strict=strict), conn.dialect)
    else:
        compiled = _statement(conn.dialect, revision is not None, strict, qc_name(qc), ignore_qc_not_set,
                              session is not None, records)
        if revision is not None:
            params["revision"] = revision
        if session is not None:
            params["session"] = session
        if records == "query":
            params["query"] = query
    rows = _fetch(conn, compiled, params)
    if revision is None and strict and len(rows):
        n_default = rows.field("n_default")
        if pc.max(n_default).as_py() > 1:
            bad = rows.filter(pc.greater(n_default, 1))
            if session is not None:
                where = [*where, dataset_records.c.session_uuid == session]
            _refuse_several_defaults(conn, bad.to_pylist(),
                                     _conditions(qc, ignore_qc_not_set, [*where, *_membership(records, query)]), {})
    return _frame(rows)


def _membership(records: str, query: int | sa.BindParameter | None) -> list[sa.ColumnElement[bool]]:
    """The condition that keeps the records that take part (see :func:`last_before`)."""
    if records == "all":
        return []
    if records == "current":
        return [current(dataset_records)]
    if records == "query":
        return [held_by(dataset_records, query)]
    raise ValueError(f"records={records!r}: expected 'all', 'current' or 'query'")


def _simplest(conn: Connection, records: str, query: int | None) -> str:
    """'all' when the records asked for are all there are: one complete import holds every record
    (as when a cache has a database of its own), which then needs no membership test per row."""
    if records != "all" and holds_everything(conn, latest_import(conn) if records == "current" else query):
        return "all"
    return records


@lru_cache(maxsize=64)
def _statement(dialect: Dialect, with_revision: bool, strict: bool, qc: str, ignore_qc_not_set: bool,
               one_session: bool, records: str) -> Prepared:
    """The choice for all sessions or one (bound ``session``), ``revision`` and ``query`` bound, compiled once."""
    where = [dataset_records.c.session_uuid == sa.bindparam("session")] if one_session else []
    where.extend(_membership(records, sa.bindparam("query")))
    stmt = last_before_select(dialect.name, sa.bindparam("revision") if with_revision else None, qc=qc,
                              ignore_qc_not_set=ignore_qc_not_set, where=where, strict=strict)
    return Prepared(stmt, dialect)


#: Rows taken from the driver at a time: each batch becomes arrow before the next is fetched, which
#: keeps few Python objects alive at once (faster than one fetchall, and far less memory).
_FETCH_ROWS = 1000


def _fetch(conn: Connection | Reader, compiled: Prepared, params: dict[str, Any]) -> pa.StructArray:
    """The rows from the driver's cursor, as one arrow struct array (see :func:`_row_type`).

    SQLAlchemy's Row objects and result processors would cost more than the choice itself. The
    statement runs inside the connection's transaction if it has begun one; otherwise it is its own
    (one statement reads one snapshot either way, and a BEGIN would cost a tenth of a one-session
    choice).
    """
    row_type = _row_type(conn.dialect.name)
    own = not isinstance(conn, Reader)
    cursor = conn.connection.driver_connection.cursor() if own else conn.cursor
    try:
        cursor.execute(*compiled.bind(params))
        parts = []
        while rows := cursor.fetchmany(_FETCH_ROWS):
            parts.append(pa.array(rows, type=row_type))
    finally:
        if own:
            cursor.close()
    if len(parts) == 1:
        return parts[0]
    return pa.concat_arrays(parts) if parts else pa.array([], type=row_type)


@lru_cache(maxsize=4)
def _row_type(dialect: str) -> pa.StructType:
    """The driver's rows as arrow types (booleans are 0/1 integers on SQLite)."""
    flag = dialects.of(dialect).flag_type
    kinds = {"default_revision": flag, "exists": flag, "file_size": pa.int64(), "record_id": pa.int64()}
    return pa.struct([(c, kinds.get(c, pa.large_string())) for c in COLUMNS] + [("n_default", pa.int64())])


#: pandas' own dtype for text: ``str`` (arrow-backed) with pandas 3, ``object`` before.
_TEXT = pd.Series(["x"]).dtype
_TEXT_IS_ARROW = getattr(_TEXT, "storage", None) == "pyarrow"


def _frame(rows: pa.StructArray) -> pd.DataFrame:
    """The result frame, column by column from arrow (pandas' row-wise inference costs far more).

    Dtypes: text columns as pandas infers text; ``default_revision`` and ``exists`` bool, or the
    nullable ``boolean`` when a value is unknown; ``file_size`` ``Int64``; ``record_id`` int64
    (float64 when a value is unknown, as pandas infers it).
    """
    columns: dict[str, Any] = {}
    for name, values in zip(COLUMNS, rows.flatten()):
        if name in ("default_revision", "exists"):
            if values.null_count:
                mask = values.is_null().to_numpy(zero_copy_only=False)
                flags = values.fill_null(False if pa.types.is_boolean(values.type) else 0)
                columns[name] = pd.arrays.BooleanArray(flags.to_numpy(zero_copy_only=False).astype(bool), mask)
            else:
                columns[name] = values.to_numpy(zero_copy_only=False).astype(bool)
        elif name == "file_size":
            if values.null_count:
                mask = values.is_null().to_numpy(zero_copy_only=False)
                values = values.fill_null(0)
            else:
                mask = np.zeros(len(values), dtype=bool)
            columns[name] = pd.arrays.IntegerArray(values.to_numpy(zero_copy_only=False, writable=True), mask)
        elif name == "record_id":
            columns[name] = values.to_numpy(zero_copy_only=False, writable=True)
        elif _TEXT_IS_ARROW:
            columns[name] = _arrow_text(values)
        elif _TEXT == np.dtype(object):
            columns[name] = values.to_numpy(zero_copy_only=False)
        else:
            columns[name] = pd.array(values, dtype=_TEXT)
    return _assembled(columns, len(rows))


def _arrow_text(values: pa.Array) -> Any:
    """A text column of pandas' own arrow-backed dtype over ``values`` (large_string), not copied.

    The public constructor checks and casts the array and makes a dtype each time (a fifth of a
    one-session choice's frame); pandas' internal ``_from_pyarrow_array`` (the constructor of its
    own operations' results, pandas 3) skips that; without it, the constructor."""
    if _TEXT_FROM_ARROW is not None:
        return _TEXT_FROM_ARROW(values)
    return pd.arrays.ArrowStringArray(values, dtype=_TEXT)


_TEXT_FROM_ARROW = (getattr(pd.arrays.ArrowStringArray(pa.array([""], pa.large_string()), dtype=_TEXT),
                            "_from_pyarrow_array", None) if _TEXT_IS_ARROW else None)


def _assembled(columns: dict[str, Any], n: int) -> pd.DataFrame:
    """A DataFrame of columns built here (each an array of ``n`` values, of its final dtype).

    pandas' constructor checks and converts every column again: for a one-session choice that
    costs four times building the columns. Its internal ``_from_arrays`` (in pandas since 0.23)
    skips that; without it, the constructor.
    """
    if _FROM_ARRAYS is not None:
        return _FROM_ARRAYS(list(columns.values()), columns=_column_index(tuple(columns)), index=pd.RangeIndex(n),
                            verify_integrity=False)
    return pd.DataFrame(columns, copy=False)


_FROM_ARRAYS = getattr(pd.DataFrame, "_from_arrays", None)


@lru_cache(maxsize=8)
def _column_index(names: tuple[str, ...]) -> pd.Index:
    """The column labels as an Index, made once (an Index is immutable; making one costs more than the frame)."""
    return pd.Index(list(names))


def _refuse_several_defaults(conn: Connection | Reader, bad: list[dict], conditions: list, params: dict) -> None:
    """Raise ALFMultipleRevisionsFound for the first dataset (in session, collection, name order)
    among ``bad`` chosen rows, naming its default revisions, as ONE does."""
    first = min(bad, key=lambda r: (r["session_uuid"], r["collection"], r["name"]))
    d = dataset_records.c
    stmt = sa.select(d.revision).where(*conditions, d.session_uuid == first["session_uuid"],
                                       d.collection == first["collection"], d.name == first["name"],
                                       d.default_revision == sa.true())
    revs = ", ".join(f'"{rev}"' for rev in sorted(r.revision for r in fetch_all(conn, stmt, params)))
    raise ALFMultipleRevisionsFound(f"{'/'.join(filter(None, (first['collection'], first['name'])))} of session "
                                    f"{first['session_uuid']} has several default revisions: {revs}")


@lru_cache(maxsize=16)
def _choice_statement(dialect: str, with_revision: bool, strict: bool) -> sa.Select:
    """:func:`last_before_select` over bound dataset ids, built once (the client's hot path)."""
    return last_before_select(dialect, sa.bindparam("revision") if with_revision else None, qc="CRITICAL",
                              where=[dataset_records.c.id.in_(sa.bindparam("ids", expanding=True))], strict=strict)


def chosen_ids(conn: Connection | Reader, ids: list[int], revision: str | None = None, *,
               strict: bool = True) -> list[int]:
    """The record ids ONE would load among the given dataset records (QC already applied by the caller)."""
    if not ids:
        return []
    params: dict = {"ids": list(ids)}
    if revision is not None:
        params["revision"] = revision
    rows = fetch_all(conn, _choice_statement(conn.dialect.name, revision is not None, strict), params)
    if revision is None and strict:
        bad = [r._asdict() for r in rows if r.n_default > 1]
        if bad:
            where = [dataset_records.c.id.in_(sa.bindparam("ids", expanding=True))]
            _refuse_several_defaults(conn, bad, _conditions("CRITICAL", False, where), {"ids": list(ids)})
    return [r.record_id for r in rows]


def datasets_last_before(
    db: Database,
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
    above ``qc`` are left out (CRITICAL by default). The choice is among the current state of the
    datasets (each row's latest record, as the ``datasets`` view shows it), or with
    ``within_query`` among the records an earlier query (e.g. an import: a client's tables)
    returned; ``ids`` restricts it to these dataset UUIDs. One SQL statement; the rows come in no
    particular order.

    Parameters
    ----------
    db : Store
        The store (``self`` when called as ``store.datasets_last_before(...)``).
    revision : str, optional
        The revision cutoff (e.g. '2024-04-01'), compared with revisions as plain text. Default None:
        each dataset's default revision.
    eid : str or iterable of str, optional
        A session UUID, or several. Default None: every session.
    qc : str or int, optional
        The highest QC kept: a name (any case: NOT_SET, PASS, WARNING, FAIL, CRITICAL) or its value
        (0, 10, 30, 40, 50). Default 'FAIL', as ONE's.
    ignore_qc_not_set : bool, optional
        Leave out datasets whose QC is NOT_SET. Default False.
    within_query : int, optional
        Choose among the records this query returned. Default None: the current records.
    ids : iterable of str, optional
        Only these dataset UUIDs. Default None: every dataset.
    strict : bool, optional
        Refuse a dataset with several default revisions, as ONE does. Default True. With False,
        its greatest revision is chosen.

    Returns
    -------
    pandas.DataFrame
        One row per dataset chosen, with the columns :data:`COLUMNS` (``dataset_uuid``,
        ``session_uuid``, ``rel_path``, ``collection``, ``revision`` ('' when unrevised), ``name``,
        ``qc``, ``default_revision``, ``file_size`` (bytes), ``hash`` (md5), ``exists``,
        ``record_id``).

    Raises
    ------
    BadInputError
        ``eid`` or ``ids`` holds a malformed UUID, or ``qc`` is not a QC name or value.
    ALFMultipleRevisionsFound
        With ``revision=None`` and ``strict``, a dataset has several default revisions (one-api's
        exception; the message names them).
    DatabaseError
        The database cannot be read.
    """
    where, session = [], None
    if isinstance(eid, str):
        session = check_uuid(eid, "session id")  # a bound parameter of a statement compiled once
    elif eid is not None:
        where.append(dataset_records.c.session_uuid.in_([check_uuid(e, "session id") for e in eid]))
    if ids is not None:
        where.append(dataset_records.c.uuid.in_([check_uuid(i, "dataset id") for i in ids]))
    # One session: the fast path, on the driver's cursor (SQLAlchemy's connection would cost a fifth of it).
    reading = db.driver_reading if session is not None and not where else db.reading
    with reading() as conn:
        return last_before(conn, revision, qc=qc, ignore_qc_not_set=ignore_qc_not_set, where=where, strict=strict,
                           session=session, records="current" if within_query is None else "query", query=within_query)
