"""Files on disk: their digests, checking them against their records, writing them atomically (one
file, or a pair of files that readers must see together).

A file is checked once per process: its md5 is remembered with its size and modification time, so
loading the same dataset again costs a ``stat``, not a hash (one-api hashes on every load).

>>> import tempfile, pathlib, numpy as np
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.times.npy"
>>> np.save(path, np.arange(3))
>>> check_file(path, size=None)
'ok'
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any, IO, Callable

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


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], *, overwrite: bool = True) -> bool:
    """Write a file through ``write(f)`` into a temporary file beside ``path``, fsync it, move it in place.

    Readers never see a partial file; on any error (a full disk...) the temporary file is removed
    and the error propagates, leaving a previous ``path`` untouched. The temporary name starts with
    '.' and ends in '.tmp' (ONE loads every ``*.pqt`` of a folder). Without ``overwrite`` the move
    is a hard link that fails when ``path`` exists: then nothing is written and False is returned.
    """
    tmp = temporary_name(path)
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
    _fsync_folder(path.parent)
    return True


def temporary_name(path: Path) -> Path:
    """A name for a file being written beside ``path``: hidden, ending in '.tmp' (ONE loads every
    ``*.pqt`` of a folder), and naming its writer (pid and host), so that one left by a killed writer
    can be told from one being written (:func:`finish_replacing`)."""
    return path.with_name(f".{path.name}.{os.getpid()}@{socket.gethostname()}.{uuid.uuid4().hex[:8]}.tmp")


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>.+)\.[0-9a-f]{8}\.tmp$")

#: The journal of a :func:`replace_together` under way, in the folder of its files.
REPLACING = ".oneprov-replacing.json"


def _fsync_folder(folder: Path) -> None:
    try:  # make renames durable; not possible on every platform
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def process_alive(pid: Any) -> bool:
    """Whether a process with this id exists on this host (an unknown pid counts as alive)."""
    if pid is None or pid != pid:   # (None, or a NaN from a frame)
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _writer_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True          # (cannot tell: another machine's writer counts as alive)
    return process_alive(pid)


def replace_together(moves: list[tuple[Path, Path]]) -> None:
    """Move written temporary files onto their targets (one folder), all of them or none.

    A journal naming every move is written first (atomically): a writer killed part-way leaves it,
    and the next :func:`finish_replacing` of the folder completes the moves. Readers see the old
    files or the new ones; only in the instant between two renames, the new and an old one.
    """
    folder = moves[0][1].parent
    journal = folder / REPLACING
    plan = {"pid": os.getpid(), "host": socket.gethostname(), "moves": [[str(t), str(p)] for t, p in moves]}
    write_atomically(journal, lambda f: f.write(json.dumps(plan).encode()))
    for tmp, target in moves:
        os.replace(tmp, target)
    _fsync_folder(folder)
    journal.unlink()
    _fsync_folder(folder)


def finish_replacing(folder: Path, *, wait: float = 10.0) -> None:
    """Complete the moves of a :func:`replace_together` in ``folder`` whose writer was killed (waiting
    up to ``wait`` seconds for a live one), and remove temporary files that killed writers left."""
    journal = folder / REPLACING
    deadline = time.monotonic() + wait
    while journal.exists():
        try:
            plan = json.loads(journal.read_text())
        except FileNotFoundError:
            break
        if plan["pid"] != os.getpid() and _writer_alive(plan["pid"], plan["host"]) and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        for tmp, target in plan["moves"]:
            if Path(tmp).exists():
                os.replace(tmp, target)
        _fsync_folder(folder)
        journal.unlink(missing_ok=True)
    for leftover in folder.glob(".*.tmp"):
        m = _TEMPORARY.match(leftover.name)
        if m and not _writer_alive(int(m["pid"]), m["host"]):
            leftover.unlink(missing_ok=True)
