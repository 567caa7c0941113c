"""Read and write ONE cache tables (``sessions.pqt`` and ``datasets.pqt``) with pandas and pyarrow.

Readers accept the modern layout (UUID strings, index stored in the file or not) and the legacy
layout of 2021 Alyx exports (int64 ``id_0/id_1`` pairs, ``project``, ``session_path``, no ``qc``),
validate every value and return *normalised* frames with a plain RangeIndex (an import reads the
datasets as normalised arrow batches, :data:`DATASETS_ARROW`, checked in arrow's kernels without a
Python value per row: :meth:`Folder.dataset_batches`; :func:`datasets_frame` makes the frame):

- sessions: ``id, lab, subject, date, number, task_protocol, projects``
- datasets: ``id, eid, rel_path, collection, revision, name, file_size, hash, exists, qc,
  default_revision``

Every refusal is a :class:`~oneprov.errors.BadInputError` naming the file and, where it applies, the
column, the row (counted from 0) and the bad value. Writers produce ONE's exact format (see
:func:`write_datasets` for unknown sizes) and replace the target file atomically.

>>> import tempfile, pathlib
>>> from oneprov.synthetic import make_repository
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> info = make_repository(root, write_files=False)
>>> sessions = read_sessions(root / "sessions.pqt")
>>> list(sessions.columns) == SESSIONS_COLUMNS, len(sessions)
(True, 6)
>>> sum(len(batch) for batch in iter_datasets(root / "datasets.pqt")) == count_rows(root / "datasets.pqt")
True
>>> read_metadata(root / "datasets.pqt")["origin"]
'oneprov.synthetic'
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .alf import (
    MAX_CHARS, NAME_MAX, QC_DTYPE, QC_ORDER, UUID_RE, check_uuid, check_uuids, name_problem, qc_name, split_rel_path,
    split_rel_paths,
)
from .errors import BadInputError, DuplicateIdError, MissingColumnError
from .files import file_sha256, finish_replacing, write_atomically

__all__ = [
    "SESSIONS_COLUMNS", "DATASETS_COLUMNS", "DATASETS_ARROW", "STATE_COLUMNS", "QC_DTYPE", "WrittenTable", "Folder", "Frames",
    "read_metadata", "read_sessions", "iter_datasets", "datasets_frame", "dataset_values", "count_rows",
    "write_sessions", "write_datasets", "sessions_batch", "datasets_batch", "write_batches",
    "merge_tables", "merge_metadata",
    "uuid_strings", "hex_strings",
]

SESSIONS_COLUMNS: list[str] = ["id", "lab", "subject", "date", "number", "task_protocol", "projects"]
#: The fields of a dataset record that may change from one version of the tables to the next.
STATE_COLUMNS: list[str] = ["file_size", "hash", "exists", "qc", "default_revision"]
DATASETS_COLUMNS: list[str] = ["id", "eid", "rel_path", "collection", "revision", "name", *STATE_COLUMNS]
#: Normalised dataset rows as arrow (:meth:`Folder.dataset_batches`): the columns of
#: :data:`DATASETS_COLUMNS`, null where the frame holds None or NA.
DATASETS_ARROW = pa.schema([
    *((c, pa.string()) for c in DATASETS_COLUMNS[:6]), ("file_size", pa.int64()), ("hash", pa.string()),
    ("exists", pa.bool_()), ("qc", pa.string()), ("default_revision", pa.bool_()),
])

#: The key of the JSON metadata in the parquet schema metadata.
METADATA_KEY = b"one_metadata"
DATE_FORMAT = "%Y-%m-%d %H:%M"

# Exact arrow schemas written. The index columns come last, where pandas puts them, and the pandas
# metadata names them as the index.
_SESSIONS_SCHEMA = pa.schema([
    ("lab", pa.string()), ("subject", pa.string()), ("date", pa.date32()), ("number", pa.uint16()),
    ("task_protocol", pa.string()), ("projects", pa.string()), ("id", pa.string()),
])
_DATASETS_SCHEMA = pa.schema([
    ("rel_path", pa.string()), ("file_size", pa.uint64()), ("hash", pa.string()), ("exists", pa.bool_()),
    ("qc", pa.dictionary(pa.int8(), pa.string(), ordered=True)), ("default_revision", pa.bool_()),
    ("eid", pa.string()), ("id", pa.string()),
])


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Where the 32 hex digits of a UUID go in its 36-character canonical form.
_UUID_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _hex_digits(raw: np.ndarray) -> np.ndarray:
    """The ASCII hex digits (uint8, two per byte) of the rows of a 2-D uint8 array."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    digits = np.empty((raw.shape[0], 2 * raw.shape[1]), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    return digits


def hex_strings(raw: np.ndarray) -> np.ndarray:
    """Lowercase hex strings (object array) of the rows of a 2-D uint8 array, vectorised."""
    digits = _hex_digits(raw)
    width = digits.shape[1]
    return digits.view(f"S{width}").ravel().astype(f"U{width}").astype(object)


def uuid_strings(raw: np.ndarray) -> np.ndarray:
    """Canonical UUID strings (object array) of an ``(n, 16)`` uint8 array of UUID bytes, vectorised."""
    digits = _hex_digits(np.reshape(raw, (-1, 16)))
    out = np.full((len(digits), 36), ord("-"), dtype=np.uint8)
    out[:, _UUID_DIGITS] = digits
    return out.view("S36").ravel().astype("U36").astype(object)


