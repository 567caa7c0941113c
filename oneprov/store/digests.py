"""Digests of rows: how an import finds what changed since an earlier import of the same tables.

Each row of normalised sessions or dataset rows (the layouts of :mod:`oneprov.tables`, as arrow
batches or frames) gets a digest of the values its record stores (``collection``, ``revision`` and ``name`` are parsed from
``rel_path``, so ``rel_path`` stands for them) and a hash of its identity (its UUID; a dataset's
UUID, session and path). An import stores them for every record it returned (``query_digests``,
:func:`store_digests`); the next import compares its rows with those (:class:`Baseline`): a row
whose digest is there is unchanged and keeps its record, without any record being read, and a row
whose identity is there has changed.

The digest is two 64-bit hashes computed independently of each other (the lanes: each has its own
SipHash key for text, pandas' :func:`~pandas.util.hash_array`, and its own constants to mix the
columns' words with splitmix64's finaliser; UUIDs and MD5s enter as their exact characters), so a
changed row is taken for an unchanged one only if both lanes collide. The words are taken from
arrow's buffers (a column of UUIDs is one run of 36-byte strings): no Python value is made for a
row but for text without few distinct values, which datasets do not have. :data:`SCHEME` names the
whole recipe, and digests of another scheme are never compared with these (the first scheme, v1,
mixed an MD5's words into a row's digest only when its batch held an MD5: a row's digest could
depend on the other rows of its batch).

>>> import pandas as pd
>>> frame = pd.DataFrame({"id": ["a2f5d3c6-9c0e-4b5b-8a49-6ad16a7d8a25"], "lab": ["lab"], "subject": ["m1"],
...                       "date": [None], "number": [1], "task_protocol": [None], "projects": ["p"]})
>>> a = row_digests(frame, "session_records")
>>> b = row_digests(frame.assign(projects=["q"]), "session_records")
>>> a.shape, bool((a[:, :2] == b[:, :2]).all()), bool(a[0, 2] == b[0, 2])   # other values, same identity
((1, 3), False, True)
"""
from __future__ import annotations

import datetime as dt
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pandas.util import hash_array
from sqlalchemy.engine import Connection

from ..alf import QC_ORDER
from .records import ROW_KEY, returned_by
from .schema import queries, query_digests

#: The recipe of :func:`row_digests`; stored with every digest.
SCHEME = "splitmix128-identity64-v2"
#: The columns of a normalised frame that a digest covers, in the order they are mixed: first the
#: row's identity (the first :data:`IDENTITY` of them), then its state.
FIELDS = {
    "session_records": ["id", "lab", "subject", "date", "number", "task_protocol", "projects"],
    "dataset_records": ["id", "eid", "rel_path", "file_size", "hash", "exists", "qc", "default_revision"],
}
IDENTITY = {"session_records": 1, "dataset_records": 3}
#: Words stored a record: the digest's two lanes and the identity's hash.
WIDTH = 3
#: Records of a digest part (``query_digests``): 32 bytes each, so 32 MB a part at most.
PART_ROWS = 1_000_000
#: Rows recorded by other queries since the earlier import beyond which a new import compares every
#: row with its row's current record instead (as an import with no earlier one does).
NEWER_LIMIT = 100_000

_KEYS = ("oneprov digest-1", "oneprov digest-2")            # SipHash keys (16 bytes each), one a lane
_SEEDS = (np.uint64(0x6A09E667F3BCC908), np.uint64(0xBB67AE8584CAA73B))
_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))   # odd: x -> x * m is one-to-one
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_QC_CODE = {name: code for code, name in enumerate(QC_ORDER)}
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()   # (arrow's dates are days since 1970-01-01)
_UUIDS = {"id", "eid"}            # canonical UUIDs: 36 ASCII characters
_MD5 = {"hash"}                   # mostly 32 hexadecimal characters
_REPEATED = {"rel_path", "lab", "subject", "task_protocol", "projects"}   # few distinct values
#: Each digested column's arrow type.
_TYPES = {**{c: pa.string() for c in ("id", "eid", "rel_path", "hash", "qc", "lab", "subject", "task_protocol",
                                      "projects")},
          "file_size": pa.int64(), "number": pa.int64(), "exists": pa.bool_(), "default_revision": pa.bool_(),
          "date": pa.date32()}
#: The normalised frame's names of the record tables' identity columns.
_FRAME_NAMES = {"uuid": "id", "session_uuid": "eid"}


def row_digests(rows: pa.RecordBatch | pa.Table | pd.DataFrame, records: str) -> np.ndarray:
    """The digest and identity hash of each row of normalised rows of ``records``
    ('session_records' or 'dataset_records'): arrow rows (:data:`oneprov.tables.DATASETS_ARROW`)
    or a normalised frame. An array of shape ``(len(rows), WIDTH)``, unsigned 64-bit, whose
    columns are the digest's two lanes and the identity's hash. The same values give the same
    words in every process and every batch, whatever the other rows."""
    return _mixed(rows, records, FIELDS[records])


