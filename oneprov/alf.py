"""ALF naming facts shared by the whole package: dataset paths, revisions, QC levels and UUIDs.

A dataset's ``rel_path`` is relative to its session folder and reads
``[collection/][#revision#/]file_name``, e.g. ``alf/probe00/#2024-05-06#/spikes.times.npy`` has
collection ``alf/probe00``, revision ``2024-05-06`` and name ``spikes.times.npy``. The unrevised
dataset has revision ``''``.

>>> split_rel_path('alf/probe00/#2024-05-06#/spikes.times.npy')
('alf/probe00', '2024-05-06', 'spikes.times.npy')
>>> qc_name(40), qc_name('pass')
('FAIL', 'PASS')
"""
from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from typing import Iterable

import pandas as pd

from .errors import BadInputError

#: ONE's QC enumeration: name -> value. Loads and lists keep ``qc <= FAIL`` by default.
QC_LEVELS: dict[str, int] = {"NOT_SET": 0, "PASS": 10, "WARNING": 30, "FAIL": 40, "CRITICAL": 50}
#: QC names in ONE's order (the categories of the ordered ``qc`` categorical in cache tables).
QC_ORDER: list[str] = sorted(QC_LEVELS, key=QC_LEVELS.__getitem__)
#: The dtype of ONE's ``qc`` column: an ordered categorical NOT_SET < PASS < WARNING < FAIL < CRITICAL.
QC_DTYPE = pd.CategoricalDtype(QC_ORDER, ordered=True)