def _pairs_to_uuids(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Legacy int64 id pairs -> UUID strings: the UUID's 16 bytes are the two little-endian int64s."""
    pairs = np.column_stack([low, high]).astype("<i8")
    return uuid_strings(pairs.view(np.uint8))


def _object(values: Any) -> pd.Series:
    """An object Series (pandas 3 would otherwise infer its ``str`` dtype, which turns None into NaN)."""
    return pd.Series(values, dtype=object)


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t) or pa.types.is_null(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _is_bool(t: pa.DataType) -> bool:
    return pa.types.is_boolean(t) or pa.types.is_null(t)


def _is_date(t: pa.DataType) -> bool:
    return pa.types.is_date(t) or pa.types.is_timestamp(t) or _is_text(t)


def _is_qc(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_qc(t.value_type)
    return _is_text(t) or pa.types.is_integer(t)


def _is_projects(t: pa.DataType) -> bool:
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    return _is_text(t) or (is_list and _is_text(t.value_type))


def _text(array: pa.Array) -> np.ndarray:
    """A text column as an object array of str and None."""
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array.to_numpy(zero_copy_only=False).astype(object)


def _located(path: Path, column: str, start: int, values: np.ndarray,
             check_all: Callable[[pd.Series], Any], check_one: Callable[[Any], Any],
             rows: Callable[[], np.ndarray] | None = None) -> Any:
    """Run a vectorised check; on failure re-run the scalar check to name the first bad row.

    ``rows`` gives the column's rows when ``values`` are only its distinct values.
    """
    try:
        return check_all(_object(values))
    except BadInputError as exc:
        for row, value in enumerate(values if rows is None else rows()):
            try:
                check_one(value)
            except BadInputError as err:
                raise BadInputError(f"{path}: column {column!r}, row {start + row}: {err}") from None
        raise BadInputError(f"{path}: column {column!r}: {exc}") from None


def _split(path: Path, start: int, rel_paths: np.ndarray) -> dict[str, np.ndarray]:
    """Validate and split rel_paths (``collection, revision, name`` object arrays).

    The same few thousand rel_paths recur in every session, so only the distinct ones are parsed.
    """
    codes, uniques = pd.factorize(rel_paths, use_na_sentinel=False)
    parts = _split_distinct(path, start, np.asarray(uniques, dtype=object), lambda: rel_paths)
    return {c: values[codes] for c, values in parts.items()}


def _split_arrow(path: Path, start: int, rel_paths: pa.Array) -> dict[str, pa.Array]:
    """:func:`_split` of an arrow text column, into arrow text columns (no Python value per row)."""
    encoded = pc.dictionary_encode(rel_paths, null_encoding="encode")
    parts = _split_distinct(path, start, encoded.dictionary.to_numpy(zero_copy_only=False).astype(object),
                            lambda: rel_paths.to_numpy(zero_copy_only=False))
    return {c: pa.array(values, pa.string()).take(encoded.indices) for c, values in parts.items()}


def _split_distinct(path: Path, start: int, uniques: np.ndarray, rows: Callable[[], np.ndarray]) -> dict[str, np.ndarray]:
    """The ``collection, revision, name`` (object arrays) of distinct rel_paths; ``rows`` gives the
    column's rows, to name the first bad one."""
    parts = _located(path, "rel_path", start, uniques, split_rel_paths, split_rel_path, rows=rows)
    return {c: parts[c].to_numpy(dtype=object) for c in ("collection", "revision", "name")}


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in the table metadata")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _open(path: str | os.PathLike) -> tuple[Path, pq.ParquetFile]:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        # Buffered reads without pre-buffering: arrow then holds a few pages, not whole row groups
        # (which may hold millions of rows), so that streaming stays within bounded memory.
        return path, pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: not a readable parquet file (corrupt or truncated?): {exc}") from exc


class _Table:
    """A table to read and check: a parquet file (:meth:`parquet`) or an arrow table in memory
    (:meth:`arrow`); ``name`` names it in messages."""

    def __init__(self, name: Any, schema: pa.Schema, num_rows: int,
                 batches: Callable[[list[str], int], Iterator[pa.RecordBatch]], close: Callable[[], None] = lambda: None):
        self.name, self.schema, self.num_rows, self._batches, self.close = name, schema, num_rows, batches, close

    @classmethod
    def parquet(cls, path: str | os.PathLike) -> "_Table":
        path, pf = _open(path)
        batches = lambda columns, size: pf.iter_batches(batch_size=size, columns=columns, use_pandas_metadata=False)  # noqa: E731
        return cls(path, pf.schema_arrow, int(pf.metadata.num_rows), batches, pf.close)

    @classmethod
    def arrow(cls, name: str, table: pa.Table) -> "_Table":
        return cls(name, table.schema, table.num_rows,
                   lambda columns, size: iter(table.select(columns).to_batches(max_chunksize=size)))

    def batches(self, columns: list[str], batch_size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
        """Stream ``(batch, first_row)``; corrupt data pages surface as BadInputError."""
        batches = self._batches(columns, batch_size)
        start = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise BadInputError(f"{self.name}: corrupt parquet data (reading from row {start}): {exc}") from exc
            if batch.num_rows:
                _check_utf8(self.name, batch, start)
                yield batch, start
            start += batch.num_rows


def _check_utf8(name: Any, batch: pa.RecordBatch, start: int) -> None:
    """Refuse text columns holding bytes that are not UTF-8 (parquet does not check), naming the row."""
    for column, field_ in zip(batch.columns, batch.schema):
        if not (pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type)):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            for row, value in enumerate(column.cast(pa.large_binary()).to_pylist()):
                try:
                    value is None or value.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInputError(f"{name}: column {field_.name!r}, row {start + row}: text that is not "
                                        f"UTF-8 ({value[:40]!r})") from None
            raise BadInputError(f"{name}: column {field_.name!r}: invalid text") from None


def _check_columns(path: Path, schema: pa.Schema, table: str, checks: Mapping[str, tuple]) -> None:
    """Raise unless every present column in ``checks`` (name -> (predicate, expected)) has a good type."""
    for name, (ok, expected) in checks.items():
        if name in schema.names and not ok(schema.field(name).type):
            raise BadInputError(f"{path}: column {name!r} of the {table} table has type "
                                f"{schema.field(name).type}, expected {expected}")


def _id_source(path: Path, schema: pa.Schema, name: str, table: str, level: int) -> list[str]:
    """The columns holding UUIDs ``name``: ``[name]``, the legacy int64 pair ``[name_0, name_1]``, or
    the index level ``level`` when the frame was saved with an unnamed index (pandas then stores it as
    ``__index_level_N__``; one-api reads ids from the index by position)."""
    if name in schema.names:
        return [name]
    if f"__index_level_{level}__" in schema.names:
        return [f"__index_level_{level}__"]
    pair = [f"{name}_0", f"{name}_1"]
    if all(p in schema.names for p in pair):
        _check_columns(path, schema, table, {p: (pa.types.is_integer, "int64 (legacy UUID pair)") for p in pair})
        return pair
    raise MissingColumnError(f"{path}: the {table} table has no column {name!r} (nor legacy {pair[0]!r}/{pair[1]!r}); "
                        f"columns are {schema.names}")


def _uuids(path: Path, batch: pa.RecordBatch, source: list[str], start: int, what: str) -> pa.Array:
    """The canonical UUIDs (an arrow text column) of a batch's id ``source`` (see :func:`_id_source`)."""
    if len(source) == 1:
        canonical = _canonical_uuids(batch.column(source[0]))
        if canonical is not None:
            return canonical
        values = _text(batch.column(source[0]))   # (a bad value: found and named row by row)
        return pa.array(_located(path, source[0], start, values, lambda s: check_uuids(s, what).to_numpy(),
                                 lambda v: check_uuid(v, what)), pa.string())
    columns = [batch.column(name) for name in source]
    for name, col in zip(source, columns):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise BadInputError(f"{path}: column {name!r}, row {start + row}: null half of a legacy {what}")
    return pa.array(_pairs_to_uuids(*(col.to_numpy(zero_copy_only=False) for col in columns)), pa.string())


def _canonical_uuids(array: pa.Array) -> pa.Array | None:
    """A text column of UUIDs as :func:`oneprov.alf.check_uuid` makes them (trimmed, lowercase);
    None when a value is not a UUID (the caller then names it).

    The same check as ``check_uuids``, in arrow's kernels: several times faster on a large table.
    """
    array = _plain_text(array)
    if array is None or array.null_count:
        return None
    # (ASCII trimming and case: a value that needs more fails the match, and the caller decides as check_uuid does)
    text = pc.ascii_lower(pc.ascii_trim_whitespace(array))
    if not pc.all(pc.match_substring_regex(text, UUID_RE.pattern)).as_py() and len(text):
        return None
    return text


def _plain_text(array: pa.Array) -> pa.Array | None:
    """A text column (dictionary-encoded, large, a view or all null) as plain arrow ``string``;
    None when it is not text."""
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if not _is_text(array.type):
        return None
    return array if array.type == pa.string() else array.cast(pa.string())


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``one_metadata`` JSON of a cache table's parquet schema metadata (``{}`` if absent)."""
    path, pf = _open(path)
    try:
        raw = (pf.schema_arrow.metadata or {}).get(METADATA_KEY)
    finally:
        pf.close()
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise BadInputError(f"{path}: the one_metadata of the parquet schema is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BadInputError(f"{path}: the one_metadata of the parquet schema is not a JSON object: {meta!r}")
    return meta


def count_rows(path: str | os.PathLike) -> int:
    """The number of rows of a parquet file, read from its footer (e.g. a progress bar's total)."""
    path, pf = _open(path)
    try:
        return int(pf.metadata.num_rows)
    finally:
        pf.close()


_SESSION_CHECKS = {
    "lab": (_is_text, "string"), "subject": (_is_text, "string"),
    "date": (_is_date, "date32, timestamp or 'YYYY-MM-DD' string"), "number": (_is_number, "integer"),
    "task_protocol": (_is_text, "string"), "projects": (_is_projects, "comma-separated string"),
    "project": (_is_projects, "comma-separated string"),
}


def read_sessions(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a sessions table into the normalised frame (columns :data:`SESSIONS_COLUMNS`).

    ``id`` is a lowercase UUID string, ``date`` a :class:`datetime.date` or None, ``number`` an
    int64 from 0 to 999 (the ``NNN`` folder), ``projects`` a comma-joined string or None; ``lab``
    and ``task_protocol`` are str or None. The legacy layout (``id_0/id_1``, ``project``) is
    converted as one-api converts it. Duplicate ids are refused.
    """
    return _read_sessions(_Table.parquet(path))


def _read_sessions(source: _Table) -> pd.DataFrame:
    path = source.name
    try:
        schema = source.schema
        if source.num_rows == 0:   # no rows, nothing to check (one-api reads such a table whatever its columns)
            return _no_sessions()
        id_source = _id_source(path, schema, "id", "sessions", 0)
        for required in ("subject", "date", "number"):
            if required not in schema.names:
                raise MissingColumnError(f"{path}: the sessions table has no column {required!r}; "
                                    f"columns are {schema.names}")
        _check_columns(path, schema, "sessions", _SESSION_CHECKS)
        projects = "projects" if "projects" in schema.names else "project" if "project" in schema.names else None
        optional = [c for c in ("lab", "task_protocol", projects) if c and c in schema.names]
        columns = [*id_source, "subject", "date", "number", *optional]
        frames = [_sessions_frame(path, batch, start, id_source, projects)
                  for batch, start in source.batches(columns, 65_536)]
    finally:
        source.close()
    if not frames:
        return _no_sessions()
    sessions = pd.concat(frames, ignore_index=True)
    duplicated = sessions["id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DuplicateIdError(f"{path}: column 'id', row {row}: duplicate session id {sessions['id'].iloc[row]!r}")
    return sessions


def _no_sessions() -> pd.DataFrame:
    return pd.DataFrame({c: _object([]) for c in SESSIONS_COLUMNS}).astype({"number": np.int64})


def _sessions_frame(path: Path, batch: pa.RecordBatch, start: int, id_source: list[str],
                    projects: str | None) -> pd.DataFrame:
    n = batch.num_rows
    names = batch.schema.names

    def optional_text(name: str | None) -> np.ndarray:
        return _text(batch.column(name)) if name in names else np.full(n, None, dtype=object)

    subject = _text(batch.column("subject"))
    missing = pd.isna(subject)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise BadInputError(f"{path}: column 'subject', row {start + row}: missing subject")
    if projects and not _is_text(batch.schema.field(projects).type):  # a list of names, as Alyx's REST gives
        project_values = np.array([None if v is None else ",".join(v) for v in batch.column(projects).to_pylist()],
                                  dtype=object)
    else:
        project_values = optional_text(projects)
    lab = optional_text("lab")
    for column, values, folder in (("subject", subject, True), ("lab", lab, True),
                                   ("task_protocol", optional_text("task_protocol"), False),
                                   ("projects", project_values, False)):
        _check_text(path, column, start, values, folder=folder)
    return pd.DataFrame({
        "id": _object(_uuids(path, batch, id_source, start, "session id").to_numpy(zero_copy_only=False)),
        "lab": _object(lab),
        "subject": _object(subject),
        "date": _object(_dates(path, batch.column("date"), start)),
        "number": _numbers(path, batch.column("number"), start),
        "task_protocol": _object(optional_text("task_protocol")),
        "projects": _object(project_values),
    })


def _check_text(path: Path, column: str, start: int, values: np.ndarray, *, folder: bool) -> None:
    """Refuse text with a NUL byte (PostgreSQL cannot store it), longer than the database stores
    (:data:`~oneprov.alf.MAX_CHARS`), or, for a folder name (``folder``), longer than file systems
    take: a session with it could never be loaded."""
    limit = MAX_CHARS.get(column)

    def check_one(value: Any) -> None:
        if not isinstance(value, str):
            return
        problem = name_problem(value) if folder else ("it contains a NUL byte" if "\x00" in value else None)
        if not problem and limit is not None and len(value) > limit:
            problem = f"it is longer than {limit} characters (the most the database stores)"
        if problem:
            raise BadInputError(f"{column} {value[:40]!r}: {problem}")

    def check_all(series: pd.Series) -> None:
        text = series.astype("string")
        if text.str.contains("\x00", regex=False, na=False).any() or \
                (folder and (text.str.encode("utf-8").str.len() > NAME_MAX).any()) or \
                (limit is not None and (text.str.len() > limit).any()):
            raise BadInputError(f"a {column} that cannot be stored or used as a folder name")

    _located(path, column, start, values, check_all, check_one)


def _dates(path: Path, column: pa.Array, start: int) -> list:
    if pa.types.is_date(column.type):
        return column.to_pylist()
    if pa.types.is_timestamp(column.type):
        return [None if v is None else v.date() for v in column.to_pylist()]
    dates = []
    for row, value in enumerate(_text(column)):
        if value is None or value == "":
            dates.append(None)
            continue
        try:
            dates.append(datetime.datetime.fromisoformat(value).date())
        except ValueError:
            raise BadInputError(f"{path}: column 'date', row {start + row}: bad date {value!r}, "
                                "expected 'YYYY-MM-DD'") from None
    return dates


def _numbers(path: Path, column: pa.Array, start: int) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False).astype(float)
    bad = np.isnan(values) | (values != np.round(values)) | (values < 0) | (values > 999)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInputError(f"{path}: column 'number', row {start + row}: bad session number "
                            f"{column[row].as_py()!r}, expected an integer from 0 to 999")
    return values.astype(np.int64)


_DATASET_CHECKS = {
    "rel_path": (_is_text, "string"), "file_size": (_is_number, "integer (bytes)"),
    "hash": (_is_text, "string"), "exists": (_is_bool, "bool"),
    "qc": (_is_qc, "QC names or values (categorical, string or integer)"),
    "default_revision": (_is_bool, "bool"),
}


def iter_datasets(path: str | os.PathLike, batch_size: int = 200_000) -> Iterator[pd.DataFrame]:
    """Stream a datasets table as normalised frames (columns :data:`DATASETS_COLUMNS`).

    Memory stays bounded by ``batch_size`` rows. Each batch is validated as it is read, so a
    BadInputError may come after earlier batches were yielded. ``file_size`` is a nullable Int64
    (null: unknown); ``hash`` is str or None ('' and NaN mean unknown); ``exists`` defaults to True;
    ``qc`` is a canonical name ('NOT_SET' when the column or the value is missing);
    ``default_revision`` is bool, or None when the column is absent. The file's schema is checked
    when this is called, not on the first iteration. An empty table yields one empty frame.
    """
    return _frames(_iter_datasets(_Table.parquet(path), batch_size))


def _frames(batches: Iterator[pa.RecordBatch]) -> Iterator[pd.DataFrame]:
    try:
        for batch in batches:
            yield datasets_frame(batch)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _iter_datasets(source: _Table, batch_size: int) -> Iterator[pa.RecordBatch]:
    """The normalised batches (:data:`DATASETS_ARROW`) of a datasets table (see :func:`iter_datasets`)."""
    path = source.name
    try:
        schema = source.schema
        if source.num_rows == 0:   # no rows, nothing to check: one empty batch
            source.close()
            schema = pa.schema([("id", pa.string()), ("eid", pa.string()), ("rel_path", pa.string())])
            return iter([_normalised_datasets(path, pa.RecordBatch.from_pylist([], schema=schema), 0, ["id"], ["eid"])])
        eid_source = _id_source(path, schema, "eid", "datasets", 0)
        id_source = _id_source(path, schema, "id", "datasets", 1)
        if "rel_path" not in schema.names:
            raise MissingColumnError(f"{path}: the datasets table has no column 'rel_path'; columns are {schema.names}")
        _check_columns(path, schema, "datasets", _DATASET_CHECKS)
        optional = [c for c in ("file_size", "hash", "exists", "qc", "default_revision") if c in schema.names]
        columns = [*id_source, *eid_source, "rel_path", *optional]
        if "hash" not in schema.names and source.num_rows:
            warnings.warn(f"{path}: the datasets table has no 'hash' column: no md5 is known, so loads of its "
                          "datasets check their size only", UserWarning, stacklevel=4)
    except BaseException:
        source.close()
        raise

    def generate() -> Iterator[pa.RecordBatch]:
        try:
            empty = True
            for batch, start in source.batches(columns, batch_size):
                empty = False
                yield _normalised_datasets(path, batch, start, id_source, eid_source)
            if empty:  # one empty batch, so that pd.concat(iter_datasets(...)) always works
                no_rows = pa.RecordBatch.from_pylist([], schema=pa.schema([schema.field(c) for c in columns]))
                yield _normalised_datasets(path, no_rows, 0, id_source, eid_source)
        finally:
            source.close()

    return generate()


@dataclass(frozen=True)
class Folder:
    """A folder of ONE cache tables, ``datasets.pqt`` and (optional, as for one-api) ``sessions.pqt``:
    the rows a store ingests.

    Make one with :meth:`open`, which refuses a folder without ``datasets.pqt``.
    """

    path: Path
    _seen: dict = field(default_factory=dict, compare=False, repr=False)   # file -> its stat when hashed

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Folder":
        folder = cls(Path(path).expanduser().absolute())
        if not folder.path.is_dir():
            raise BadInputError(f"cache tables folder {str(folder.path)!r} does not exist")
        try:   # a pair of tables that a killed export left half-replaced is completed first
            finish_replacing(folder.path)
        except OSError:
            pass   # (a read-only folder: nothing was left to complete by this machine's writers)
        if not folder.files["datasets"].is_file():
            raise BadInputError(f"missing cache table {str(folder.files['datasets'])!r}: expected datasets.pqt "
                                f"(and sessions.pqt) in {str(folder.path)!r}")
        return folder

    @property
    def files(self) -> dict[str, Path]:
        """The table files present, by table name."""
        files = {name: self.path / f"{name}.pqt" for name in ("sessions", "datasets")}
        return {name: path for name, path in files.items() if name == "datasets" or path.is_file()}

    def checksum(self) -> str:
        """A sha256 over the sha256 of each table file: the same tables, the same checksum.

        Each file's identity (inode, size, modification time) is noted as it is hashed, for
        :meth:`verify`.
        """
        digest = hashlib.sha256()
        files = self.files
        for name in ("sessions", "datasets"):
            if name in files:
                self._seen[files[name]] = _identity(files[name])
                digest.update(file_sha256(files[name]).encode())
            else:
                self._seen[self.path / f"{name}.pqt"] = None
                digest.update(b"absent")
        return digest.hexdigest()

    def verify(self) -> None:
        """Raise unless every table file is still the one :meth:`checksum` hashed (not replaced, not
        written to, not added or removed): the rows read are then the ones the checksum is of."""
        for path, seen in self._seen.items():
            if _identity(path) != seen:
                raise BadInputError(f"{path} changed while it was being imported (replaced or written to); "
                                    "nothing was imported: import it again")

    def metadata(self) -> dict[str, dict]:
        """Each table's ``one_metadata`` (see :func:`read_metadata`)."""
        return {name: read_metadata(path) for name, path in self.files.items()}

    def sessions(self) -> pd.DataFrame:
        path = self.files.get("sessions")
        return _no_sessions() if path is None else read_sessions(path)

    def dataset_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """The datasets table's rows, checked and normalised, as arrow batches (:data:`DATASETS_ARROW`)."""
        return _iter_datasets(_Table.parquet(self.files["datasets"]), batch_size)

    def count_datasets(self) -> int:
        return count_rows(self.files["datasets"])


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Frames:
    """ONE's tables in memory (as one-api keeps them in ``One._cache``: ids in the index, maybe
    UUID objects) as rows to ingest, read and checked as the files would be; ``name`` names them in
    messages."""

    sessions_frame: pd.DataFrame
    datasets_frame: pd.DataFrame
    name: str = "<tables in memory>"
    table_metadata: Mapping[str, Any] = field(default_factory=dict)   # each table's one_metadata

    def sessions(self) -> pd.DataFrame:
        return _read_sessions(_Table.arrow(f"{self.name}['sessions']", _arrow(self.sessions_frame)))

    def dataset_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """The datasets frame's rows, checked and normalised, as arrow batches (:data:`DATASETS_ARROW`)."""
        if "_datasets_arrow" not in self.__dict__:   # (read twice by an import: converted once)
            object.__setattr__(self, "_datasets_arrow", _arrow(self.datasets_frame))
        return _iter_datasets(_Table.arrow(f"{self.name}['datasets']", self.__dict__["_datasets_arrow"]), batch_size)

    def count_datasets(self) -> int:
        return len(self.datasets_frame)

    def verify(self) -> None:
        """Frames are not files: nothing can change under them here."""

    def metadata(self) -> dict[str, dict]:
        return {name: {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in dict(meta).items()}
                for name, meta in self.table_metadata.items() if name in ("sessions", "datasets")}


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """A frame of ONE's as an arrow table: its index as columns, UUID objects as text."""
    frame = frame.reset_index() if any(name is not None for name in frame.index.names) else frame
    text = {c: frame[c].map(lambda v: str(v) if isinstance(v, uuid.UUID) else v)
            for c in frame.columns if frame[c].dtype == object and len(frame) and isinstance(frame[c].iloc[0], uuid.UUID)}
    try:
        return pa.Table.from_pandas(frame.assign(**text), preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise BadInputError(f"cannot read the tables in memory: {exc}") from exc


def _normalised_datasets(path: Path, batch: pa.RecordBatch, start: int, id_source: list[str],
                         eid_source: list[str]) -> pa.RecordBatch:
    """A batch of a datasets table, checked and normalised (:data:`DATASETS_ARROW`) in arrow's
    kernels: a Python value is made only for the distinct rel_paths and QC values, and for a bad
    value's row."""
    n = batch.num_rows
    names = batch.schema.names
    rel_path = _plain_text(batch.column("rel_path"))
    parts = _split_arrow(path, start, rel_path)
    hashes = _hashes(path, batch.column("hash"), start) if "hash" in names else pa.nulls(n, pa.string())
    exists = batch.column("exists") if "exists" in names else pa.nulls(n, pa.bool_())
    exists = pa.array(np.ones(n, dtype=bool)) if pa.types.is_null(exists.type) else exists.fill_null(True)
    default = batch.column("default_revision") if "default_revision" in names else pa.nulls(n, pa.bool_())
    columns = {
        "id": _uuids(path, batch, id_source, start, "dataset id"),
        "eid": _uuids(path, batch, eid_source, start, "session id (eid)"),
        "rel_path": rel_path, **parts,
        "file_size": _file_sizes(path, batch.column("file_size"), start) if "file_size" in names
        else pa.nulls(n, pa.int64()),
        "hash": hashes,
        "exists": exists,
        "qc": _qc_names(path, batch.column("qc") if "qc" in names else pa.nulls(n), start),
        "default_revision": default.cast(pa.bool_()),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in DATASETS_ARROW], schema=DATASETS_ARROW)


def datasets_frame(rows: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    """The normalised frame (see :func:`iter_datasets`) of normalised arrow rows (:data:`DATASETS_ARROW`).

    >>> frame = datasets_frame(pa.table({"id": ["a"], "eid": ["b"], "rel_path": ["alf/x.npy"],
    ...     "collection": ["alf"], "revision": [""], "name": ["x.npy"], "file_size": pa.array([None], pa.int64()),
    ...     "hash": [None], "exists": [True], "qc": ["PASS"], "default_revision": pa.array([None], pa.bool_())}))
    >>> frame["file_size"].dtype, frame["hash"][0], frame["default_revision"][0]
    (Int64Dtype(), None, None)
    """
    size = rows.column("file_size")
    default = rows.column("default_revision").to_numpy(zero_copy_only=False)
    return pd.DataFrame({
        **{c: _object(_text_objects(rows, c)) for c in ("id", "eid", "rel_path", "collection", "revision", "name")},
        "file_size": pd.arrays.IntegerArray(size.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
                                            size.is_null().to_numpy(zero_copy_only=False)),
        "hash": _object(_text_objects(rows, "hash")),
        "exists": rows.column("exists").to_numpy(zero_copy_only=False).astype(bool),
        "qc": _object(_text_objects(rows, "qc")),
        "default_revision": pd.Series(default, dtype=bool if default.dtype == bool else object),
    })


def dataset_values(rows: pa.RecordBatch | pa.Table) -> list[list]:
    """Normalised dataset rows (:data:`DATASETS_ARROW`) as one list of plain Python values per
    column of :data:`DATASETS_COLUMNS` (None where null), as a database driver takes them.

    >>> dataset_values(pa.table({"id": ["a"], "eid": ["b"], "rel_path": ["alf/x.npy"], "collection": ["alf"],
    ...     "revision": [""], "name": ["x.npy"], "file_size": pa.array([None], pa.int64()), "hash": [None],
    ...     "exists": [True], "qc": ["PASS"], "default_revision": pa.array([None], pa.bool_())}))
    [['a'], ['b'], ['alf/x.npy'], ['alf'], [''], ['x.npy'], [None], [None], [True], ['PASS'], [None]]
    """
    return [_text_objects(rows, c).tolist() if DATASETS_ARROW.field(c).type == pa.string() else rows.column(c).to_pylist()
            for c in DATASETS_COLUMNS]


#: The text columns of normalised dataset rows with few distinct values.
_REPEATED_TEXT = frozenset({"rel_path", "collection", "revision", "name", "qc"})


def _text_objects(rows: pa.RecordBatch | pa.Table, column: str) -> np.ndarray:
    """A text column of normalised dataset rows as an object array of str and None; in a column of
    few distinct values (:data:`_REPEATED_TEXT`), each distinct value is one Python string, which
    its rows share (faster to make, and smaller)."""
    values = rows.column(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    if column not in _REPEATED_TEXT or not len(values):
        return values.to_numpy(zero_copy_only=False).astype(object)
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    distinct = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)]


def _hashes(path: Path, column: pa.Array, start: int) -> pa.Array:
    """The ``hash`` column: '' is unknown (null); text with a NUL byte, or longer than the database
    stores, is refused, naming its row."""
    text = _plain_text(column)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    limit = MAX_CHARS.get("hash")
    if pc.any(pc.match_substring(text, "\x00")).as_py() or \
            (limit is not None and (pc.max(pc.utf8_length(text)).as_py() or 0) > limit):
        _check_text(path, "hash", start, text.to_numpy(zero_copy_only=False), folder=False)
    return text


def _file_sizes(path: Path, column: pa.Array, start: int) -> pa.Array:
    n = len(column)
    if pa.types.is_null(column.type):
        return pa.nulls(n, pa.int64())
    if pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(float)  # nulls -> NaN
        unknown = np.isnan(values)
        bad = ~unknown & ((values != np.round(values)) | (values < 0))
        data = np.where(unknown, 0, values).astype(np.int64)
    else:
        unknown = column.is_null().to_numpy(zero_copy_only=False)
        try:
            filled = column.fill_null(0).cast(pa.int64())
        except pa.ArrowInvalid as exc:
            raise BadInputError(f"{path}: column 'file_size': impossible file size: {exc}") from exc
        data = filled.to_numpy(zero_copy_only=False).astype(np.int64)
        bad = data < 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInputError(f"{path}: column 'file_size', row {start + row}: bad file size "
                            f"{column[row].as_py()!r}, expected a whole number of bytes")
    return pa.array(data, pa.int64(), mask=unknown if unknown.any() else None)


def _qc_names(path: Path, column: pa.Array, start: int) -> pa.Array:
    """Canonical QC names (arrow text) from names (any case) or values; null means NOT_SET. Only
    the distinct values are looked at."""
    if pa.types.is_null(column.type):
        return _QC_NAMES.take(pa.array(np.zeros(len(column), np.int8)))
    if pa.types.is_dictionary(column.type):   # (its dictionary may hold values no row has)
        column = column.cast(column.type.value_type)
    encoded = pc.dictionary_encode(column)

    def refuse(k: int, err: BadInputError) -> BadInputError:
        row = int(np.flatnonzero(encoded.indices.to_numpy(zero_copy_only=False) == k)[0])
        return BadInputError(f"{path}: column 'qc', row {start + row}: {err}")

    codes = _qc_codes(np.asarray(encoded.dictionary.to_pylist() + [None], dtype=object), refuse)
    return _QC_NAMES.take(pa.array(codes).take(encoded.indices.fill_null(len(codes) - 1)))


def _qc_codes(values: np.ndarray, refuse: Callable[[int, BadInputError], BadInputError]) -> np.ndarray:
    """Positions in QC_ORDER (int8) of QC names (any case) or values; null means NOT_SET (0).

    A value that is no QC raises ``refuse(row, error)`` for its first row. Shared by reading and
    writing; only the distinct values are looked at.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = []
    for code, value in enumerate(uniques):
        try:
            lookup.append(QC_ORDER.index(qc_name(value.item() if isinstance(value, np.generic) else value)))
        except BadInputError as err:
            raise refuse(int(np.flatnonzero(codes == code)[0]), err) from None
    lookup.append(0)  # code -1 (null) indexes the last element
    return np.array(lookup, dtype=np.int8)[codes]


_QC_NAMES = pa.array(QC_ORDER, pa.string())


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WrittenTable:
    """What a write produced: the file, its number of rows and its sha256 (hex)."""

    path: Path
    rows: int
    sha256: str


def _table_metadata(metadata: Mapping[str, Any] | None) -> bytes:
    meta = dict(metadata or {})
    meta.setdefault("date_created", datetime.datetime.now().strftime(DATE_FORMAT))
    meta.setdefault("origin", "oneprov")
    return json.dumps(meta, default=_json_default).encode()


def _with_columns(df: pd.DataFrame, index_names: tuple[str, ...]) -> pd.DataFrame:
    """Accept frames whose ids are in the index (as ONE keeps them) as well as normalised ones."""
    if any(name in index_names for name in df.index.names):
        return df.reset_index()
    return df


def _clean_text(values: pd.Series) -> pd.Series:
    """Object Series of str / None (NaN, NA and None all become None)."""
    values = values.astype(object)
    return values.where(values.notna(), None)


def _write_atomically(table: pa.Table, path: Path) -> WrittenTable:
    """Write ``table`` to ``path`` atomically (see :func:`oneprov.files.write_atomically`)."""
    write_atomically(path, lambda f: pq.write_table(table, f))
    return WrittenTable(path=path, rows=table.num_rows, sha256=file_sha256(path))


def _pandas_metadata(table: pa.Table, index: list[str]) -> bytes:
    """The ``pandas`` metadata that pandas writes for ``table`` indexed by ``index``.

    It tells pandas, and so one-api, which columns form the index. It is derived from an empty
    slice, so that big tables are built straight in arrow, never as pandas frames.
    """
    empty = table.slice(0, 0).to_pandas()
    empty = empty.astype({f.name: object for f in table.schema if pa.types.is_string(f.type)})
    converted = pa.Table.from_pandas(empty.set_index(index), schema=table.schema, preserve_index=True)
    return converted.schema.metadata[b"pandas"]


def _arrow_table(path: Path, columns: Mapping[str, Any], schema: pa.Schema, index: list[str],
                 metadata: Mapping[str, Any] | None) -> pa.Table:
    """An arrow table of ``columns`` in ``schema``, sorted by ``index``, with ONE's metadata."""
    arrays = []
    for f in schema:
        values = columns[f.name]
        try:
            arrays.append(values if isinstance(values, pa.Array) else pa.array(values, type=f.type))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise BadInputError(f"cannot write {path}: column {f.name!r}: {exc}") from exc
    table = pa.Table.from_arrays(arrays, schema=schema)
    table = table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in index]))
    return table.replace_schema_metadata({b"pandas": _pandas_metadata(table, index),
                                          METADATA_KEY: _table_metadata(metadata)})


def write_sessions(df: pd.DataFrame, path: str | os.PathLike,
                   metadata: Mapping[str, Any] | None = None) -> WrittenTable:
    """Write a normalised sessions frame as ONE's ``sessions.pqt``, atomically.

    The file has index ``id`` (str) and columns ``lab, subject, date (date32), number (uint16),
    task_protocol, projects``, sorted by id. ``metadata`` is stored as ``one_metadata`` JSON, with
    ``date_created`` (now, "YYYY-MM-DD HH:MM") and ``origin`` ('oneprov') added when absent.
    """
    path = Path(path)
    df = _with_columns(df, ("id",))
    missing = [c for c in ("id", "subject", "date", "number") if c not in df.columns]
    if missing:
        raise BadInputError(f"cannot write {path}: the sessions frame has no column {missing[0]!r}")
    ids = _frame_check(path, "id", df["id"], lambda s: check_uuids(s, "session id"), check_uuid)
    try:
        dates = pd.to_datetime(_object(df["date"].to_numpy()), errors="raise")
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"cannot write {path}: column 'date': {exc}") from exc
    number = pd.to_numeric(df["number"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = np.isnan(number) | (number != np.round(number)) | (number < 0) | (number > 999)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInputError(f"cannot write {path}: column 'number', row {row}: bad session number "
                            f"{df['number'].iloc[row]!r}")
    text = {c: _clean_text(df[c]) if c in df.columns else _object([None] * len(df))
            for c in ("lab", "subject", "task_protocol", "projects")}
    text["projects"] = _object([",".join(v) if isinstance(v, (list, tuple, np.ndarray)) else v
                               for v in text["projects"]])
    columns = {
        "id": ids, "date": [None if pd.isna(d) else d.date() for d in dates], "number": number.astype(np.uint16),
        **{name: values.to_numpy() for name, values in text.items()},
    }
    return _write_atomically(_arrow_table(path, columns, _SESSIONS_SCHEMA, ["id"], metadata), path)


def _frame_check(path: Path, column: str, values: pd.Series, check_all: Callable, check_one: Callable,
                 unique: bool = False) -> Any:
    """:func:`_located` for a frame being written (rows count from 0 in the frame)."""
    values = values.to_numpy(dtype=object)
    try:
        if unique:
            return _split(path, 0, values)
        return _located(path, column, 0, values, check_all, check_one)
    except BadInputError as exc:
        raise BadInputError(f"cannot write {exc}") from None


def write_datasets(df: pd.DataFrame, path: str | os.PathLike,
                   metadata: Mapping[str, Any] | None = None) -> WrittenTable:
    """Write a normalised datasets frame as ONE's ``datasets.pqt``, atomically.

    The file has index ``(eid, id)`` (str) and exactly the columns ``rel_path, file_size (uint64),
    hash, exists (bool), qc (ordered categorical), default_revision (bool)``, sorted by (eid, id).

    Unknown file sizes are written as **0**. one-api checks sizes with ``if rec['file_size'] and
    size != rec['file_size']``: a null in a nullable UInt64 makes that test raise (every load of
    the dataset crashes), and a float NaN is truthy and never equal, so one-api warns of a size
    mismatch on every load (and, online, downloads the file again each time). 0 is falsy, so ONE
    skips the size check, and the column keeps ONE's uint64 dtype. The cost: a table written here
    reads back with size 0, not null (an empty file's genuine size is 0 as well). Unknown hashes
    are written as nulls.

    Missing ``exists`` means True, missing ``qc`` means NOT_SET. A missing or None
    ``default_revision`` is filled as ONE would choose: True for the greatest revision of its
    dataset (same eid, collection and name) unless another revision of it is already flagged.
    """
    path = Path(path)
    df = _with_columns(df, ("eid", "id"))
    missing = [c for c in ("id", "eid", "rel_path") if c not in df.columns]
    if missing:
        raise BadInputError(f"cannot write {path}: the datasets frame has no column {missing[0]!r}")
    n = len(df)
    ids = _frame_check(path, "id", df["id"], lambda s: check_uuids(s, "dataset id"), check_uuid)
    eids = _frame_check(path, "eid", df["eid"], lambda s: check_uuids(s, "session id (eid)"), check_uuid)
    rel_path = _clean_text(df["rel_path"])
    parts = _frame_check(path, "rel_path", rel_path, split_rel_paths, split_rel_path, unique=True)

    sizes = pd.to_numeric(df["file_size"], errors="coerce") if "file_size" in df.columns \
        else pd.Series(np.nan, index=df.index)
    sizes_f = sizes.to_numpy(dtype=float, na_value=np.nan)
    not_number = np.isnan(sizes_f) & df["file_size"].notna().to_numpy() if "file_size" in df.columns \
        else np.zeros(n, dtype=bool)
    bad = not_number | (~np.isnan(sizes_f) & ((sizes_f < 0) | (sizes_f != np.round(sizes_f))))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BadInputError(f"cannot write {path}: column 'file_size', row {row}: bad file size "
                            f"{df['file_size'].iloc[row]!r}")
    file_size = sizes.fillna(0).to_numpy().astype(np.uint64)

    hashes = _clean_text(df["hash"]) if "hash" in df.columns else _object([None] * n)
    hashes = hashes.where(hashes != "", None)
    exists = df["exists"].astype(object).where(df["exists"].notna(), True).astype(bool) \
        if "exists" in df.columns else pd.Series(True, index=df.index)
    qc = _write_qc(path, df["qc"] if "qc" in df.columns else None, n)

    default = df["default_revision"].astype(object) if "default_revision" in df.columns \
        else _object([None] * n)
    default = _fill_default_revision(default.where(default.notna(), None).to_numpy(), eids, parts)
    columns = {
        "eid": eids, "id": ids, "rel_path": rel_path.to_numpy(), "file_size": file_size,
        "hash": hashes.to_numpy(), "exists": exists.to_numpy(),
        "qc": pa.DictionaryArray.from_arrays(pa.array(qc, pa.int8()), pa.array(QC_ORDER, pa.string()), ordered=True),
        "default_revision": default.astype(bool),
    }
    return _write_atomically(_arrow_table(path, columns, _DATASETS_SCHEMA, ["eid", "id"], metadata), path)


def _fill_default_revision(default: np.ndarray, eids: Any, parts: Mapping[str, Any]) -> np.ndarray:
    """Fill the None of ``default`` (object array) as ONE would choose: True for the greatest
    revision of its dataset (same eid, collection and name) unless another revision is flagged."""
    unknown = pd.isna(default)
    if unknown.any():
        groups = pd.DataFrame({"eid": eids, "collection": parts["collection"], "name": parts["name"],
                               "revision": parts["revision"], "flagged": default == True})  # noqa: E712
        by = groups.groupby(["eid", "collection", "name"], sort=False)
        latest = (groups["revision"] == by["revision"].transform("max")).to_numpy()
        flagged = by["flagged"].transform("any").to_numpy()
        default = np.where(unknown, latest & ~flagged, default)
    return default


def _write_qc(path: Path, qc: pd.Series | None, n: int) -> np.ndarray:
    """QC codes (positions in QC_ORDER) from names, values or categoricals; null means NOT_SET."""
    if qc is None:
        return np.zeros(n, dtype=np.int8)
    return _qc_codes(qc.astype(object).to_numpy(),
                     lambda row, err: BadInputError(f"cannot write {path}: column 'qc', row {row}: {err}"))


# --------------------------------------------------------------------------------------------
# Streaming writes of trusted records (the store's)
# --------------------------------------------------------------------------------------------

def _qc_array(codes: Any) -> pa.DictionaryArray:
    """ONE's ordered QC categorical from codes (positions in QC_ORDER)."""
    codes = codes.cast(pa.int8()) if isinstance(codes, pa.Array) else pa.array(codes, pa.int8())
    return pa.DictionaryArray.from_arrays(codes, _QC_NAMES, ordered=True)


def _as_array(values: Any, type_: pa.DataType) -> pa.Array:
    return values.cast(type_) if isinstance(values, pa.Array) else pa.array(values, type_)


def sessions_batch(columns: Mapping[str, Any]) -> pa.RecordBatch:
    """Session records already validated (e.g. the store's) as a batch of ONE's sessions table.

    ``columns`` maps :data:`SESSIONS_COLUMNS` to arrow arrays or sequences (``date`` as dates or
    'YYYY-MM-DD' text). Nothing is checked again and the rows keep their order.
    """
    return pa.RecordBatch.from_arrays([_as_array(columns[f.name], f.type) for f in _SESSIONS_SCHEMA],
                                      schema=_SESSIONS_SCHEMA)


def datasets_batch(columns: Mapping[str, Any], path: str | os.PathLike = "<store>") -> pa.RecordBatch:
    """Dataset records already validated (e.g. the store's) as a batch of ONE's datasets table.

    ``columns`` maps ``eid, id, rel_path, file_size, hash, exists, qc, default_revision`` to arrow
    arrays or sequences. Ids and rel_paths are not checked again and the rows keep their order.
    The output is that of :func:`write_datasets`: unknown sizes become 0, '' hashes null, QC names
    codes, and a None ``default_revision`` is filled by ONE's rule, which looks at the other
    revisions of the dataset: each session's rows must come in one batch. ``path`` names the file
    in error messages.
    """
    hashes = _as_array(columns["hash"], pa.string())
    qc = _as_array(columns["qc"], pa.string())
    codes = pc.index_in(qc, value_set=_QC_NAMES)
    if codes.null_count:  # not a canonical name: the lenient reading of write_datasets
        codes = _write_qc(Path(path), _object(qc.to_numpy(zero_copy_only=False)), len(qc))
    default = _as_array(columns["default_revision"], pa.bool_())
    if default.null_count:
        rel_paths = _as_array(columns["rel_path"], pa.string()).to_numpy(zero_copy_only=False)
        default = pa.array(_fill_default_revision(
            default.to_numpy(zero_copy_only=False).astype(object),
            _as_array(columns["eid"], pa.string()).to_numpy(zero_copy_only=False), _split(Path(path), 0, rel_paths),
        ).astype(bool))
    arrays = {
        "rel_path": _as_array(columns["rel_path"], pa.string()),
        "file_size": _as_array(columns["file_size"], pa.int64()).fill_null(0).cast(pa.uint64()),
        "hash": pc.if_else(pc.equal(hashes, ""), pa.scalar(None, pa.string()), hashes),
        "exists": _as_array(columns["exists"], pa.bool_()).fill_null(True),
        "qc": _qc_array(codes),
        "default_revision": default,
        "eid": _as_array(columns["eid"], pa.string()),
        "id": _as_array(columns["id"], pa.string()),
    }
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in _DATASETS_SCHEMA], schema=_DATASETS_SCHEMA)


