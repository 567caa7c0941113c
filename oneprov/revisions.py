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
PostgreSQL the comparison uses the "C" collation whatever the database's own collation is. The
rows of the result come in no particular order.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> store.datasets_last_before(revision="2024-01-01").empty
True
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from .alf import QC_LEVELS, qc_name
from .errors import ALFMultipleRevisionsFound
from .schema import datasets

__all__ = ["ALFMultipleRevisionsFound", "COLUMNS", "chosen_ids", "last_before", "last_before_select", "qc_names_up_to"]

#: The columns every revision choice returns, in this order.
COLUMNS = ["dataset_uuid", "session_uuid", "rel_path", "collection", "revision", "name", "qc",
           "default_revision", "file_size", "hash", "exists", "state_id"]


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
    """
    conditions = _conditions(qc, ignore_qc_not_set, where)
    if dialect == "sqlite":
        return _grouped_select(revision, conditions)
    return _window_select(dialect, revision, conditions, strict)


def _conditions(qc: str | int, ignore_qc_not_set: bool, where: Iterable[sa.ColumnElement[bool]]) -> list:
    return [datasets.c.qc.in_(qc_names_up_to(qc, ignore_qc_not_set)), *where]


def _output(row: sa.FromClause) -> list[sa.ColumnElement]:
    c = row.c
    return [c.id.label("dataset_uuid"), c.session_id.label("session_uuid"), c.rel_path, c.collection, c.revision,
            c.name, c.qc, c.default_revision, c.file_size, c.hash, c.exists, c.state_id]


def _grouped_select(revision: str | sa.BindParameter | None, conditions: list) -> sa.Select:
    """SQLite: one GROUP BY pass over the covering index picks each dataset's row, by rowid.

    With exactly one ``max()`` in a grouped SELECT, SQLite takes the bare ``rowid`` from the row that
    holds the maximum: the greatest revision. With no revision asked, the flagged row is the sum of
    the flagged rows' rowids when exactly one is flagged. The chosen rowids are sorted, so that the
    table is then read in its own order rather than at random.
    """
    d = datasets.c
    rowid = sa.literal_column(f"{datasets.name}.rowid")
    if revision is not None:
        conditions = [*conditions, d.revision <= revision]
        chosen, n_default = rowid, sa.literal_column("0")
    else:
        flagged = d.default_revision == sa.true()
        n_default = sa.func.sum(sa.case((flagged, 1), else_=0))
        chosen = sa.case((n_default == 1, sa.func.sum(sa.case((flagged, rowid)))), else_=rowid)
    choice = (sa.select(chosen.label("chosen"), n_default.label("n_default"), sa.func.max(d.revision).label("top"))
              .where(*conditions)
              .group_by(d.session_id, d.collection, d.name)
              .order_by(sa.literal_column("chosen"))
              .subquery("choice"))
    row = datasets.alias("chosen_row")
    return (sa.select(*_output(row), choice.c.n_default)
            .select_from(choice.join(row, sa.literal_column("chosen_row.rowid") == choice.c.chosen)))


def _window_select(dialect: str, revision: str | sa.BindParameter | None, conditions: list, strict: bool) -> sa.Select:
    """PostgreSQL (and any other back end): window functions over each dataset's rows."""
    d = datasets
    rev = d.c.revision.collate("C") if dialect == "postgresql" else d.c.revision
    group = (d.c.session_id, d.c.collection, d.c.name)
    if revision is not None:
        conditions = [*conditions, rev <= revision]
        n_default = sa.literal_column("0")
    else:
        n_default = sa.func.sum(sa.case((d.c.default_revision == sa.true(), 1), else_=0)).over(partition_by=group)
    ranked = (
        sa.select(*_output(d), n_default.label("n_default"),
                  sa.func.row_number().over(partition_by=group, order_by=rev.desc()).label("newest"))
        .where(*conditions)
        .subquery("ranked")
    )
    r = ranked.c
    if revision is None and strict:
        chosen = sa.or_(sa.and_(r.n_default >= 1, r.default_revision == sa.true()),
                        sa.and_(r.n_default == 0, r.newest == 1))
    elif revision is None:
        chosen = sa.or_(sa.and_(r.n_default == 1, r.default_revision == sa.true()),
                        sa.and_(r.n_default != 1, r.newest == 1))
    else:
        chosen = r.newest == 1
    return sa.select(*(r[c] for c in COLUMNS), r.n_default).where(chosen)


