"""Files on disk: their digests, checking them against their records, reading their content, writing
them atomically.

A file is checked once per process: its md5 is remembered with its size and modification time, so
loading the same dataset again costs a ``stat``, not a hash (one-api hashes on every load).

>>> import tempfile, pathlib, numpy as np
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.times.npy"
>>> np.save(path, np.arange(3))
>>> check_file(path, size=None)
'ok'
>>> read_file(path).tolist()
[0, 1, 2]
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import pandas as pd

#: Bytes read at a time when hashing a file.
_BLOCK = 1 << 20
_md5_seen: dict[tuple[str, int, int], str] = {}


def _digest(path: str | os.PathLike, algorithm: str) -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    """The md5 hex digest of a file, remembered for as long as its size and mtime do not change."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _md5_seen.get(key)
    if digest is None:
        digest = _md5_seen[key] = _digest(path, "md5")
    return digest


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file (recorded with every file oneprov writes or imports)."""
    return _digest(path, "sha256")


def check_file(path: Path, size: int | None, md5: str | None = None, *, check_hash: bool = True) -> str:
    """'ok', 'missing', 'size_mismatch' or 'hash_mismatch' for a file and its recorded size and md5.

    A null (or 0, as ONE writes for unknown) size and a null hash mean "unknown": not checked.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if not path.is_file():
        return "missing"
    if size is not None and not pd.isna(size) and int(size) > 0 and st.st_size != int(size):
        return "size_mismatch"
    if check_hash and isinstance(md5, str) and md5 and file_md5(path) != md5.lower():
        return "hash_mismatch"
    return "ok"


def read_file(path: Path) -> Any:
    """The content of a dataset file, by extension, as one-api returns it.

    .npy: numpy array; .pqt/.parquet: DataFrame; .csv/.tsv/.ssv: DataFrame; .json: parsed JSON;
    .jsonable: list of records; anything else: the path itself.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".pqt", ".parquet"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".ssv"):
        return pd.read_csv(path, sep={".csv": ",", ".tsv": "\t", ".ssv": " "}[suffix])
    if suffix == ".json":
        with open(path) as f:
            return json.load(f)
    if suffix == ".jsonable":
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    return path


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], *, overwrite: bool = True) -> bool:
    """Write a file through ``write(f)`` into a temporary file beside ``path``, fsync it, move it in place.

    Readers never see a partial file; on any error (a full disk...) the temporary file is removed
    and the error propagates, leaving a previous ``path`` untouched. The temporary name starts with
    '.' and ends in '.tmp' (ONE loads every ``*.pqt`` of a folder). Without ``overwrite`` the move
    is a hard link that fails when ``path`` exists: then nothing is written and False is returned.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable; not possible on every platform
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return True