def write_batches(batches: Iterable[pa.RecordBatch], path: str | os.PathLike, table: str,
                  metadata: Mapping[str, Any] | None = None) -> WrittenTable:
    """Write ONE's ``sessions.pqt`` or ``datasets.pqt`` (``table``) from record batches, atomically.

    The batches, from :func:`sessions_batch` or :func:`datasets_batch`, must come sorted by the
    table's key (id; eid then id); each is written as it comes, so memory holds two batches. The
    schema metadata is that of :func:`write_sessions` and :func:`write_datasets`.
    """
    path = Path(path)
    schema, index = {"sessions": (_SESSIONS_SCHEMA, ["id"]), "datasets": (_DATASETS_SCHEMA, ["eid", "id"])}[table]
    empty = pa.Table.from_arrays([_qc_array([]) if pa.types.is_dictionary(f.type) else pa.array([], f.type)
                                  for f in schema], schema=schema)
    schema = schema.with_metadata({b"pandas": _pandas_metadata(empty, index), METADATA_KEY: _table_metadata(metadata)})
    rows = 0

    def write(f: Any) -> None:
        nonlocal rows
        # Each batch is written in a thread (arrow releases the GIL) while the next one is made.
        with pq.ParquetWriter(f, schema) as writer, ThreadPoolExecutor(1) as pool:
            writing = None
            for batch in batches:
                if writing is not None:
                    writing.result()
                writing = pool.submit(writer.write_batch, batch)
                rows += batch.num_rows
            if writing is not None:
                writing.result()

    write_atomically(path, write)
    return WrittenTable(path=path, rows=rows, sha256=file_sha256(path))