def row_identities(rows: pa.RecordBatch | pa.Table | pd.DataFrame, records: str) -> np.ndarray:
    """The identity hash of :func:`row_digests` alone (signed 64-bit), from the identity's columns."""
    return _mixed(rows, records, FIELDS[records][:IDENTITY[records]])[:, 2].view(np.int64)


def _mixed(rows: pa.RecordBatch | pa.Table | pd.DataFrame, records: str, columns: list[str]) -> np.ndarray:
    n = len(rows)
    out = np.empty((n, WIDTH), dtype=np.uint64)
    lanes = [np.full(n, seed, dtype=np.uint64) for seed in _SEEDS]
    with np.errstate(over="ignore"):
        for k, column in enumerate(columns):
            for lane, words in enumerate(_words(_column(rows, column), column)):
                for word in words:
                    _mix_in(lanes[lane], word, _MULTIPLIERS[lane])
            if k + 1 == IDENTITY[records]:
                out[:, 2] = lanes[0]
    out[:, 0], out[:, 1] = lanes
    return out


def _column(rows: pa.RecordBatch | pa.Table | pd.DataFrame, column: str) -> pa.Array:
    """A column of normalised rows as one arrow array of its type in :data:`_TYPES`."""
    if isinstance(rows, pd.DataFrame):
        values = rows[column]
        if values.dtype == object and len(values) and column == "date":   # (dates, None; never NaT)
            values = values.where(values.notna(), None)
        return pa.array(values, _TYPES[column], from_pandas=True)
    values = rows.column(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], _TYPES[column])
    return values if values.type == _TYPES[column] else values.cast(_TYPES[column])


