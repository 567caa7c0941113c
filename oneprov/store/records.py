"""Which records take part: each row's current record, and the records a query holds.

A row (a session UUID; a dataset UUID in a session at a path) has a record per state it was seen
in. Its *current* record is its latest record of a complete query: what the ``sessions`` and
``datasets`` views show (migration 0008 writes the same rule in SQL). A client's catalog is the
records its import holds: the query's *spans* of record ids (migration 0009), written by
:func:`link` and read by :func:`held_by` (is this record one of them?) and :func:`returned_by` (all
of them).

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> with store.reading() as conn:
...     conn.execute(sa.select(sa.func.count()).where(current(dataset_records))).scalar()
0
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import dialects
from .schema import dataset_records, queries, query_dataset_spans, query_session_spans

#: What identifies a row of each record table: its records are its states.
ROW_KEY = {"session_records": ["uuid"], "dataset_records": ["uuid", "session_uuid", "rel_path"]}
#: The spans table of each record table: the records each query returned.
SPANS = {"session_records": query_session_spans, "dataset_records": query_dataset_spans}


def current(records: sa.Table) -> sa.ColumnElement[bool]:
    """Whether a record is its row's current state: the latest record of a complete query."""
    newer = records.alias("newer")
    same_row = [newer.c[c] == records.c[c] for c in ROW_KEY[records.name]]
    latest = (sa.select(sa.func.max(newer.c.id)).join(queries, queries.c.id == newer.c.query_id)
              .where(*same_row, queries.c.completed_at.is_not(None)).scalar_subquery())
    return records.c.id == latest


def held_by(records: sa.FromClause, query: int | sa.ColumnElement, name: str | None = None) -> sa.ColumnElement[bool]:
    """Whether a record of ``records`` (a record table, or an alias of one named ``name``) is one that
    ``query`` returned: the query's last span that starts at or before the record's id reaches it
    (one index seek per record; spans never overlap)."""
    spans = SPANS[name or records.name].alias()   # (its own name: never correlated with another use)
    reach = (sa.select(spans.c.last_id).where(spans.c.query_id == query, spans.c.first_id <= records.c.id)
             .order_by(spans.c.first_id.desc()).limit(1).scalar_subquery())
    return sa.func.coalesce(reach, 0) >= records.c.id   # (no span: never held, and never NULL; ids are positive)


def returned_by(records: sa.FromClause, query: int | sa.ColumnElement, name: str | None = None) -> sa.Join:
    """``records`` (a record table, or an alias of one named ``name``) joined to ``query``'s spans:
    the records it returned (a range of ids per span)."""
    spans = SPANS[name or records.name].alias()
    return records.join(spans, sa.and_(spans.c.query_id == query,
                                       records.c.id.between(spans.c.first_id, spans.c.last_id)))


def with_returned(queries_from: sa.FromClause, query: sa.ColumnElement, records: sa.Table, *,
                  outer: bool = False) -> sa.Join:
    """``queries_from`` (a FROM holding the ``query`` id column) joined to the records each of its
    queries returned, through their spans (``outer``: queries that returned none kept, with NULLs)."""
    spans = SPANS[records.name].alias()
    return (queries_from.join(spans, spans.c.query_id == query, isouter=outer)
            .join(records, records.c.id.between(spans.c.first_id, spans.c.last_id), isouter=outer))


def count_returned(records: sa.Table, query: int | sa.ColumnElement) -> sa.ScalarSelect:
    """How many records of ``records`` ``query`` returned."""
    spans = SPANS[records.name]
    return (sa.select(sa.func.coalesce(sa.func.sum(spans.c.last_id - spans.c.first_id + 1), 0))
            .where(spans.c.query_id == query).scalar_subquery())


#: Fewer record ids than this are made spans without numpy.
_FEW = 256


def spans_of(record_ids: Iterable[int] | np.ndarray) -> list[tuple[int, int]]:
    """The spans ``(first_id, last_id)`` of a set of record ids (in any order, repeated or not).

    >>> spans_of([7, 3, 4, 5, 9, 4])
    [(3, 5), (7, 7), (9, 9)]
    """
    if not isinstance(record_ids, np.ndarray):
        record_ids = list(record_ids)
        if len(record_ids) < _FEW:   # (a search's or a list's records: plain Python is quicker)
            out: list[list[int]] = []
            for i in sorted(set(record_ids)):
                if out and out[-1][1] == i - 1:
                    out[-1][1] = i
                else:
                    out.append([i, i])
            return [(int(first), int(last)) for first, last in out]
    ids = np.asarray(record_ids).astype(np.int64, copy=False)
    if not len(ids):
        return []
    steps = np.diff(ids)
    if not (steps > 0).all():   # (usually given in order, each once)
        ids = np.unique(ids)
        steps = np.diff(ids)
    breaks = np.flatnonzero(steps != 1)
    firsts = ids[np.concatenate([[0], breaks + 1])]
    lasts = ids[np.concatenate([breaks, [len(ids) - 1]])]
    return list(zip(firsts.tolist(), lasts.tolist()))