def last_before(
    conn: Connection,
    revision: str | None = None,
    *,
    qc: str | int = "FAIL",
    ignore_qc_not_set: bool = False,
    where: Iterable[sa.ColumnElement[bool]] = (),
    strict: bool = True,
    session: str | None = None,
) -> pd.DataFrame:
    """Run :func:`last_before_select` and return one row per chosen dataset (see :data:`COLUMNS`).

    ``session`` restricts the choice to one session (a canonical UUID) by a bound parameter: with no
    other ``where``, the statement is compiled once per back end and options (the fast path).
    Raises :class:`ALFMultipleRevisionsFound` when no revision is asked and a dataset has several
    default revisions, as ONE does (unless not ``strict``).
    """
    where = list(where)
    params: dict[str, Any] = {}
    if where:
        if session is not None:
            where.append(datasets.c.session_id == session)
        compiled = _compile(last_before_select(conn.dialect.name, revision, qc=qc, ignore_qc_not_set=ignore_qc_not_set,
                                               where=where, strict=strict), conn.dialect)
    else:
        compiled = _statement(conn.dialect, revision is not None, strict, qc_name(qc), ignore_qc_not_set,
                              session is not None)
        if revision is not None:
            params["revision"] = revision
        if session is not None:
            params["session"] = session
    rows = _fetch(conn, compiled, params)
    if revision is None and strict and len(rows):
        n_default = rows.field("n_default")
        if pc.max(n_default).as_py() > 1:
            bad = rows.filter(pc.greater(n_default, 1))
            if not where and session is not None:
                where = [datasets.c.session_id == session]
            _refuse_several_defaults(conn, bad.to_pylist(), _conditions(qc, ignore_qc_not_set, where), {})
    return _frame(rows)


class _Compiled(NamedTuple):
    """A statement compiled for one driver, to run on its DBAPI cursor."""

    sql: str
    positions: tuple[str, ...] | None  # parameter names in order, for a positional paramstyle
    values: dict[str, Any]             # the statement's own parameter values (the QC names ...)

    def parameters(self, given: dict[str, Any]) -> tuple | dict:
        values = {**self.values, **given}
        return values if self.positions is None else tuple(values[n] for n in self.positions)


def _compile(stmt: sa.Select, dialect: Dialect) -> _Compiled:
    """``stmt`` as SQL text for ``dialect``, its IN lists rendered as one parameter per value."""
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    positions = tuple(compiled.positiontup) if compiled.positional else None
    return _Compiled(compiled.string, positions, compiled.construct_params())


@lru_cache(maxsize=64)
def _statement(dialect: Dialect, with_revision: bool, strict: bool, qc: str, ignore_qc_not_set: bool,
               one_session: bool) -> _Compiled:
    """The choice for all sessions or one (bound ``session``), ``revision`` bound, compiled once."""
    # (bound with a placeholder value: the QC names are rendered at compile time, which needs them all)
    where = [datasets.c.session_id == sa.bindparam("session", None)] if one_session else []
    stmt = last_before_select(dialect.name, sa.bindparam("revision", None) if with_revision else None, qc=qc,
                              ignore_qc_not_set=ignore_qc_not_set, where=where, strict=strict)
    return _compile(stmt, dialect)


#: Rows taken from the driver at a time: each batch becomes arrow before the next is fetched, which
#: keeps few Python objects alive at once (faster than one fetchall, and far less memory).
_FETCH_ROWS = 1000


def _fetch(conn: Connection, compiled: _Compiled, params: dict[str, Any]) -> pa.StructArray:
    """The rows from the driver's cursor, as one arrow struct array (see :func:`_row_type`).

    SQLAlchemy's Row objects and result processors would cost more than the choice itself. The
    statement runs inside the connection's transaction if it has begun one; otherwise it is its own
    (one statement reads one snapshot either way, and a BEGIN would cost a tenth of a one-session
    choice).
    """
    row_type = _row_type(conn.dialect.name)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(compiled.sql, compiled.parameters(params))
        parts = []
        while rows := cursor.fetchmany(_FETCH_ROWS):
            parts.append(pa.array(rows, type=row_type))
    finally:
        cursor.close()
    if len(parts) == 1:
        return parts[0]
    return pa.concat_arrays(parts) if parts else pa.array([], type=row_type)