#: collection (may be nested), optional ``#revision#`` folder, then the file name.
REL_PATH_RE = re.compile(r"^(?P<collection>(?:[^/]+/)*?)(?:#(?P<revision>[^/#]*)#/)?(?P<name>[^/]+)$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: ``<lab>/Subjects/<subject>/<date>/<NNN>`` relative to a cache folder (lab part optional).
SESSION_PATH_RE = re.compile(
    r"(?:^|/)(?:(?P<lab>[^/]+)/Subjects/)?(?P<subject>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<number>\d{1,3})(?:/|$)"
)


def qc_name(qc: str | int) -> str:
    """Return the canonical QC name for a name (any case), a numeric string or a QC value."""
    if isinstance(qc, str) and not qc.isnumeric():
        name = qc.upper()
        if name in QC_LEVELS:
            return name
    else:
        try:
            value = int(qc)
        except (TypeError, ValueError):
            value = None
        for name, level in QC_LEVELS.items():
            if level == value:
                return name
    raise BadInputError(f"unknown QC value {qc!r}: expected one of {', '.join(QC_ORDER)} or their values")


#: The longest text the database stores in these columns (``String(n)`` in ``store/schema.py``): longer
#: values are refused when tables are read, on every back end (PostgreSQL would refuse them, SQLite not).
MAX_CHARS = {"lab": 200, "subject": 200, "revision": 200, "name": 400, "hash": 128}

#: The longest file or folder name that file systems take (NAME_MAX), in UTF-8 bytes.
NAME_MAX = 255
#: The longest rel_path taken, in UTF-8 bytes: PATH_MAX (4096) less room for the cache folder and session.
REL_PATH_MAX = 3072


def name_problem(text: str, *, path: bool = False) -> str | None:
    """Why ``text`` cannot name a file or folder on disk (with ``path``: a relative path), or None.

    Such a name would make every load of it fail in the file system, before the load is recorded,
    and PostgreSQL refuses text with NUL bytes: both are refused when tables are read.
    """
    if "\x00" in text:
        return "it contains a NUL byte"
    if path and len(text.encode()) > REL_PATH_MAX:
        return f"it is longer than {REL_PATH_MAX} bytes"
    for part in text.split("/") if path else [text]:
        if len(part.encode()) > NAME_MAX:
            return f"{part[:40]!r}... is longer than {NAME_MAX} bytes (the longest file name file systems take)"
    return None


def with_uuid(rel_path: str, dataset_id: str) -> str:
    """``rel_path`` with the dataset UUID before the file's extension, as data servers name files
    (``alf/trials.intervals.npy`` -> ``alf/trials.intervals.<uuid>.npy``)."""
    folder, _, name = rel_path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    named = f"{stem}.{dataset_id}.{ext}" if dot else f"{name}.{dataset_id}"
    return f"{folder}/{named}" if folder else named


def split_rel_path(rel_path: str) -> tuple[str, str, str]:
    """Split an ALF ``rel_path`` into ``(collection, revision, name)``; ``''`` for absent parts."""
    m = REL_PATH_RE.match(rel_path) if isinstance(rel_path, str) else None
    if m is None or rel_path.startswith("/") or ".." in rel_path.split("/"):
        raise BadInputError(f"invalid dataset rel_path {rel_path!r}: expected [collection/][#revision#/]file_name")
    problem = name_problem(rel_path, path=True)
    if not problem and len(m["revision"] or "") > MAX_CHARS["revision"]:
        problem = f"its revision is longer than {MAX_CHARS['revision']} characters"
    if problem:
        raise BadInputError(f"invalid dataset rel_path {rel_path[:80]!r}: {problem}")
    return m["collection"].rstrip("/"), m["revision"] or "", m["name"]


def split_rel_paths(rel_paths: pd.Series) -> pd.DataFrame:
    """Vectorised :func:`split_rel_path`: a frame of ``collection, revision, name`` strings.

    Raises :class:`BadInputError` naming the first invalid path (absolute, ``..``, or malformed).
    """
    parts = rel_paths.astype("string").str.extract(REL_PATH_RE)
    bad = parts["name"].isna() | rel_paths.str.startswith("/") | rel_paths.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
    bad |= rel_paths.str.contains("\x00", regex=False)
    long = rel_paths.str.encode("utf-8").str.len() > NAME_MAX     # (only these can hold a too long name)
    if long.any():
        bad |= long & rel_paths.map(lambda p: isinstance(p, str) and name_problem(p, path=True) is not None)
    bad |= parts["revision"].str.len().fillna(0) > MAX_CHARS["revision"]
    if bad.any():
        first = rel_paths[bad].iloc[0]
        raise BadInputError(f"invalid dataset rel_path {first!r} ({int(bad.sum())} invalid in all): "
                            "expected [collection/][#revision#/]file_name inside the session folder")
    return pd.DataFrame({
        "collection": parts["collection"].str.rstrip("/").astype(object),
        "revision": parts["revision"].fillna("").astype(object),
        "name": parts["name"].astype(object),
    }, index=rel_paths.index)


def check_uuid(value: object, what: str = "UUID") -> str:
    """Return ``value`` as a lowercase canonical UUID string, or raise naming ``what``."""
    text = str(value).strip().lower() if value is not None else ""
    if not UUID_RE.match(text):
        raise BadInputError(f"malformed {what} {value!r}: expected a canonical UUID like 'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'")
    return text


def check_uuids(values: pd.Series, what: str) -> pd.Series:
    """Vectorised :func:`check_uuid`: lowercase the series, raise naming the first bad value."""
    text = values.astype("string").str.strip().str.lower()
    bad = ~text.fillna("").str.fullmatch(UUID_RE.pattern)
    if bad.any():
        pos = int(bad.to_numpy().nonzero()[0][0])
        raise BadInputError(f"malformed {what} {values.iloc[pos]!r} at row {pos} ({int(bad.sum())} malformed in all): "
                            "expected canonical UUIDs like 'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'")
    return text.astype(object)


def session_path(lab: str | None, subject: str, date: object, number: int) -> str:
    """The session folder relative to a cache folder: ``<lab>/Subjects/<subject>/<date>/<NNN>``."""
    parts = [lab, "Subjects"] if lab else []
    return "/".join([*parts, str(subject), str(date)[:10], f"{int(number):03d}"])


def ensure_list(value: object) -> list:
    """``None`` -> ``[]``, a string -> ``[string]``, any other iterable -> list."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


# -- matching dataset names the way ONE does ---------------------------------------------------
#
# One-api selects datasets with a regular expression over ``rel_path``, built from the ALF spec
# (``one.alf.spec``, public) and the filters: each filter value is a regular expression, or with
# wildcards a shell pattern (``fnmatch``: ``*``, ``?``, ``[01]``); a list is any of its values; a
# filename may be a dict of ALF parts. The functions below build that same expression.

#: The ALF parts a filename dict may name.
NAME_PARTS = ("namespace", "object", "attribute", "timescale", "extra", "extension")
#: In ``one.alf.spec.FILE_SPEC``, the mark that makes each optional part optional.
_OPTIONAL = {"namespace": "?", "timescale": "?", "extra": "*"}
#: What ``fnmatch.translate`` may wrap a pattern in (a flags group), before its leading ``.*``.
_FLAGS_GROUP = re.escape("(?s:")


def name_parts(name: str) -> dict[str, str | None]:
    """The ALF parts of a file name (all None when it is not an ALF name)."""
    from one.alf.path import filename_parts

    try:
        values = filename_parts(name, as_dict=True)
    except Exception:  # not an ALF name
        values = {}
    return {k: values.get(k) for k in NAME_PARTS}


def _translated(value: str, wildcards: bool) -> str:
    """A filter value as a regular expression without an end anchor."""
    return re.sub(r"\\[Zz]$", "", fnmatch.translate(value)) if wildcards else value


def _file_name(value: str, wildcards: bool) -> str:
    """A filename filter as a regular expression that must end the path. A leading ``*`` does not
    reach into the collection (``*`` -> ``[^/]*``)."""
    if not wildcards:
        return value + "$"
    return re.sub(rf"^({_FLAGS_GROUP})?\.\*", r"\g<1>[^/]*", fnmatch.translate(value))


def _spec_with(parts: dict) -> str:
    """``one.alf.spec.FILE_SPEC`` with the optional parts that a filename dict names made required."""
    from one.alf.spec import FILE_SPEC

    spec = FILE_SPEC
    for key, value in parts.items():
        if key in _OPTIONAL and value is not None:
            at = spec.find(key) + len(key)
            at += spec[at:].find(_OPTIONAL[key])
            spec = spec[:at] + spec[at:].replace(_OPTIONAL[key], "", 1)
    return spec


def rel_path_regex(filename: object = None, collection: object = None, revision: object = None, *,
                   wildcards: bool = True, match_revision: bool = False) -> re.Pattern:
    """The regular expression over ``rel_path`` that one-api's ``filter_datasets`` selects with.

    ``None`` matches anything (including absent parts), ``''`` only an absent collection or
    revision. ``filename`` is a name pattern, a list of them, or a dict of ALF parts; it may
    include the collection (a relative path). ``revision`` is matched only with ``match_revision``
    (list methods); loads choose revisions in SQL instead. Use ``pattern.match(rel_path)``.

    >>> bool(rel_path_regex("spikes.times*", collection="alf/probe0[01]").match("alf/probe01/spikes.times.npy"))
    True
    """
    try:  # the same few filters come back on every load: build each regex once
        return _cached_rel_path_regex(filename, collection, revision, wildcards, match_revision)
    except TypeError:  # a list or dict filter (not hashable)
        return _rel_path_regex(filename, collection, revision, wildcards, match_revision)


def _rel_path_regex(filename: object, collection: object, revision: object, wildcards: bool,
                    match_revision: bool) -> re.Pattern:
    from one.alf.spec import regex

    revision = revision if match_revision else None
    spec = ""
    for value, part in ((collection, "{collection}/"), (revision, "#{revision}#/")):
        spec += part if value else f"({part})?" if value is None else ""   # '' must be absent
    values: dict[str, object] = {"collection": collection, "revision": revision}
    filename = filename or {}
    if isinstance(filename, dict):
        unknown = set(filename) - set(NAME_PARTS)
        if unknown:
            raise BadInputError(f"unknown ALF name part {sorted(unknown)[0]!r}: expected {', '.join(NAME_PARTS)}")
        spec += _spec_with(filename)
        values.update(filename)
    else:
        spec += "|".join(_file_name(str(v), wildcards) for v in ensure_list(filename))
    fields = {k: "|".join(_translated(str(v), wildcards) for v in ensure_list(v))
              for k, v in values.items() if v is not None}
    return regex("^" + spec, **fields)


_cached_rel_path_regex = lru_cache(maxsize=256)(_rel_path_regex)