# --------------------------------------------------------------------------------------------
# Merging (ONE's save_cache semantics)
# --------------------------------------------------------------------------------------------

def merge_tables(old: pd.DataFrame, new: pd.DataFrame, table: str | None = None) -> pd.DataFrame:
    """Merge two normalised frames of one table as ONE's ``save_cache`` does.

    Rows of ``new`` replace the rows of ``old`` with the same key (sessions: ``id``; datasets:
    ``(eid, id)``), the other rows of ``new`` are added (the first of duplicated keys in ``new``
    wins), and the result is sorted by key. ``table`` ('sessions' or 'datasets') defaults to
    datasets when the frames have an ``eid`` column. Columns missing from one side are filled
    with None / NA.
    """
    table = table or ("datasets" if "eid" in old.columns or "eid" in new.columns else "sessions")
    if table not in ("sessions", "datasets"):
        raise ValueError(f"unknown table {table!r}: expected 'sessions' or 'datasets'")
    key = ["eid", "id"] if table == "datasets" else ["id"]
    new = new[~new.duplicated(subset=key, keep="first")]
    old_keys = pd.MultiIndex.from_frame(old[key])
    new_keys = pd.MultiIndex.from_frame(new[key])
    kept = old[~old_keys.isin(new_keys)]
    columns = list(old.columns) + [c for c in new.columns if c not in old.columns]
    frames = [f.reindex(columns=columns) for f in (kept, new) if len(f)]
    if not frames:
        return old.iloc[0:0].reindex(columns=columns)
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return merged.sort_values(key, kind="stable").reset_index(drop=True)


def merge_metadata(old: Mapping[str, Any], new: Mapping[str, Any],
                   now: datetime.datetime | None = None) -> dict:
    """Merge table metadata as ONE's ``save_cache`` does: ``new`` wins, except that the earliest
    ``date_created`` is kept, and ``date_modified`` is set to ``now`` ("YYYY-MM-DD HH:MM")."""
    merged = {**old, **new}
    created = []
    for meta in (old, new):
        try:
            created.append(datetime.datetime.fromisoformat(str(meta["date_created"])))
        except (KeyError, ValueError):
            pass
    if created:
        merged["date_created"] = min(created).strftime(DATE_FORMAT)
    merged["date_modified"] = (now or datetime.datetime.now()).strftime(DATE_FORMAT)
    return merged