def _words(values: pa.Array, column: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The 64-bit words (one or a few a row) that stand for ``values``, a column of normalised rows,
    in each lane: values that differ give words that differ."""
    if column in _UUIDS:   # (exact, the same in both lanes)
        return (_ascii_words(values, 36),) * 2
    if column == "exists":
        return ([values.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint64)],) * 2
    known = ~_nulls(values)
    if column in ("number", "file_size"):
        words = [values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).astype(np.uint64),
                 (~known).astype(np.uint64)]
        return (words,) * 2
    if column == "default_revision":   # True, False, or None (the tables did not say)
        flag = values.fill_null(False).to_numpy(zero_copy_only=False)
        return ([np.where(known, flag, 2).astype(np.uint64)],) * 2
    if column == "qc":
        encoded = pc.dictionary_encode(values)
        codes = np.array([_QC_CODE[name] for name in encoded.dictionary.to_pylist()], dtype=np.uint64)
        return ([codes[encoded.indices.to_numpy(zero_copy_only=False)]],) * 2
    if column == "date":   # (the day's proleptic ordinal + 1; 0 for none)
        days = values.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return ([np.where(known, days + _EPOCH_ORDINAL + 1, 0).astype(np.uint64)],) * 2
    return _text_words(values, column, known)


def _text_words(values: pa.Array, column: str, known: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Text: a kind word (0 text, 1 missing, 2 an MD5's 32 ASCII characters, exact), then the text's
    SipHash with each lane's own key (of '' when missing; 0 for an MD5), and for ``hash`` four
    more words, an MD5's characters (0 when not an MD5)."""
    n = len(values)
    kind = np.where(known, 0, 1).astype(np.uint64)
    exact = None
    if column in _MD5:
        exact = pc.and_(pc.equal(pc.binary_length(values), 32), pc.string_is_ascii(values)).fill_null(False)
        exact = exact.to_numpy(zero_copy_only=False)
        kind[exact] = 2
    text = values.fill_null("")
    if column in _REPEATED:   # (each distinct value hashed once)
        encoded = pc.dictionary_encode(text)
        distinct = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        per_lane = [hash_array(distinct, hash_key=key, categorize=False)[codes] for key in _KEYS]
    else:
        hashed = np.arange(n) if exact is None else np.flatnonzero(~exact)
        some = text if len(hashed) == n else text.take(pa.array(hashed))
        some = some.to_numpy(zero_copy_only=False).astype(object)
        per_lane = []
        for key in _KEYS:
            words = np.zeros(n, dtype=np.uint64)
            words[hashed] = hash_array(some, hash_key=key, categorize=False)
            per_lane.append(words)
    lanes = [[kind, words] for words in per_lane]
    if exact is not None:
        md5 = np.zeros((n, 4), dtype=np.uint64)
        if exact.any():
            md5[exact] = np.stack(_ascii_words(values.filter(pa.array(exact)), 32), axis=1)
        for words in lanes:
            words.extend(md5[:, k] for k in range(4))
    return lanes[0], lanes[1]


def _nulls(values: pa.Array) -> np.ndarray:
    if not values.null_count:
        return np.zeros(len(values), dtype=bool)
    return values.is_null().to_numpy(zero_copy_only=False)


def _ascii_words(values: pa.Array, width: int) -> list[np.ndarray]:
    """Text values of ``width`` ASCII characters each (no null) as the little-endian words of their
    bytes (zero padded), read from arrow's buffers: exact, and several times faster than hashing."""
    if values.null_count:
        raise ValueError("null among fixed-width text")
    offsets_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    _, offsets, data = values.buffers()
    n = len(values)
    offsets = np.frombuffer(offsets, dtype=offsets_type)[values.offset:values.offset + n + 1] if n else np.zeros(1, int)
    if n and not (np.diff(offsets) == width).all():
        raise ValueError(f"not strings of {width} characters")
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(n, width) if n \
        else np.empty((0, width), dtype=np.uint8)
    if (raw >= 0x80).any():
        raise ValueError(f"not strings of {width} ASCII characters")
    size = -(-width // 8) * 8
    padded = np.zeros((n, size), dtype=np.uint8)
    padded[:, :width] = raw
    words = padded.view("<u8")
    return [words[:, k] for k in range(size // 8)]


def _mix_in(lane: np.ndarray, words: np.ndarray, multiplier: np.uint64) -> None:
    """``lane = splitmix64_finaliser(lane + words * multiplier)``, in place."""
    lane += words * multiplier
    lane ^= lane >> _S30
    lane *= _M1
    lane ^= lane >> _S27
    lane *= _M2
    lane ^= lane >> _S31


# -- stored with an import's records ---------------------------------------------------------

def store_digests(conn: Connection, query: int, records: str, record_ids: np.ndarray, digests: np.ndarray,
                  first_part: int = 0) -> int:
    """Store the ``digests`` (of :func:`row_digests`) of ``query``'s records ``record_ids``, inside
    ``conn``'s transaction, as parts numbered from ``first_part``; return the next part's number."""
    ids = np.ascontiguousarray(record_ids, dtype="<i8")
    packed = np.ascontiguousarray(digests, dtype="<u8")
    part = first_part
    for start in range(0, len(ids), PART_ROWS):
        conn.execute(query_digests.insert(), {
            "query_id": query, "records": records, "part": part, "scheme": SCHEME,
            "record_ids": ids[start:start + PART_ROWS].tobytes(),
            "digests": packed[start:start + PART_ROWS].tobytes()})
        part += 1
    return part


def read_digests(conn: Connection, query: int, records: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The record ids and digests :func:`store_digests` stored for ``query``'s ``records``, or None
    when it stored none of this scheme. (A part at a time, into arrays made once: 10M records are
    320 MB, which a list of parts and their concatenation would hold two or three times.)"""
    d = query_digests.c
    which = sa.and_(d.query_id == query, d.records == records, d.scheme == SCHEME)
    n = conn.execute(sa.select(sa.func.sum(sa.func.length(d.record_ids))).where(which)).scalar()
    if not n:
        return None
    ids = np.empty(n // 8, dtype=np.int64)
    digests = np.empty((n // 8, WIDTH), dtype=np.uint64)
    at = 0
    for part in conn.execute(sa.select(d.record_ids, d.digests).where(which).order_by(d.part)):
        k = len(part.record_ids) // 8
        ids[at:at + k] = np.frombuffer(part.record_ids, dtype="<i8")
        digests[at:at + k] = np.frombuffer(part.digests, dtype="<u8").reshape(k, WIDTH)
        at += k
    return ids, digests


class Baseline:
    """The digests of the records an earlier import returned, of one record table: what a new import
    compares its rows with.

    A row whose digest is the earlier import's keeps that import's record (:meth:`match`); a row
    whose identity is the earlier import's, with another digest, has changed since
    (:meth:`replaces`). Rows that another query recorded since (``newer``: their identity hashes)
    are neither: they are compared with their current record.
    """

    def __init__(self, query: int, record_ids: np.ndarray, digests: np.ndarray, newer: np.ndarray):
        if not (np.diff(record_ids) > 0).all():   # (stored in record order, but for rows linked to older records)
            order = np.argsort(record_ids, kind="stable")
            record_ids, digests = record_ids[order], digests[order]
            del order
        self.query, self.ids, self.digests, self.newer = query, record_ids, digests, newer
        self.used = np.zeros(len(record_ids), dtype=bool)
        # Sorted first lanes and identities, searched by bisection: about half the memory of two
        # hash indexes (10M records: 240 MB more than the digests, against ~670 MB).
        self._order = np.argsort(digests[:, 0], kind="stable")
        self._first = digests[self._order, 0]
        self._identities = np.sort(digests[:, 2])

    @property
    def usable(self) -> bool:
        """Whether the first lanes are distinct (anything else has never been seen: a 64-bit collision)."""
        return not (self._first[1:] == self._first[:-1]).any()

    def match(self, digests: np.ndarray) -> np.ndarray:
        """The earlier record of each row (``digests`` of :func:`row_digests`) that is unchanged since,
        or -1; the records matched are remembered (:meth:`unchanged`)."""
        at = np.minimum(np.searchsorted(self._first, digests[:, 0]), max(len(self._first) - 1, 0))
        found = self._first[at] == digests[:, 0] if len(self._first) else np.zeros(len(digests), dtype=bool)
        at = self._order[at] if len(self._first) else at
        found[found] = self.digests[at[found], 1] == digests[found, 1]
        found &= self._current(digests)
        self.used[at[found]] = True
        return np.where(found, self.ids[np.maximum(at, 0)] if len(self.ids) else -1, -1)

    def replaces(self, digests: np.ndarray) -> np.ndarray:
        """Whether each row (not matched) is one of the earlier import's rows, changed since: its
        record is then that import's, and a new record is due without comparing."""
        if not len(self._identities):
            return np.zeros(len(digests), dtype=bool)
        at = np.minimum(np.searchsorted(self._identities, digests[:, 2]), len(self._identities) - 1)
        return (self._identities[at] == digests[:, 2]) & self._current(digests)

    def _current(self, digests: np.ndarray) -> np.ndarray:
        if not len(self.newer):
            return np.ones(len(digests), dtype=bool)
        return ~np.isin(digests[:, 2].view(np.int64), self.newer)

    def unchanged(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The records matched so far, and their digests, in record order, a part at a time (no copy
        of them all at once)."""
        for start in range(0, len(self.ids), PART_ROWS):
            used = self.used[start:start + PART_ROWS]
            yield self.ids[start:start + PART_ROWS][used], self.digests[start:start + PART_ROWS][used]


def baseline(conn: Connection, source: str, records: sa.Table) -> Baseline | None:
    """The digests of ``records`` of the import a new import from ``source`` compares its rows with:
    the latest complete one from ``source`` that stored digests of this scheme, else the latest
    from anywhere (a copy of the same tables elsewhere shares most rows; another cache's tables
    share none, and are then compared row by row). None when there is none, or when too many of
    its rows were recorded by other queries since (:data:`NEWER_LIMIT`).

    Rows recorded since are those of records written after the import's last record, and of
    records first written by queries that ran alongside it (started before it completed, and
    completed after).
    """
    q, r, d = queries.c, records.c, query_digests.c
    stored_digests = sa.exists().where(d.query_id == q.id, d.records == records.name, d.scheme == SCHEME)
    earlier = conn.execute(sa.select(q.id, q.completed_at).where(
        q.completed_at.is_not(None), q.error.is_(None), stored_digests)
        .order_by(sa.case((q.source == source, 1), else_=0).desc(), q.id.desc()).limit(1)).first()
    stored = read_digests(conn, earlier.id, records.name) if earlier is not None else None
    if stored is None:
        return None
    ids, digests = stored
    key = [r[c] for c in ROW_KEY[records.name]]
    # A query that started after the import completed wrote its records after the import's last:
    # those are found by their ids (a range of rowids). One that ran alongside it (started before,
    # completed after) may have written some before: its own records, through its spans.
    alongside = conn.execute(sa.select(q.id).where(
        q.completed_at.is_not(None), q.id != earlier.id, q.started_at < earlier.completed_at,
        q.completed_at >= earlier.completed_at)).scalars().all()
    since = [sa.select(*key).select_from(records.join(queries, q.id == r.query_id))
             .where(r.id > (int(ids.max()) if len(ids) else 0), q.completed_at.is_not(None))]
    since += [sa.select(*key).select_from(returned_by(records, other)).where(r.query_id == other) for other in alongside]
    rows = conn.execute(sa.select(sa.literal_column("*")).select_from(sa.union(*since).subquery())
                        .limit(NEWER_LIMIT + 1)).fetchall() if len(since) > 1 else \
        conn.execute(since[0].limit(NEWER_LIMIT + 1)).fetchall()
    if len(rows) > NEWER_LIMIT:
        return None
    names = [_FRAME_NAMES.get(c, c) for c in ROW_KEY[records.name]]
    newer = row_identities(pd.DataFrame(rows, columns=names, dtype=object), records.name)
    found = Baseline(earlier.id, ids, digests, np.unique(newer))
    return found if found.usable else None


__all__ = ["FIELDS", "SCHEME", "Baseline", "baseline", "read_digests", "row_digests", "row_identities", "store_digests"]