@lru_cache(maxsize=4)
def _row_type(dialect: str) -> pa.StructType:
    """The driver's rows as arrow types: booleans are 0/1 integers on SQLite."""
    flag = pa.int8() if dialect == "sqlite" else pa.bool_()
    kinds = {"default_revision": flag, "exists": flag, "file_size": pa.int64(), "state_id": pa.int64()}
    return pa.struct([(c, kinds.get(c, pa.large_string())) for c in COLUMNS] + [("n_default", pa.int64())])


#: pandas' own dtype for text: ``str`` (arrow-backed) with pandas 3, ``object`` before.
_TEXT = pd.Series(["x"]).dtype
_TEXT_IS_ARROW = getattr(_TEXT, "storage", None) == "pyarrow"


def _frame(rows: pa.StructArray) -> pd.DataFrame:
    """The result frame, column by column from arrow (pandas' row-wise inference costs far more).

    Dtypes: text columns as pandas infers text; ``default_revision`` and ``exists`` bool, or the
    nullable ``boolean`` when a value is unknown; ``file_size`` ``Int64``; ``state_id`` int64
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
            mask = values.is_null().to_numpy(zero_copy_only=False)
            values = values.fill_null(0) if values.null_count else values
            columns[name] = pd.arrays.IntegerArray(values.to_numpy(zero_copy_only=False, writable=True), mask)
        elif name == "state_id":
            columns[name] = values.to_numpy(zero_copy_only=False, writable=True)
        elif _TEXT_IS_ARROW:
            columns[name] = pd.arrays.ArrowStringArray(values, dtype=_TEXT)
        elif _TEXT == np.dtype(object):
            columns[name] = values.to_numpy(zero_copy_only=False)
        else:
            columns[name] = pd.array(values, dtype=_TEXT)
    return pd.DataFrame(columns, copy=False)


def _refuse_several_defaults(conn: Connection, bad: list[dict], conditions: list, params: dict) -> None:
    """Raise ALFMultipleRevisionsFound for the first dataset (in session, collection, name order)
    among ``bad`` chosen rows, naming its default revisions, as ONE does."""
    first = min(bad, key=lambda r: (r["session_uuid"], r["collection"], r["name"]))
    d = datasets.c
    stmt = sa.select(d.revision).where(*conditions, d.session_id == first["session_uuid"],
                                       d.collection == first["collection"], d.name == first["name"],
                                       d.default_revision == sa.true())
    revs = ", ".join(f'"{rev}"' for rev in sorted(conn.execute(stmt, params).scalars()))
    raise ALFMultipleRevisionsFound(f"{'/'.join(filter(None, (first['collection'], first['name'])))} of session "
                                    f"{first['session_uuid']} has several default revisions: {revs}")


@lru_cache(maxsize=16)
def _choice_statement(dialect: str, with_revision: bool, strict: bool) -> sa.Select:
    """:func:`last_before_select` over bound dataset ids, built once (the client's hot path)."""
    return last_before_select(dialect, sa.bindparam("revision") if with_revision else None, qc="CRITICAL",
                              where=[datasets.c.id.in_(sa.bindparam("ids", expanding=True))], strict=strict)


def chosen_ids(conn: Connection, ids: list[str], revision: str | None = None, *, strict: bool = True) -> list[str]:
    """The ids ONE would load among the given dataset rows (QC already applied by the caller)."""
    if not ids:
        return []
    params: dict = {"ids": list(ids)}
    if revision is not None:
        params["revision"] = revision
    rows = conn.execute(_choice_statement(conn.dialect.name, revision is not None, strict), params).fetchall()
    if revision is None and strict:
        bad = [r._asdict() for r in rows if r.n_default > 1]
        if bad:
            where = [datasets.c.id.in_(sa.bindparam("ids", expanding=True))]
            _refuse_several_defaults(conn, bad, _conditions("CRITICAL", False, where), {"ids": list(ids)})
    return [r.dataset_uuid for r in rows]
