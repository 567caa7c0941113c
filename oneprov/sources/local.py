"""Dataset files in an ALF tree on this machine: ``<cache_dir>/<lab>/Subjects/<subject>/<date>/<NNN>/<rel_path>``.

A source answers one question for the client: given the dataset rows it chose, where are their
files, and are they what their records say? The local source only looks; the Alyx source (remote
mode) will download first.

>>> import tempfile
>>> from oneprov.synthetic import make_repository
>>> repo = make_repository(tempfile.mkdtemp())
>>> source = LocalSource(repo.root)
>>> session = repo.sessions.iloc[0]
>>> source.session_folder(session).relative_to(repo.root).as_posix().count("/")
4
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import alf, files
from ..errors import BadInputError


@dataclass(frozen=True)
class Fetched:
    """A chosen dataset's file: its path, and 'ok' or why it cannot be loaded (see :func:`oneprov.files.check_file`)."""

    path: Path
    status: str
    download: Any = None   # what downloading it did (an :class:`oneprov.sources.alyx.Download`), if it was

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class LocalSource:
    """The files of an ALF tree rooted at ``cache_dir``."""

    mode = "local"

    def __init__(self, cache_dir: str | os.PathLike):
        self.root = Path(cache_dir).expanduser().absolute()
        self._resolved_root = self.root.resolve()
        self._root_prefix = str(self._resolved_root).rstrip(os.sep) + os.sep

    def __repr__(self) -> str:
        return f"LocalSource({str(self.root)!r})"

    def session_folder(self, session: Any) -> Path:
        """The folder of a session row (``lab``, ``subject``, ``date``, ``number``, ``id``).

        Refused when it would lie outside the cache folder (``..`` or a symbolic link in the path).
        """
        folder = (self.root / alf.session_path(session.lab, session.subject, session.date, session.number)).resolve()
        if not folder.is_relative_to(self._resolved_root):
            raise BadInputError(f"session {session.id} has a path outside the cache folder: {folder}")
        return folder

    def fetch(self, rows: Sequence[Any], folder_of: Callable[[str], Path], session_of: Callable[[str], Any] = None, *,
              check_hash: bool = True, uuid_names: bool = False) -> list[Fetched]:
        """Each row's file in its session folder (``folder_of(session_id)``), checked against the row's
        size and md5 (the md5 only with ``check_hash``; a null size or hash is not checked). With
        ``uuid_names`` the file's name carries the dataset UUID (one-api's ``uuid_filenames``).
        (``session_of`` is the Alyx source's: a local source needs only the folders.)"""
        out = []
        for row in rows:
            path = folder_of(row.session_id) / (alf.with_uuid(row.rel_path, row.id) if uuid_names else row.rel_path)
            self._inside(path, row)
            out.append(Fetched(path, files.check_file(path, row.file_size, row.hash, check_hash=check_hash)))
        return out

    def _inside(self, path: Path, row: Any) -> None:
        """Refuse a file, or a collection folder, that is a symbolic link to outside the cache folder
        (as a session folder is refused): the file loaded would not be the repository's."""
        if self._plainly_inside(str(path)):
            return
        real = os.path.realpath(path)
        if not Path(real).is_relative_to(self._resolved_root):
            raise BadInputError(f"dataset {row.rel_path} of session {row.session_id} is a link to outside the "
                                f"cache folder: {real}")

    def _plainly_inside(self, path: str) -> bool:
        """Whether ``path`` lies under the resolved cache folder through no symbolic link and no
        ``.``/``..`` part (one ``lstat`` per part below the folder: a load's common case, at less
        than half of ``realpath``'s cost). False means: look closer."""
        if not path.startswith(self._root_prefix):
            return False
        current = self._root_prefix[:-1]
        for part in path[len(self._root_prefix):].split(os.sep):
            if part in ("", ".", ".."):
                return False
            current += os.sep + part
            if os.path.islink(current):
                return False
        return True