def merged_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` (of one query, in any order, written in parts) as the fewest spans that cover the
    same ids, sorted and apart.

    >>> merged_spans([(5, 9), (1, 4), (12, 12), (8, 10)])
    [(1, 10), (12, 12)]
    """
    out: list[list[int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(first, last) for first, last in out]


def link(conn: Connection, records: sa.Table, query: int, spans: list[tuple[int, int]]) -> None:
    """Record that ``query`` returned the records of ``spans`` (of :func:`spans_of`: sorted, apart),
    inside ``conn``'s transaction."""
    if spans:
        dialects.of(conn).fill(conn, SPANS[records.name], ["query_id", "first_id", "last_id"],
                               [(query, first, last) for first, last in spans])


def span_problems(conn: Connection) -> list[str]:
    """What is wrong with the spans (read-only, for ``oneprov db check``): spans of one query that
    overlap or run backwards, and ids within spans that are not records."""
    problems = []
    for name, spans in SPANS.items():
        earlier = spans.alias("earlier")
        reach = (sa.select(earlier.c.last_id).where(earlier.c.query_id == spans.c.query_id,
                                                     earlier.c.first_id < spans.c.first_id)
                 .order_by(earlier.c.first_id.desc()).limit(1).scalar_subquery())
        bad = conn.execute(sa.select(spans.c.query_id, spans.c.first_id).where(
            sa.or_(spans.c.first_id > spans.c.last_id, reach >= spans.c.first_id)).limit(5)).fetchall()
        problems += [f"{spans.name}: the span of query {q} from record {first} overlaps another or runs backwards"
                     for q, first in bad]
        records = spans.metadata.tables[name]
        covered = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(spans.c.last_id - spans.c.first_id + 1), 0))).scalar()
        found = conn.execute(sa.select(sa.func.count()).select_from(
            spans.join(records, records.c.id.between(spans.c.first_id, spans.c.last_id)))).scalar()
        if found != covered:
            problems.append(f"{spans.name}: its spans cover {covered - found} ids that are not {name}")
    return problems


def link_selected(conn: Connection, records: sa.Table, query: int, ids: sa.Select) -> None:
    """:func:`link` of the record ids a SELECT returns (one column, each id once), in SQL: each run
    of consecutive ids is a span (within a run, an id minus its rank is the same)."""
    chosen = ids.subquery("chosen")
    record_id = list(chosen.c)[0]
    numbered = sa.select(record_id.label("id"),
                         (record_id - sa.func.row_number().over(order_by=record_id)).label("island")).subquery("numbered")
    conn.execute(SPANS[records.name].insert().from_select(
        ["query_id", "first_id", "last_id"],
        sa.select(sa.literal(query, sa.Integer), sa.func.min(numbered.c.id), sa.func.max(numbered.c.id))
        .group_by(numbered.c.island)))


def latest_import(conn: Connection) -> int | None:
    """The id of the latest complete import of cache tables (None when there is none)."""
    q = queries.c
    return conn.execute(sa.select(sa.func.max(q.id)).where(q.method == "import_cache", q.completed_at.is_not(None))
                        ).scalar()


def holds_everything(conn: Connection, query: int | None, records: sa.Table = dataset_records) -> bool:
    """Whether ``query`` (a complete import) holds every record of ``records``, as when one cache has a
    database of its own; then every record is also current, and a membership test per row can be skipped.

    Only known on SQLite (see ``dialects.py``): elsewhere this is False and the tests are made.
    """
    if query is None:
        return False
    flag = "all_datasets" if records is dataset_records else "all_sessions"
    return bool(dialects.of(conn).coverage(conn, query).get(flag))


__all__ = ["ROW_KEY", "SPANS", "count_returned", "current", "held_by", "holds_everything", "latest_import", "link",
           "link_selected", "merged_spans", "returned_by", "span_problems", "spans_of", "with_returned"]
