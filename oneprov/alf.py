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


def split_rel_path(rel_path: str) -> tuple[str, str, str]:
    """Split an ALF ``rel_path`` into ``(collection, revision, name)``; ``''`` for absent parts."""
    m = REL_PATH_RE.match(rel_path) if isinstance(rel_path, str) else None
    if m is None or rel_path.startswith("/") or ".." in rel_path.split("/"):
        raise BadInputError(f"invalid dataset rel_path {rel_path!r}: expected [collection/][#revision#/]file_name")
    return m["collection"].rstrip("/"), m["revision"] or "", m["name"]


def split_rel_paths(rel_paths: pd.Series) -> pd.DataFrame:
    """Vectorised :func:`split_rel_path`: a frame of ``collection, revision, name`` strings.

    Raises :class:`BadInputError` naming the first invalid path (absolute, ``..``, or malformed).
    """
    parts = rel_paths.astype("string").str.extract(REL_PATH_RE)
    bad = parts["name"].isna() | rel_paths.str.startswith("/") | rel_paths.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
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

#: ALF file name parts: ``[_namespace_]object.attribute[_timescale][.extra].extension``.
ALF_NAME_RE = re.compile(
    r"^(?:_(?P<namespace>[a-zA-Z0-9]+)_)?(?P<object>\w+?)\."
    r"(?P<attribute>(?:_[a-z]+_)?[a-zA-Z0-9]+(?:_times(?=[_.])|_intervals(?=[_.]))?)"
    r"(?:_(?P<timescale>\w+))?(?:\.(?P<extra>[.\w-]+))?\.(?P<extension>\w+)$"
)
_ANY_COLLECTION = r"(?:[\w./-]+/)?"
_ANY_REVISION = r"(?:#[\w.-]+#/)?"


def name_parts(name: str) -> dict[str, str | None]:
    """The ALF parts of a file name (all None when it is not an ALF name)."""
    m = ALF_NAME_RE.match(name)
    keys = ("namespace", "object", "attribute", "timescale", "extra", "extension")
    return {k: (m[k] if m else None) for k in keys}


def _pattern(value: object, wildcards: bool, *, file_name: bool = False) -> str:
    """One regex alternative for a value or list of values (globs when ``wildcards``)."""
    alternatives = []
    for v in ensure_list(value):
        v = str(v)
        if wildcards:
            # A glob: * matches anything (across folders, as in ONE: collection='*probe01'),
            # except a leading * of a file name, which stays inside the name.
            out = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in v)
            out = ("[^/]*" + out[2:]) if file_name and out.startswith(".*") else out
        else:
            out = v.removesuffix("$")
        alternatives.append(f"(?:{out})")
    return "|".join(alternatives)


def _name_pattern(filename: object, wildcards: bool) -> str:
    if filename is None:
        return r"[^/]+"
    if not isinstance(filename, dict):
        return _pattern(filename, wildcards, file_name=True)
    parts = {k: v for k, v in filename.items() if v is not None}
    unknown = set(parts) - {"namespace", "object", "attribute", "timescale", "extra", "extension"}
    if unknown:
        raise BadInputError(f"unknown ALF name part {sorted(unknown)[0]!r}")

    def part(key: str, default: str) -> str:
        return f"(?:{_pattern(parts[key], wildcards)})" if key in parts else default

    namespace = f"_{part('namespace', '')}_" if "namespace" in parts else r"(?:_[a-zA-Z0-9]+_)?"
    timescale = f"_{part('timescale', '')}" if "timescale" in parts else r"(?:_\w+)?"
    extra = rf"\.{part('extra', '')}" if "extra" in parts else r"(?:\.[.\w-]+)?"
    attribute = part("attribute", r"(?:_[a-z]+_)?[a-zA-Z0-9]+(?:_times(?=[_.])|_intervals(?=[_.]))?")
    return (namespace + part("object", r"\w+") + r"\." + attribute + timescale + extra
            + r"\." + part("extension", r"\w+"))


def rel_path_regex(filename: object = None, collection: object = None, revision: object = None, *,
                   wildcards: bool = True, match_revision: bool = False) -> re.Pattern:
    """A regex over ``rel_path`` selecting datasets as ONE's filters do.

    ``None`` matches anything (including absent parts), ``''`` only an absent collection or
    revision. ``filename`` is a name pattern, a list of them, or a dict of ALF parts; it may
    include the collection (a relative path). ``revision`` is matched only with ``match_revision``
    (list methods); loads choose revisions in SQL instead.
    """
    try:  # the same few filters come back on every load: build each regex once
        return _cached_rel_path_regex(filename, collection, revision, wildcards, match_revision)
    except TypeError:  # a list or dict filter (not hashable)
        return _rel_path_regex(filename, collection, revision, wildcards, match_revision)


def _rel_path_regex(filename: object, collection: object, revision: object, wildcards: bool,
                    match_revision: bool) -> re.Pattern:
    col = _ANY_COLLECTION if collection is None else "" if collection == "" else f"(?:{_pattern(collection, wildcards)})/"
    if not match_revision or revision is None:
        rev = _ANY_REVISION
    else:
        rev = "" if revision == "" else f"#(?:{_pattern(revision, wildcards)})#/"
    return re.compile(f"^{col}{rev}(?:{_name_pattern(filename, wildcards)})$")


_cached_rel_path_regex = lru_cache(maxsize=256)(_rel_path_regex)

