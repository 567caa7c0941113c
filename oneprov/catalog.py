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
from typing import Any, Iterable

import pandas as pd
import sqlalchemy as sa

from . import alf
from .revisions import qc_names_up_to
from .schema import datasets, query_datasets, query_sessions, sessions
from .store import Store

SESSION_COLUMNS = ["id", "lab", "subject", "date", "number", "task_protocol", "projects"]
DATASET_COLUMNS = ["id", "session_id", "rel_path", "collection", "revision", "name", "file_size", "hash",
                   "exists", "qc", "default_revision", "state_id"]


class Catalog:
    """The rows of one import (``query_id``; ``None`` is an empty catalog)."""

    def __init__(self, store: Store, query_id: int | None):
        self.store = store
        self.query_id = query_id

    def _session_rows(self) -> sa.Select:
        q = query_sessions.c
        return (sa.select(*(sessions.c[c] for c in SESSION_COLUMNS))
                .join(query_sessions, q.session_id == sessions.c.id)
                .where(q.query_id == (self.query_id if self.query_id is not None else -1)))

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
        frame = self.store._frame(stmt)
        for column, value in (("subject", subject), ("lab", lab), ("projects", projects),
                              ("task_protocol", task_protocol)):
            if value is not None and len(frame):
                query = "|".join(str(v) for v in alf.ensure_list(value))
                text = frame[column].astype("string").fillna("")
                frame = frame[text.str.contains(query, regex=wildcards).fillna(False).astype(bool)]
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
        stmt = self._dataset_rows().where(datasets.c.qc.in_(qc_names_up_to(qc, ignore_qc_not_set)))
        if eid is not None:
            stmt = stmt.where(datasets.c.session_id == eid)
        if ids is not None:
            stmt = stmt.where(datasets.c.id.in_(list(ids)))
        return self.store._frame(stmt.order_by(datasets.c.session_id, datasets.c.rel_path))

    def dataset(self, dataset_id: str) -> pd.DataFrame:
        """The row(s) of one dataset id, whatever its QC."""
        return self.store._frame(self._dataset_rows().where(datasets.c.id == dataset_id))

    def choose(self, ids: list[str], revision: str | None, *, strict: bool = True) -> pd.DataFrame:
        """The revision ONE would load among the given dataset rows (SQL, see revisions.py)."""
        if not ids:
            return pd.DataFrame(columns=["dataset_uuid"])
        return self.store.datasets_last_before(revision, qc="CRITICAL", ids=ids, strict=strict)


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
