"""What one client sees: the sessions and datasets of the cache tables it loaded.

A database may hold the tables of many caches and projects. A catalog is the set of rows returned
by one import of cache tables (a recorded query), so a client answers only from the tables it
loaded. Reads are SQL; only ONE's regex/glob name filters run in pandas, on one session's rows.

>>> from oneprov import open_store
>>> Catalog(open_store(":memory:"), None).sessions().empty
True
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa

from . import alf
from .revisions import chosen_ids, qc_names_up_to
from .schema import datasets, query_datasets, query_sessions, sessions
from .store import Store, result_frame

SESSION_COLUMNS = ["id", "lab", "subject", "date", "number", "task_protocol", "projects"]
DATASET_COLUMNS = ["id", "session_id", "rel_path", "collection", "revision", "name", "file_size", "hash",
                   "exists", "qc", "default_revision", "state_id"]


class Catalog:
    """The rows of one import (``query_id``; ``None`` is an empty catalog)."""

    def __init__(self, store: Store, query_id: int | None):
        self.store = store
        self.query_id = query_id

    def _session_rows(self) -> sa.Select:
        # EXISTS rather than a join: SQLite then filters the sessions first (e.g. by subject) and
        # checks membership by primary key, instead of looking up every member session (4x faster).
        q = query_sessions.c
        member = sa.exists().where(q.query_id == self._query_param(), q.session_id == sessions.c.id)
        return sa.select(*(sessions.c[c] for c in SESSION_COLUMNS)).where(member)

    def _dataset_rows(self) -> sa.Select:
        q = query_datasets.c
        return (sa.select(*(datasets.c[c] for c in DATASET_COLUMNS))
                .join(query_datasets, q.dataset_id == datasets.c.id)
                .where(q.query_id == (self.query_id if self.query_id is not None else -1)))

    # -- sessions ---------------------------------------------------------------------------

    def sessions(self, *, ids: Iterable[str] | None = None) -> pd.DataFrame:
        stmt = self._session_rows()
        if ids is not None:
            stmt = stmt.where(sessions.c.id.in_(list(ids)))
        return self.store._frame(stmt)

    def find_session(self, subject: str, date: str, number: int, lab: str | None = None) -> list[str]:
        """The eids of the sessions at ``[lab/Subjects/]subject/date/number``."""
        stmt = self._session_rows().where(sessions.c.subject == subject,
                                          sessions.c.date == dt.date.fromisoformat(str(date)[:10]),
                                          sessions.c.number == int(number))
        if lab:
            stmt = stmt.where(sessions.c.lab == lab)
        return self.store._frame(stmt)["id"].tolist()

    def search(self, *, wildcards: bool = True, subject=None, lab=None, projects=None, task_protocol=None,
               date_range=None, number=None, datasets: Any = None, dataset_qc_lte=None) -> pd.DataFrame:
        """Sessions matching every given term, newest first (ONE's local search rules).

        Text terms are partial matches (regular expressions when ``wildcards``), any of a list;
        ``datasets`` lists exact names (regexes) a session must all have, present on disk and with
        QC at or below ``dataset_qc_lte`` (FAIL by default). ``dataset_qc_lte`` alone keeps the
        sessions with any such dataset.
        """
        stmt = self._session_rows()
        if date_range is not None:
            start, end = date_bounds(date_range)
            if start is not None:
                stmt = stmt.where(sessions.c.date >= start)
            if end is not None:
                stmt = stmt.where(sessions.c.date <= end)
        if number is not None:
            stmt = stmt.where(sessions.c.number.in_([int(n) for n in alf.ensure_list(number)]))
        if datasets is not None or dataset_qc_lte is not None:
            stmt = stmt.where(sessions.c.id.in_(self._sessions_with(datasets, dataset_qc_lte or "FAIL")))
        regex_terms = []
        for column, value in (("subject", subject), ("lab", lab), ("projects", projects),
                              ("task_protocol", task_protocol)):
            if value is None:
                continue
            values = [str(v) for v in alf.ensure_list(value)]
            if wildcards and any(_REGEX_CHARS.intersection(v) for v in values):
                regex_terms.append((column, "|".join(values)))   # a regex: matched in pandas below
            else:                                                # substrings: matched in SQL
                stmt = stmt.where(sa.or_(*(_contains(self.store.dialect, sessions.c[column], v) for v in values)))
        frame = self.store._frame(stmt)
        for column, query in regex_terms:
            text = frame[column].astype("string").fillna("")
            frame = frame[text.str.contains(query, regex=True).fillna(False).astype(bool)]
        return frame.sort_values(["date", "subject", "number"], ascending=False).reset_index(drop=True)

    def _sessions_with(self, names: Any, qc: str | int) -> sa.Select:
        """SELECT of the sessions having, for each name (a regex, as in ONE), a present dataset passing QC."""
        base = self._dataset_rows().where(datasets.c.exists == sa.true(), datasets.c.qc.in_(qc_names_up_to(qc)))
        patterns = [str(n) for n in alf.ensure_list(names)] or [""]
        per_pattern = []
        for pattern in patterns:
            if pattern == "":      # dataset_qc_lte alone: any dataset
                per_pattern.append(base.with_only_columns(datasets.c.session_id))
            elif any(c in pattern for c in "^$*+?()[]{}|\\"):
                # a regex: match names of the candidate rows in Python, keep their sessions
                rows = self.store._frame(base.with_only_columns(datasets.c.session_id, datasets.c.name))
                keep = rows[rows["name"].astype(str).str.fullmatch(pattern)]["session_id"].unique().tolist()
                per_pattern.append(sa.select(sessions.c.id).where(sessions.c.id.in_(keep)))
            else:                  # plain name: an indexed equality (with regex dots meaning any char)
                literal = pattern.replace("\\.", ".")
                per_pattern.append(base.with_only_columns(datasets.c.session_id).where(datasets.c.name == literal))
        return sa.intersect(*per_pattern) if len(per_pattern) > 1 else per_pattern[0]

    # -- datasets ---------------------------------------------------------------------------

    def datasets(self, eid: str | None = None, *, qc: str | int = "FAIL", ignore_qc_not_set: bool = False,
                 ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The catalog's dataset rows passing QC, of one session or all, ordered by rel_path."""
        params: dict[str, Any] = {"query_id": self._query_param(), "qc": qc_names_up_to(qc, ignore_qc_not_set)}
        if eid is not None:
            params["eid"] = eid
        if ids is not None:
            params["ids"] = list(ids)
        with self.store.reading() as conn:
            return result_frame(conn.execute(_datasets_statement(eid is not None, ids is not None), params))

    def dataset_rows(self, eid: str) -> list:
        """One session's dataset rows passing ONE's default QC filter, as plain rows (the load path)."""
        params = {"query_id": self._query_param(), "qc": qc_names_up_to("FAIL"), "eid": eid}
        with self.store.reading() as conn:
            return conn.execute(_datasets_statement(True, False), params).fetchall()

    def _query_param(self) -> int:
        return self.query_id if self.query_id is not None else -1

    def dataset(self, dataset_id: str) -> pd.DataFrame:
        """The row(s) of one dataset id, whatever its QC."""
        return self.store._frame(self._dataset_rows().where(datasets.c.id == dataset_id))

    def choose(self, ids: list[str], revision: str | None, *, strict: bool = True) -> list[str]:
        """The ids of the revisions ONE would load among the given dataset rows (SQL, see revisions.py)."""
        with self.store.reading() as conn:
            return chosen_ids(conn, ids, revision, strict=strict)


_REGEX_CHARS = set("^$*+?()[]{}|\\.")


def _contains(dialect: str, column: sa.ColumnElement, text: str) -> sa.ColumnElement[bool]:
    """Case-sensitive substring test (SQLite's LIKE ignores case, ONE's search does not)."""
    return (sa.func.strpos(column, text) if dialect == "postgresql" else sa.func.instr(column, text)) > 0


@lru_cache(maxsize=8)
def _datasets_statement(one_session: bool, some_ids: bool) -> sa.Select:
    """The catalog's dataset rows passing QC (bound: query_id, qc, eid, ids), built once."""
    q = query_datasets.c
    stmt = (sa.select(*(datasets.c[c] for c in DATASET_COLUMNS))
            .join(query_datasets, q.dataset_id == datasets.c.id)
            .where(q.query_id == sa.bindparam("query_id"), datasets.c.qc.in_(sa.bindparam("qc", expanding=True))))
    if one_session:
        stmt = stmt.where(datasets.c.session_id == sa.bindparam("eid"))
    if some_ids:
        stmt = stmt.where(datasets.c.id.in_(sa.bindparam("ids", expanding=True)))
    return stmt.order_by(datasets.c.session_id, datasets.c.rel_path)


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
