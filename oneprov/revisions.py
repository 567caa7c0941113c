"""Revision choice in SQL: which revision of each dataset ONE would load.

A *dataset* here is one file name in one collection of one session; its *revisions* are the rows
that differ only by the ``#revision#`` folder. ONE's rules (one-api ``filter_revision_last_before``),
applied after the QC filter:

- no revision asked: the row flagged ``default_revision`` when exactly one is flagged; otherwise the
  greatest revision (a group of one row is taken as is). Several flagged rows are an error
  (:class:`ALFMultipleRevisionsFound`).
- revision ``X`` asked: the greatest revision ``<= X``, compared as plain strings, the unrevised
  file (``''``) always a candidate; nothing when there is no candidate.

Everything happens in one statement with window functions, for one session or all of them at once.
Revisions compare byte-wise, as Python compares them: on PostgreSQL the comparison uses the "C"
collation whatever the database's own collation is.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> store.datasets_last_before(revision="2024-01-01").empty
True
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

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
    revision: str | None = None,
    *,
    qc: str | int = "FAIL",
    ignore_qc_not_set: bool = False,
    where: Iterable[sa.ColumnElement[bool]] = (),
    strict: bool = True,
) -> sa.Select:
    """The SELECT that picks one revision per dataset among the rows passing ``where`` and the QC filter.

    Rows come back with :data:`COLUMNS` plus ``n_default``, the number of rows of the dataset
    flagged as default. With ``strict`` a dataset with several defaults returns all of them (an
    error the caller reports); without, its greatest revision (ONE with ``assert_unique=False``).
    """
    d = datasets
    rev = d.c.revision.collate("C") if dialect == "postgresql" else d.c.revision
    group = (d.c.session_id, d.c.collection, d.c.name)
    conditions = [d.c.qc.in_(qc_names_up_to(qc, ignore_qc_not_set)), *where]
    if revision is not None:
        conditions.append(rev <= revision)
    is_default = sa.case((d.c.default_revision == sa.true(), 1), else_=0)
    ranked = (
        sa.select(
            d.c.id.label("dataset_uuid"), d.c.session_id.label("session_uuid"), d.c.rel_path,
            d.c.collection, d.c.revision, d.c.name, d.c.qc, d.c.default_revision, d.c.file_size,
            d.c.hash, d.c.exists, d.c.state_id,
            sa.func.sum(is_default).over(partition_by=group).label("n_default"),
            sa.func.row_number().over(partition_by=group, order_by=rev.desc()).label("newest"),
        )
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
    return (sa.select(*(r[c] for c in COLUMNS), r.n_default)
            .where(chosen)
            .order_by(r.session_uuid, r.collection, r.name))


def last_before(
    conn: Connection,
    revision: str | None = None,
    *,
    qc: str | int = "FAIL",
    ignore_qc_not_set: bool = False,
    where: Iterable[sa.ColumnElement[bool]] = (),
    strict: bool = True,
) -> pd.DataFrame:
    """Run :func:`last_before_select` and return one row per chosen dataset (see :data:`COLUMNS`).

    Raises :class:`ALFMultipleRevisionsFound` when no revision is asked and a dataset has several
    default revisions, as ONE does (unless not ``strict``).
    """
    stmt = last_before_select(conn.dialect.name, revision, qc=qc, ignore_qc_not_set=ignore_qc_not_set,
                              where=where, strict=strict)
    rows = conn.execute(stmt).fetchall()
    if revision is None and strict:
        _refuse_several_defaults(rows)
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[*COLUMNS, "n_default"])
    frame = frame.drop(columns="n_default")
    for col in ("default_revision", "exists"):
        frame[col] = frame[col].astype("boolean") if frame[col].isna().any() else frame[col].astype(bool)
    frame["file_size"] = frame["file_size"].astype("Int64")
    return frame.reset_index(drop=True)


def _refuse_several_defaults(rows: list) -> None:
    """Raise ALFMultipleRevisionsFound for the first dataset with several default rows, as ONE does."""
    bad = [r for r in rows if r.n_default > 1]
    if bad:
        first = bad[0]
        key = (first.session_uuid, first.collection, first.name)
        revs = ", ".join(f'"{r.revision}"' for r in bad if (r.session_uuid, r.collection, r.name) == key)
        raise ALFMultipleRevisionsFound(f"{'/'.join(filter(None, (first.collection, first.name)))} of session "
                                        f"{first.session_uuid} has several default revisions: {revs}")


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
        _refuse_several_defaults(rows)
    return [r.dataset_uuid for r in rows]
