"""What one client sees: the session and dataset records of the cache tables it loaded.

A database may hold the tables of many caches and projects, and several states of one row. A
catalog is the set of records returned by one import of cache tables (a recorded query), so a
client answers only from its own tables, in the states they gave, whatever else the database
holds. Reads are SQL; only ONE's regex/glob name filters run in pandas, on one session's rows.

>>> from oneprov import open_store
>>> Catalog(open_store(":memory:"), None).sessions().empty
True
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any, Callable, Iterable, NamedTuple

import pandas as pd
import sqlalchemy as sa

from .. import alf
from ..tables import DATASETS_COLUMNS, SESSIONS_COLUMNS
from .dialects import Dialect
from .engine import Database, result_frame
from .records import held_by, returned_by
from .revisions import chosen_ids, qc_names_up_to
from .schema import dataset_records, session_records

#: The columns of a catalog's session rows: ONE's, and the record they were read from.
SESSION_COLUMNS = [*SESSIONS_COLUMNS, "record_id"]
#: The columns of a catalog's dataset rows: ONE's (``eid`` named ``session_id``), and the record.
DATASET_COLUMNS = ["session_id" if c == "eid" else c for c in DATASETS_COLUMNS] + ["record_id"]
_AS_STORED = {"id": "uuid", "session_id": "session_uuid", "record_id": "id"}


def _session_columns(table: sa.FromClause = session_records) -> list[sa.ColumnElement]:
    return [table.c[_AS_STORED.get(c, c)].label(c) for c in SESSION_COLUMNS]


def _dataset_columns(table: sa.FromClause = dataset_records) -> list[sa.ColumnElement]:
    return [table.c[_AS_STORED.get(c, c)].label(c) for c in DATASET_COLUMNS]


class Catalog:
    """The rows of one import (``query_id``; ``None`` is an empty catalog)."""

    def __init__(self, db: Database, query_id: int | None):
        self.db = db
        self.query_id = query_id
        self._sessions: dict[str, Any] = {}   # eid -> row: a complete query's records never change
        self._defaults: bool | None = None

    def _session_rows(self) -> sa.Select:
        # A membership test rather than a join: SQLite then filters the sessions first (e.g. by
        # subject) and checks membership with one seek, instead of reading every member session.
        return sa.select(*_session_columns()).where(held_by(session_records, self._query_param()))

    def _dataset_rows(self) -> sa.Select:
        return sa.select(*_dataset_columns()).where(held_by(dataset_records, self._query_param()))

    # -- sessions ---------------------------------------------------------------------------

    def sessions(self, *, ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The catalog's session rows (columns :data:`SESSION_COLUMNS`), of these eids if given."""
        stmt = self._session_rows()
        if ids is not None:
            stmt = stmt.where(session_records.c.uuid.in_(list(ids)))
        return self.db.frame(stmt)

    def knows_default_revisions(self) -> bool:
        """Whether the catalog's tables said which revisions are the default ones (a
        ``default_revision`` column: one-api's ``default_revisions_only`` needs it)."""
        if self._defaults is None:
            d = dataset_records.c
            with self.db.reading() as conn:
                self._defaults = conn.execute(
                    sa.select(d.id).select_from(returned_by(dataset_records, self._query_param()))
                    .where(d.default_revision.is_not(None)).limit(1)).first() is not None
        return self._defaults

    def session(self, eid: str) -> Any:
        """The catalog's row of one session (attribute access, :data:`SESSION_COLUMNS`), or None."""
        if eid not in self._sessions:
            with self.db.reading() as conn:
                self._sessions[eid] = conn.execute(self._session_rows().where(session_records.c.uuid == eid)).first()
        return self._sessions[eid]

    def find_session(self, subject: str, date: str, number: int, lab: str | None = None) -> list[str]:
        """The eids of the sessions at ``[lab/Subjects/]subject/date/number``."""
        s = session_records.c
        stmt = self._session_rows().where(s.subject == subject, s.date == dt.date.fromisoformat(str(date)[:10]),
                                          s.number == int(number))
        if lab:
            stmt = stmt.where(s.lab == lab)
        return self.db.frame(stmt)["id"].tolist()

    def search(self, *, wildcards: bool = True, subject=None, lab=None, projects=None, task_protocol=None,
               date_range=None, number=None, datasets: Any = None, dataset_qc_lte=None,
               ids_only: bool = False) -> "Found":
        """Sessions matching every given term, newest first (ONE's local search rules).

        Text terms are partial matches (regular expressions when ``wildcards``), any of a list;
        ``datasets`` lists exact names (regexes) a session must all have, present on disk and with
        QC at or below ``dataset_qc_lte`` (FAIL by default). ``dataset_qc_lte`` alone keeps the
        sessions with any such dataset. The rows (:data:`SESSION_COLUMNS`) are left out with
        ``ids_only``: a search of ids makes no DataFrame.
        """
        params: dict[str, Any] = {"query_id": self._query_param()}
        text, regex_terms = [], []
        for column, value in (("subject", subject), ("lab", lab), ("projects", projects),
                              ("task_protocol", task_protocol)):
            if value is None:
                continue
            values = [str(v) for v in alf.ensure_list(value)]
            if wildcards and any(_REGEX_CHARS.intersection(v) for v in values):
                regex_terms.append((column, "|".join(values)))   # a regex: matched in pandas below
            else:                                                # substrings: matched in SQL
                text.append((column, len(values)))
                params.update({f"{column}_{i}": v for i, v in enumerate(values)})
        start = end = None
        if date_range is not None:
            start, end = date_bounds(date_range)
            params.update(date_start=start, date_end=end)
        if number is not None:
            params["numbers"] = [int(n) for n in alf.ensure_list(number)]
        names: tuple[bool, ...] = ()
        if datasets is not None or dataset_qc_lte is not None:
            params["qc"] = qc_names_up_to(dataset_qc_lte or "FAIL")
            patterns = [str(n) for n in alf.ensure_list(datasets)] or [""]
            names = tuple(pattern != "" for pattern in patterns)   # False: any dataset (dataset_qc_lte alone)
            for i, pattern in enumerate(patterns):
                if pattern:
                    params[f"names_{i}"] = self._dataset_names(pattern)
        columns = ("id", "record_id") if ids_only and not regex_terms else tuple(SESSION_COLUMNS)
        stmt = _search_statement(self.db.dialect, columns, tuple(text), start is not None, end is not None,
                                 number is not None, names)
        with self.db.reading() as conn:   # one snapshot for both statements
            params.update(self.db.dialect.coverage(conn, self.query_id))
            rows = conn.execute(stmt, params).fetchall()
        if columns == ("id", "record_id"):
            return Found([r[0] for r in rows], [r[1] for r in rows], None)
        frame = pd.DataFrame([tuple(row) for row in rows], columns=list(columns))
        for column, query in regex_terms:
            text_values = frame[column].astype("string").fillna("")
            frame = frame[text_values.str.contains(query, regex=True).fillna(False).astype(bool)]
        frame = frame.reset_index(drop=True)
        return Found(frame["id"].tolist(), frame["record_id"].tolist(), None if ids_only else frame)

    def _dataset_names(self, pattern: str) -> list[str]:
        """The dataset names a ``datasets`` search term stands for: itself, or those its regex matches whole."""
        if not any(c in pattern for c in "^$*+?()[]{}|\\"):
            return [pattern]   # a plain name: an indexed equality (a dot is a dot)
        with self.db.reading() as conn:
            known = conn.execute(_DISTINCT_NAMES).scalars().all()
        names = pd.Series(known, dtype=object)
        return names[names.astype(str).str.fullmatch(pattern).fillna(False).astype(bool)].tolist()

    # -- datasets ---------------------------------------------------------------------------

    def datasets(self, eid: str | None = None, *, qc: str | int = "FAIL", ignore_qc_not_set: bool = False,
                 ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The catalog's dataset rows passing QC, of one session or all, ordered by rel_path."""
        params: dict[str, Any] = {"query_id": self._query_param(), "qc": qc_names_up_to(qc, ignore_qc_not_set)}
        if eid is not None:
            params["eid"] = eid
        if ids is not None:
            params["ids"] = list(ids)
        with self.db.reading() as conn:
            return result_frame(conn.execute(_datasets_statement(eid is not None, ids is not None), params))

    def dataset_rows(self, eid: str | None, *, qc: str | int = "FAIL", ignore_qc_not_set: bool = False) -> list:
        """:meth:`datasets` as plain rows (attribute access), without a DataFrame: the load and list paths."""
        params: dict[str, Any] = {"query_id": self._query_param(), "qc": qc_names_up_to(qc, ignore_qc_not_set)}
        if eid is not None:
            params["eid"] = eid
        with self.db.driver_reading() as reader:
            return reader.rows(_datasets_statement(eid is not None, False), params)

    def _query_param(self) -> int:
        return self.query_id if self.query_id is not None else -1

    def dataset(self, dataset_id: str) -> pd.DataFrame:
        """The row(s) of one dataset id, whatever its QC."""
        return self.db.frame(self._dataset_rows().where(dataset_records.c.uuid == dataset_id))

    def pick(self, eid: str, keep: Callable[[Any], bool], revision: str | None, *, strict: bool = True,
             check: Callable[[list], None] | None = None) -> list:
        """One session's rows passing ONE's default QC filter and ``keep``, narrowed to the revision
        ONE would load of each (SQL, see revisions.py): the load path, in one read transaction.

        ``check`` sees the kept rows before the revision choice (and may raise).
        """
        params = {"query_id": self._query_param(), "qc": qc_names_up_to("FAIL"), "eid": eid}
        with self.db.driver_reading() as reader:   # (SQLAlchemy's execution would cost most of the time)
            rows = [r for r in reader.rows(_datasets_statement(True, False), params) if keep(r)]
            if check is not None:
                check(rows)
            chosen = set(chosen_ids(reader, [r.record_id for r in rows], revision, strict=strict))
        return [r for r in rows if r.record_id in chosen]


class Found(NamedTuple):
    """What a search found: the eids, the session records they were read from, and (unless only ids
    were asked for) the rows."""

    ids: list[str]
    records: list[int]
    rows: pd.DataFrame | None


_REGEX_CHARS = set("^$*+?()[]{}|\\.")


@lru_cache(maxsize=256)
def _search_statement(dialect: Dialect, columns: tuple[str, ...], text: tuple[tuple[str, int], ...], date_start: bool,
                      date_end: bool, numbers: bool, names: tuple[bool, ...]) -> sa.Select:
    """The SELECT of a search, newest first, built once per shape of the terms (values are bound).

    Bound: ``query_id``; ``<column>_<i>`` for the i-th value of each text term in ``text``;
    ``date_start``, ``date_end``, ``numbers``; ``qc`` and ``names_<i>`` (a list of names, for each
    ``names[i]`` that is True) for the datasets terms; and the dialect's coverage flags
    (:meth:`~oneprov.store.dialects.Dialect.coverage`), with which SQLite skips membership lookups
    when the catalog is known to hold every row of a table.
    """
    s = session_records.c
    member = dialect.unless_whole("all_sessions", held_by(session_records, sa.bindparam("query_id")))
    stmt = sa.select(*(c for c in _session_columns() if c.key in columns)).where(member)
    for column, n in text:
        stmt = dialect.substring_filter(stmt, session_records, column, n)
    if date_start:
        stmt = stmt.where(s.date >= sa.bindparam("date_start"))
    if date_end:
        stmt = stmt.where(s.date <= sa.bindparam("date_end"))
    if numbers:
        stmt = stmt.where(s.number.in_(sa.bindparam("numbers", expanding=True)))
    d = dataset_records.c
    in_catalog = dialect.unless_whole("all_datasets", held_by(dataset_records, sa.bindparam("query_id")))
    for i, named in enumerate(names):
        # Per session: one seek in the (name, session_uuid, exists, qc) index, and the catalog
        # membership of its first passing dataset (not of every dataset with that name).
        has = [d.session_uuid == s.uuid, d.exists == sa.true(), d.qc.in_(sa.bindparam("qc", expanding=True)), in_catalog]
        if named:
            has.insert(0, d.name.in_(sa.bindparam(f"names_{i}", expanding=True)))
        stmt = stmt.where(_exists(*has))
    # ONE sorts its table (ordered by id) by date, subject and number, descending, NULLs last: ties
    # stay in id order. Text compares byte-wise, as in pandas.
    keys = [dialect.descending(s.date), dialect.descending(dialect.byte_order(s.subject)), dialect.descending(s.number)]
    return stmt.order_by(*keys, dialect.byte_order(s.uuid))


def _exists(*where: sa.ColumnElement[bool]) -> sa.Exists:
    """``EXISTS (SELECT 1 ...)``: with ``SELECT *`` SQLite does not count an index as covering."""
    return sa.select(sa.literal_column("1")).where(*where).exists()


#: Every dataset name in the database, one index seek per name (a skip scan).
_names = sa.select(sa.func.min(dataset_records.c.name).label("name")).cte("names", recursive=True)
_names = _names.union_all(
    sa.select(sa.select(sa.func.min(dataset_records.c.name)).where(dataset_records.c.name > _names.c.name)
              .scalar_subquery())
    .where(_names.c.name.is_not(None)))
_DISTINCT_NAMES = sa.select(_names.c.name).where(_names.c.name.is_not(None))


@lru_cache(maxsize=8)
def _datasets_statement(one_session: bool, some_ids: bool) -> sa.Select:
    """The catalog's dataset rows passing QC (bound: query_id, qc, eid, ids), built once.

    One session's rows are found by session, then checked for membership; all the catalog's rows
    are read span by span.
    """
    d = dataset_records.c
    stmt = sa.select(*_dataset_columns()).where(d.qc.in_(sa.bindparam("qc", expanding=True)))
    if one_session:
        stmt = stmt.where(d.session_uuid == sa.bindparam("eid"), held_by(dataset_records, sa.bindparam("query_id")))
    else:
        stmt = stmt.select_from(returned_by(dataset_records, sa.bindparam("query_id")))
    if some_ids:
        stmt = stmt.where(d.uuid.in_(sa.bindparam("ids", expanding=True)))
    return stmt.order_by(d.session_uuid, d.rel_path)


def date_bounds(date_range: Any) -> tuple[dt.date | None, dt.date | None]:
    """``(start, end)`` dates, inclusive, from one date or a pair (either may be None)."""
    def as_date(value):
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        return pd.Timestamp(str(value)).date()
    if isinstance(date_range, (list, tuple)):
        if len(date_range) == 1:
            return as_date(date_range[0]), as_date(date_range[0])
        if len(date_range) != 2:
            raise ValueError(f"date_range {date_range!r}: expected one date or a pair")
        return as_date(date_range[0]), as_date(date_range[1])
    day = as_date(date_range)
    return day, day
