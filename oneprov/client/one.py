"""``from oneprov import ONE``: one-api's local-mode ``One``, with every search and load recorded.

The client answers as one-api's ``One`` answers, from the rows of the cache tables it was given:
the catalog (the records of its import) says which rows answer a call, SQL chooses their
revisions, the source says where their files are, and one-api's own readers read them. Every
search and list is recorded as a query with the rows it returned, every load attempt as an access
event with its outcome, each committed before the call returns. A run is started by the first
recorded call and closed at exit ('finished', or 'failed' when an exception ends the process).

>>> import tempfile
>>> from oneprov.synthetic import make_repository
>>> repo = make_repository(tempfile.mkdtemp())          # a small ALF tree with ONE cache tables
>>> one = ONE(cache_dir=repo.root, mode="local")
>>> one.record_loaded = True
>>> trials = one.load_object(repo.eid, "trials")
>>> ids, path = one.save_loaded_ids()
>>> path.name.endswith("_loaded_dataset_uuids.csv")
True

Deliberate differences from one-api are listed in the README ("Differences from ONE").
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import json
import logging
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from one.alf.path import ALFPath, get_session_path, rel_path_parts
from one.converters import ConversionMixin

from .. import alf, export, settings
from ..errors import (
    ALFError, ALFMultipleCollectionsFound, ALFMultipleObjectsFound, ALFObjectNotFound, ALFWarning,
    BadInputError,
)
from ..sources.alyx import AlyxSource
from ..sources.local import LocalSource
from ..store import Store, open_store
from ..store.catalog import DATASET_COLUMNS, Catalog
from . import remote
from .recorder import Recorder
from .shapes import SEARCH_TERMS, Bunch, autocomplete, dataset_frame, load_object, read_file, session_frame

__all__ = ["ONE", "One"]

#: Where one-api logs what it logs (not warns) about a load, e.g. datasets not in the cache; the same
#: logger here, so that logging set up for ONE (levels, handlers, ``assertLogs``) keeps working.
_log = logging.getLogger("one.api")

def _caller_level() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in :func:`_warn`) that names the line of code
    outside oneprov that called a client method."""
    import inspect

    frame, level = inspect.currentframe().f_back, 1     # level 1: _warn itself
    here = os.path.dirname(os.path.dirname(__file__))
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    return level


def _warn(message: str, category: type[Warning] = ALFWarning) -> None:
    warnings.warn(message, category, stacklevel=_caller_level())


def _with_tables(method: Callable) -> Callable:
    """Before a public method runs, take in the user's edits of ``one._cache`` (see :attr:`ONE._cache`)."""
    @functools.wraps(method)
    def wrapper(self: "ONE", *args: Any, **kwargs: Any) -> Any:
        if self._edits is not None:
            self._take_edits()
        return method(self, *args, **kwargs)
    return wrapper


def _parses_id(method: Callable) -> Callable:
    """Resolve the session identifier (first argument) of ``method`` to an eid first, as one-api's
    ``parse_id`` does. The undecorated method stays reachable as ``__wrapped__``: one-api's
    converters (``ref2path``) call ``unwrap(self.eid2path)(self, eid)``."""
    @functools.wraps(method)
    def wrapper(self: "ONE", id: Any, *args: Any, **kwargs: Any) -> Any:
        eid = self.to_eid(id)
        if eid is None:
            raise ValueError(f'Cannot parse session ID "{id}" (session may not exist)')
        return method(self, eid, *args, **kwargs)
    return wrapper


class ONE(ConversionMixin):
    """one-api's ``One`` in local mode, whose every search and load is recorded in a provenance store.

    ``cache_dir`` holds the ALF tree (``<lab>/Subjects/<subject>/<date>/<NNN>/<rel_path>``); by
    default one-api's own cache folder (its saved parameters). ``tables_dir`` (default
    ``cache_dir``) holds the ONE cache tables, imported into the store when they changed. ``db``
    defaults to ``$ONEPROV_DB``, else ``<cache_dir>/provenance.sqlite``; ``project`` to
    ``$ONEPROV_PROJECT``, else "default"; ``label`` names the run.

    The parameters are one-api's ``ONE()``'s, and ``db``, ``project`` and ``label``.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        The ALF tree. Default None: ``$ONE_CACHE_DIR``, else one-api's saved cache folder (of the
        Alyx in remote mode). In local mode it must exist; in remote mode it is created.
    mode : {'local', 'remote'}, optional
        Default None: as one-api decides, 'remote' when ``base_url`` or credentials are given, or
        one-api's saved parameters name an Alyx for ``cache_dir``; else 'local'.
    wildcards : bool, optional
        Dataset names match with ``*`` wildcards, and search terms as regular expressions, as in
        one-api. Default True.
    tables_dir : str or os.PathLike, optional
        The folder of the ONE cache tables (``sessions.pqt``, ``datasets.pqt``). Default None: ``cache_dir``.
    base_url : str, optional
        The Alyx base URL (remote mode). Default None: one-api's saved parameters.
    username, password : str, optional
        Alyx credentials (remote mode), given to one-api's ``AlyxClient``. Default None.
    token : object, optional
        An Alyx token (remote mode), given to one-api's ``AlyxClient``. Default None.
    cache_rest : str or None, optional
        The REST requests one-api's ``AlyxClient`` caches ('GET'; None: none). Default 'GET'.
    db : str, os.PathLike or sqlalchemy.engine.URL, optional
        The provenance database (see :func:`oneprov.open_store`). Default None: ``$ONEPROV_DB``,
        else ``<cache_dir>/provenance.sqlite``.
    project : str, optional
        The run's project. Default None: ``$ONEPROV_PROJECT``, else "default".
    label : str, optional
        The run's label. Default None.
    silent : bool, optional
        Do not ask questions or show progress (one-api's ``silent``). Default False.
    **kwargs
        Refused: any other keyword raises ``TypeError``.

    Raises
    ------
    BadInputError
        ``cache_dir`` does not exist (local mode) or cannot be created (remote mode); ``project`` is
        blank; remote mode without an Alyx (no ``base_url`` and no saved parameters); bad cache tables.
    SchemaVersionError
        The database's schema is newer than this oneprov knows.
    DatabaseError
        The database cannot be opened or created.
    ValueError
        ``mode`` is neither 'local' nor 'remote'.
    TypeError
        An unknown keyword argument.

    Warns
    -----
    UserWarning
        Alyx cannot be reached (the client works offline, from what this cache folder recorded), or
        ``tables_dir`` holds no cache tables.
    """

    _search_terms = SEARCH_TERMS
    uuid_filenames = False

    def __init__(self, cache_dir: str | os.PathLike | None = None, mode: str | None = None, wildcards: bool = True,
                 tables_dir: str | os.PathLike | None = None, *, base_url: str | None = None,
                 username: str | None = None, password: str | None = None, token: Any = None,
                 cache_rest: str | None = "GET", db: Any = None, project: str | None = None, label: str | None = None,
                 silent: bool = False, **kwargs: Any):
        if kwargs:
            raise TypeError(f"ONE() got an unexpected keyword argument {sorted(kwargs)[0]!r}")
        mode = remote.decide_mode(mode, cache_dir, base_url, bool(username or password or token))
        if not cache_dir:
            from one.params import get_cache_dir   # one-api's saved parameters (or its default folder)
            cache_dir = settings.cache_dir() or get_cache_dir(base_url if mode == "remote" else None)
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        if mode == "remote":
            remote.check_cache_dir(self.cache_dir)
        if not self.cache_dir.is_dir():
            raise BadInputError(f"cache_dir {str(self.cache_dir)!r} does not exist")
        self.mode = mode
        self.wildcards = wildcards
        self.silent = silent
        self.record_loaded = False
        self._tables_dir = Path(tables_dir).expanduser().absolute() if tables_dir else self.cache_dir
        settings.project(project)   # (a blank project is refused before the database is opened)
        self.store: Store = open_store(db or settings.database() or self.cache_dir / "provenance.sqlite")
        self._remote: remote.RemoteTables | None = None
        if mode == "remote" and not base_url and not remote.saved_alyx(cache_dir if cache_dir else None):
            raise BadInputError("mode='remote' needs an Alyx database: pass base_url= (and username=), or save "
                                "one-api's parameters for it first (one.api.OneAlyx.setup)")
        self._source: LocalSource | AlyxSource = LocalSource(self.cache_dir)
        offline_because: BaseException | None = None
        if mode == "remote":
            try:
                self._source = AlyxSource(base_url, self.cache_dir, username=username, password=password, token=token,
                                          silent=silent, cache_rest=cache_rest)
                base_url = self._source.base_url
            except ConnectionError as exc:   # (one-api's AlyxClient raises the builtin when it cannot log in)
                offline_because = exc
        self._recorder = Recorder(self.store, project, label, cache_dir=self.cache_dir,
                                  base_url=base_url if mode == "remote" else None)
        self._catalog = Catalog(self.store, None)
        self._folders: dict[str, Path] = {}   # eid -> session folder, for the current catalog
        self._edits: Any = None                # one-api's tables, once ``_cache`` was asked for
        self._saved_query: int | None = None   # the query whose tables are as loaded or last saved
        if isinstance(self._source, AlyxSource):
            self._remote = remote.RemoteTables(self.store, self._source, self._recorder,
                                               lambda: self._catalog.query_id, self._use_tables)
        elif offline_because is not None:
            _warn(f"cannot reach {base_url or 'Alyx'} ({offline_because}): working offline, from the tables "
                  "and files recorded in this cache folder", UserWarning)
            self.mode = "local"
            self.load_cache(self._tables_dir)
        else:
            self.load_cache(self._tables_dir)

    def __repr__(self) -> str:
        if self._remote is not None:
            return f"One ({'off' if self.offline else 'on'}line, {self._source.base_url})"
        return f"One (offline, {self.cache_dir})"

    @property
    def offline(self) -> bool:
        """Whether this client works on local files only (local mode), as one-api's ``offline``."""
        return self.mode == "local" or self._remote is None

    @property
    def alyx(self) -> Any:
        """one-api's ``AlyxClient`` of a remote client (its REST requests made directly are not recorded)."""
        if self._remote is None:
            raise AttributeError("a local-mode client has no Alyx connection")
        return self._source.alyx

    @property
    def _catalog(self) -> Catalog:
        """What the client answers from (the rows of one query); each change is told to the recorder."""
        return self.__dict__["_answering"]

    @_catalog.setter
    def _catalog(self, catalog: Catalog) -> None:
        self.__dict__["_answering"] = catalog
        if "_recorder" in self.__dict__:
            self._recorder.use_tables(catalog.query_id)

    def _remote_call(self, query_type: str | None) -> bool:
        """Whether a call with this ``query_type`` goes to Alyx (the one place the mode is decided)."""
        if query_type is not None and query_type not in remote.MODES:
            raise ValueError(f'query_type "{query_type}" not recognized: use "local" or "remote"')
        return self._remote is not None and (query_type or self.mode) == "remote"

    def _use_tables(self, query_id: int | None) -> None:
        """Answer from the tables of ``query_id`` (a remote client's tables after an answer)."""
        if query_id != self._catalog.query_id:
            self._catalog = Catalog(self.store, query_id)
            self._folders = {}
            self._edits = None

    @staticmethod
    def setup(cache_dir: str | os.PathLike | None = None, silent: bool = False, **kwargs: Any) -> "ONE":
        """Build ONE cache tables from the ALF tree in ``cache_dir`` (asking, unless ``silent``, as
        one-api does) and return a client on it. ``kwargs`` go to ``one.alf.cache.make_parquet_db``."""
        from one.alf.cache import make_parquet_db

        if not cache_dir:
            if not silent:
                cache_dir = input(f"Select a directory from which to build cache ({Path.cwd()})")
            cache_dir = cache_dir or Path.cwd()
        cache_dir = Path(cache_dir)
        if not cache_dir.exists():
            raise BadInputError(f"{cache_dir} does not exist")
        if next(cache_dir.glob("sessions.pqt"), False):
            overwrite = not silent and input(f"Cache tables exist for {cache_dir}, overwrite? [y/N]") == "y"
            if not overwrite:
                return ONE(cache_dir, mode="local")
        make_parquet_db(cache_dir, **kwargs)
        return ONE(cache_dir, mode="local")

    # -- the run and its records ------------------------------------------------------------

    @property
    def project(self) -> str:
        """The project of this client's run."""
        return self._recorder.project

    @property
    def label(self) -> str | None:
        """The label of this client's run (None without one)."""
        return self._recorder.label

    @property
    def run_id(self) -> str | None:
        """The id of this client's run, once its first call was recorded (else None)."""
        return self._recorder.run_id

    def close(self, error: BaseException | None = None) -> None:
        """Close the run ('finished', or 'failed' with ``error``) and release the database.

        ``with ONE(...) as one:`` closes the client at the end of the block, with the block's error.

        Parameters
        ----------
        error : BaseException, optional
            The error that ended the analysis: the run is closed 'failed' with it. Default None:
            'finished'.

        Returns
        -------
        None

        Raises
        ------
        DatabaseError
            The run cannot be closed (the database cannot be written).
        """
        self._recorder.close(error)
        self.store.close()

    def __enter__(self) -> "ONE":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator["ONE"]:
        """Record every search and load inside the block under a scope name (e.g. a figure).

        Parameters
        ----------
        name : str
            The scope's name (e.g. "figure3"); scopes nest, the innermost is recorded.

        Yields
        ------
        ONE
            This client.
        """
        with self._recorder.scope(name):
            yield self

    def _event(self, method: str, outcome: str, row: Any = None, **details: Any) -> dict[str, Any]:
        return self._recorder.event(method, outcome, row, listed=self.record_loaded, **details)

    def _record_query(self, method: str, params: dict[str, Any], started: float, **rows: Any) -> None:
        self._recorder.record_query(method, params, started, mode=self.mode, **rows)

    # -- cache tables -----------------------------------------------------------------------

    def load_cache(self, tables_dir: str | os.PathLike | None = None, clobber: bool | None = None,
                   tag: str | None = None, **kwargs: Any) -> Any:
        """Import the cache tables of ``tables_dir`` (default: this client's) and answer from them;
        return when they were loaded (one-api's ``loaded_time``).

        In remote mode, first download the server's tables when they are newer than the local ones
        (or of another origin or data-release ``tag``; always with ``clobber``), as one-api does:
        ``GET cache/info/<tag>``, then the cache zip. The import records which tables it was
        (their origin, ``date_created``, tag and checksum). In local mode ``clobber=False`` is
        refused, as in one-api. Unlike one-api, the loaded-ids list and every record survive.

        Mirrors one-api's ``One.load_cache``.

        Parameters
        ----------
        tables_dir : str or os.PathLike, optional
            The folder of the cache tables. Default None: this client's ``tables_dir`` (in remote
            mode with a ``tag``, ``<cache_dir>/<tag>``).
        clobber : bool, optional
            Remote mode: download the server's tables even when the local ones are as new. Local
            mode: False is refused. Default None.
        tag : str, optional
            Remote mode: the data-release tag of the tables to download. Default None: the
            server's current tables.
        **kwargs
            Accepted for one-api's callers, and ignored.

        Returns
        -------
        datetime.datetime or None
            When the tables were loaded (local time); None when no tables were found, or the
            server's tables could not be downloaded (an HTTP error, logged) or need a newer one-api.

        Raises
        ------
        NotImplementedError
            ``clobber=False`` in local mode.
        BadInputError
            The tables hold a bad row (nothing answers from them), or ``tag`` is not a data-release
            tag of the server.
        DatabaseError
            The database cannot be written.

        Warns
        -----
        UserWarning
            No cache tables in the folder (and none recorded for it), or the server's tables need a
            newer one-api.
        """
        if self._remote_call(None):
            return self._load_remote_cache(tables_dir, bool(clobber), tag)
        if clobber is False:
            raise NotImplementedError("clobber=False not implemented yet")
        folder = Path(tables_dir).expanduser().absolute() if tables_dir else self._tables_dir
        self._edits = None
        self._folders = {}
        self._tables_dir = folder
        if not (folder / "datasets.pqt").exists():
            recorded = self.store.latest_tables(str(self.cache_dir))
            if recorded is not None:
                _log.info(f"No cache tables in {folder}: answering from the tables that remote queries "
                          f"brought into this cache folder (query {recorded})")
                self._catalog = Catalog(self.store, recorded)
                self._saved_query = None
                return dt.datetime.now()
            _warn(f"No cache tables found in {folder}", UserWarning)
            self._catalog = Catalog(self.store, None)
            return None
        self._catalog = Catalog(self.store, self.store.import_cache(folder).query_id)
        self._saved_query = self._catalog.query_id
        return dt.datetime.now()

    def _load_remote_cache(self, tables_dir: Any, clobber: bool, tag: str | None) -> Any:
        """``load_cache`` in remote mode (see :meth:`load_cache`)."""
        import one
        import packaging.version
        import requests

        folder = Path(tables_dir).expanduser().absolute() if tables_dir else (
            self.cache_dir / tag if tag else self._tables_dir)
        local = self._tables_metadata(folder)
        try:
            info = self._source.alyx.get(f"cache/info/{tag or ''}".strip("/"), expires=True)
            if tag is not None and tag not in info.get("database_tags", []):
                raise BadInputError(f"tag {tag!r} is not a data-release tag of {self._source.base_url}")
            needed = packaging.version.parse(info.get("min_api_version", "0.0.0"))
            if packaging.version.parse(one.__version__) < needed:
                _warn(f"Newer cache tables require ONE version {needed} or greater", UserWarning)
                return None
            created = dt.datetime.fromisoformat(info["date_created"])
            fresh = (local.get("date_created") is not None
                     and abs(created - local["date_created"]) < dt.timedelta(minutes=1)
                     and info.get("origin") in local.get("origins", ())
                     and (tag or None) == local.get("tag"))
            if clobber or not fresh:
                remote.download_tables(self._source, info.get("location"), folder)
        except requests.HTTPError as exc:
            _log.error(f"HTTPError: Failed to load the remote cache file ({exc})")
            return None
        except (ConnectionError, requests.ConnectionError) as exc:
            self._go_offline(exc)
            return self.load_cache(folder if (folder / "datasets.pqt").exists() else None)
        self._tables_dir = folder
        result = self.store.import_cache(folder, run_id=self._recorder.run(), origin={
            "base_url": self._source.base_url, "cache_info": info, "tag": tag})
        self._use_tables(result.query_id)
        self._saved_query = result.query_id
        return dt.datetime.now()

    @staticmethod
    def _tables_metadata(folder: Path) -> dict[str, Any]:
        """The creation date, origins and tag of the cache tables in ``folder`` (empty without tables)."""
        from ..tables import read_metadata

        path = folder / "datasets.pqt"
        if not path.exists():
            return {}
        meta = read_metadata(path)
        created = meta.get("date_created")
        tags = alf.ensure_list(meta.get("database_tags") or [])
        return {"date_created": dt.datetime.fromisoformat(created) if created else None,
                "origins": set(alf.ensure_list(meta.get("origin") or [])), "tag": tags[0] if tags else None}

    def _go_offline(self, error: BaseException) -> None:
        """The server cannot be reached: answer from what is recorded (local mode), and say so once."""
        if self.mode != "local":
            _warn(f"cannot reach {self._source.base_url} ({type(error).__name__}): working offline, from the "
                  "tables and files recorded in this cache folder", UserWarning)
        self.mode = "local"
        if self._catalog.query_id is None:
            recorded = self.store.latest_tables(str(self.cache_dir))
            if recorded is not None:
                self._use_tables(recorded)

    def reset_cache(self) -> None:
        """Forget the loaded tables (the client then sees nothing); records and the list remain."""
        self._catalog = Catalog(self.store, None)
        self._folders = {}
        self._edits = None

    @_with_tables
    def save_cache(self, save_dir: str | os.PathLike | None = None, clobber: bool = False) -> dict[str, Path]:
        """Write the client's tables as ONE-format ``sessions.pqt``/``datasets.pqt``; return their paths.

        As one-api: nothing is written (``{}``) unless the tables changed since they were loaded or
        last saved (an edit of ``_cache``), or ``clobber``; merged with tables already in ``save_dir``
        (default ``cache_dir``) unless ``clobber``. ``default_revision`` is always kept, and the
        tables' own ``origin`` and ``date_created``, with a new ``date_modified``.

        Mirrors one-api's ``One.save_cache``. Each file written is recorded in the store's exports.

        Parameters
        ----------
        save_dir : str or os.PathLike, optional
            The folder to write into. Default None: ``cache_dir``.
        clobber : bool, optional
            Write even when the tables did not change, and replace the tables in ``save_dir``
            instead of merging with them. Default False.

        Returns
        -------
        dict of str to pathlib.Path
            The paths written, by table name ('sessions', 'datasets'); empty when nothing was written.

        Raises
        ------
        BadInputError
            ``save_dir`` does not exist, or a table in it cannot be read.
        DatabaseError
            The database cannot be read or written.
        """
        query = self._catalog.query_id
        if query is None or (query == self._saved_query and not clobber):
            return {}
        written = export.export_cache(self.store, Path(save_dir or self.cache_dir), query=query, clobber=clobber,
                                      origin=None if self._remote is None else self._source.base_url,
                                      by_run=self._recorder.run())
        self._saved_query = query
        return written

    @_with_tables
    def save_loaded_ids(self, sessions_only: bool = False, clear_list: bool = True,
                        path: str | os.PathLike | None = None) -> tuple[Any, Path | None]:
        """Write the current list of loaded dataset (or session) UUIDs in ONE's CSV format; return the
        ids (UUIDs, sorted) and the file.

        The list holds the datasets loaded by this run with ``record_loaded`` on since the last
        clear. The file goes to ``path`` if given, else ONE's time-stamped name in ``tables_dir``.
        ``clear_list`` starts a new list; the history stays in the database.

        Mirrors one-api's ``One.save_loaded_ids``, with ``path`` added.

        Parameters
        ----------
        sessions_only : bool, optional
            Save the UUIDs of the sessions of the loaded datasets instead. Default False.
        clear_list : bool, optional
            Start a new list once the file is written. Default True.
        path : str or os.PathLike, optional
            The file to write. Default None: ``<tables_dir>/<YYYY-MM-DDTHH-MM-SS>_loaded_dataset_uuids.csv``
            (``..._loaded_session_uuids.csv`` with ``sessions_only``).

        Returns
        -------
        ids : numpy.ndarray of uuid.UUID, or list
            The UUIDs saved, sorted (an object array); ``[]`` when nothing was loaded.
        path : pathlib.Path or None
            The file written; None when nothing was loaded.

        Raises
        ------
        BadInputError
            The folder of ``path`` does not exist.
        DatabaseError
            The database cannot be read or written.

        Warns
        -----
        UserWarning
            Nothing was loaded with ``record_loaded`` on since the last clear: no file is written.
        """
        empty = "No datasets loaded; check that the `record_loaded` attribute is True"
        if self.run_id is None:
            _warn(empty, UserWarning)
            return [], None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids, written = export.export_loaded_ids(
                self.store, self._tables_dir, path=path, run=self.run_id, sessions_only=sessions_only,
                since_clear=True, listed_only=True)
        for w in caught:
            if "No datasets loaded" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if written is None:
            _warn(empty, UserWarning)
            return [], None
        if clear_list:
            self._recorder.mark("clear_list")
        return np.array([uuid.UUID(i) for i in ids], dtype=object), written

    # -- one-api's in-memory tables ---------------------------------------------------------

    @property
    def _cache(self) -> Bunch:
        """one-api's in-memory tables (``sessions``, ``datasets``, ``_meta``), made when first asked for.

        Analysis code reads them, and some edits them (e.g. sets ``default_revision`` of a file
        type). An edit takes effect for the calls that follow, and is itself recorded: the edited
        tables are ingested as a query whose source is "in-memory edit", so the provenance shows
        that the data choice was altered by hand.
        """
        if self._edits is None:
            self._edits = _Edits(self._cache_tables())
        return self._edits.tables

    def _cache_tables(self) -> Bunch:
        """The catalog's tables as one-api loads them: read from the tables folder when it still holds
        what was imported, else written from the store into a temporary folder first."""
        import tempfile

        from one.alf.cache import load_tables

        query = self._catalog.query_id
        if query is None:
            from one.alf.cache import default_cache
            return default_cache()
        if self.store.import_cache(self._tables_dir).query_id == query:   # (the same tables: no write)
            return load_tables(self._tables_dir)
        with tempfile.TemporaryDirectory(prefix="oneprov-cache-") as folder:
            export.export_cache(self.store, folder, query=query, clobber=True, record=False)
            return load_tables(folder)

    def _take_edits(self) -> None:
        """If ``_cache`` changed since it was made (or last taken), ingest it and answer from it."""
        if not self._edits.changed():
            return
        from ..tables import Frames

        tables = self._edits.tables
        rows = Frames(tables["sessions"], tables["datasets"], "one._cache", tables.get("_meta", {}).get("raw") or {})
        query = self.store.ingest(rows, method="edit_cache", location=f"in-memory edit of query {self._catalog.query_id}",
                                  run_id=self._recorder.run())
        self._catalog = Catalog(self.store, query.query_id)
        self._folders = {}
        self._edits.taken()

    # -- ids and paths ----------------------------------------------------------------------

    def _eid(self, id: Any) -> str:
        """The eid (lowercase text) of any session identifier, as one-api's ``parse_id`` resolves it."""
        if isinstance(id, str) and alf.UUID_RE.fullmatch(id):
            return id   # (the common case, at a fraction of to_eid's cost: no ref or path is a UUID)
        eid = self.to_eid(id)
        if eid is None:
            raise ValueError(f'Cannot parse session ID "{id}" (session may not exist)')
        return str(eid)

    @_parses_id
    @_with_tables
    def eid2path(self, eid: Any, query_type: str | None = None) -> ALFPath | list | None:
        """The local session folder of a session (a list for a list), as an ``ALFPath``; None if unknown.

        Mirrors one-api's ``One.eid2path``.

        Parameters
        ----------
        eid : str, uuid.UUID, pathlib.Path, dict or list
            Any session identifier (UUID, ref, path, URL), or a list of them.
        query_type : {'local', 'remote'}, optional
            With 'remote' (the default of a remote client), a session the tables do not hold is
            looked up in Alyx. Default None: the client's mode.

        Returns
        -------
        one.alf.path.ALFPath, list or None
            The session folder (``<cache_dir>/<lab>/Subjects/<subject>/<date>/<NNN>``; no lab part
            for a session without a lab), whether or not it exists on disk; a list for a list; None
            for a session the tables do not hold.

        Raises
        ------
        ValueError
            ``eid`` cannot be parsed as a session identifier, or ``query_type`` is unknown.
        """
        if isinstance(eid, (list, tuple)):
            return [self.eid2path(e) for e in eid]
        if not alf.UUID_RE.match(str(eid).lower()):
            raise ValueError(f"{eid} is not a valid eID/UUID string")
        session = self._catalog.session(str(eid).lower())
        if session is None and self._remote_call(query_type):
            self._remote.sessions_page({"id": str(eid)}, self._source.rest("sessions", "list", id=str(eid)))
            session = self._catalog.session(str(eid).lower())
        return None if session is None else ALFPath(self._source.session_folder(session))

    @_with_tables
    def path2eid(self, path_obj: Any, query_type: str | None = None) -> uuid.UUID | list | None:
        """The eid of the session whose folder ``path_obj`` is (or is inside); in remote mode, when
        the tables do not know it, searched in Alyx.

        Mirrors one-api's ``One.path2eid``.

        Parameters
        ----------
        path_obj : str, pathlib.Path or list
            A path holding ``<subject>/<date>/<NNN>`` (a session folder or a file in it), or a list of them.
        query_type : {'local', 'remote'}, optional
            Default None: the client's mode.

        Returns
        -------
        uuid.UUID, list or None
            The session's eid; a list for a list; None when the path names no session, or no single
            session of the tables.

        Raises
        ------
        ValueError
            ``query_type`` is unknown.
        """
        if isinstance(path_obj, (list, tuple)):
            return [self.path2eid(p, query_type) for p in path_obj]
        session_path = get_session_path(path_obj)
        if session_path is None:
            return None
        subject, date, number = session_path.parts[-3:]
        found = self._catalog.find_session(subject, date, int(number))
        if len(found) == 1:
            return uuid.UUID(found[0])
        if not found and self._remote_call(query_type):
            eids = self.search(subject=subject, date_range=date, number=number, query_type="remote")
            return eids[0] if len(eids) else None
        return None

    @_with_tables
    def path2record(self, path: Any) -> pd.Series | None:
        """The cache record of a session folder or a dataset file (a Series), or None.

        A file name carrying a dataset UUID (as Alyx's file URLs do) is looked up by that UUID.
        """
        path = ALFPath(path)
        if path.is_session_path():
            lab = path.session_parts[0]
            eid = self.path2eid(path)
            record = None if eid is None else self.get_details(eid)
            return record if record is not None and (not lab or record.get("lab") == lab) else None
        stem_end = path.stem.split(".")[-1]
        if alf.UUID_RE.match(stem_end.lower()):
            rows = self._catalog.dataset(stem_end.lower())
            return None if rows.empty else dataset_frame(rows, keep_eid=True).squeeze()
        eid = self.path2eid(path)
        if eid is None:
            return None
        rel_path = path.relative_to_session().as_posix()
        table = self.list_datasets(eid, details=True, keep_eid_index=True)   # (record2path needs (eid, id))
        match = table[table["rel_path"] == rel_path]
        return None if match.empty else match.squeeze()

    def _folder(self, eid: str) -> Path:
        """The session folder of an eid of the catalog (looked up once per catalog)."""
        folder = self._folders.get(eid)
        if folder is None:
            folder = self.eid2path(eid) or self.cache_dir / "__unknown_session__"
            self._folders[eid] = folder
        return folder

    def _session_record(self, eid: str | None) -> list[int]:
        """The record of a session of the catalog, as a list (empty without an eid or such a session)."""
        session = self._catalog.session(eid) if eid else None
        return [] if session is None else [session.record_id]

    # -- searching and listing --------------------------------------------------------------

    @_with_tables
    def search(self, details: bool = False, query_type: str | None = None, **kwargs: Any):
        """Sessions matching every term, newest first: a list of eids (UUID), and their records if asked.

        Terms: subject, lab, projects, task_protocol (partial matches, regexes), date_range, number,
        datasets (names all present), dataset_qc_lte. Unique prefixes of term names are accepted.

        Mirrors one-api's ``One.search``; the search is recorded with the sessions it found.

        Parameters
        ----------
        details : bool, optional
            Also return the sessions' records. Default False.
        query_type : {'local', 'remote'}, optional
            'remote' searches Alyx (``GET /sessions``). Default None: the client's mode.
        **kwargs
            The search terms. ``subject``, ``lab`` (``laboratory``), ``projects``, ``task_protocol``:
            text or lists of text. ``date_range``: a date, or a pair of dates (inclusive; None for an
            open end). ``number``: the session number. ``datasets``: dataset names, all of which a
            session holds. ``dataset_qc_lte``: a QC name or value: sessions with datasets at or below it.

        Returns
        -------
        eids : list of uuid.UUID
            The sessions' eids, newest first (in remote mode one-api's lazy list).
        records : list of Bunch or None
            With ``details`` only: each session's record (in remote mode its REST record, lazily);
            ``([], None)`` when none matched.

        Raises
        ------
        ValueError
            A search term is unknown or ambiguous, or ``query_type`` is unknown.
        BadInputError
            ``dataset_qc_lte`` is not a QC name or value.
        """
        if self._remote_call(query_type):
            import requests
            try:
                return self._search_remote(details, kwargs)
            except requests.ConnectionError as exc:
                self._go_offline(exc)
        started = time.perf_counter()
        terms = {autocomplete(k): v for k, v in kwargs.items()}
        with _gc_paused():
            found = self._catalog.search(
                wildcards=self.wildcards, subject=terms.get("subject"), lab=terms.get("laboratory"),
                projects=terms.get("projects"), task_protocol=terms.get("task_protocol"),
                date_range=terms.get("date_range"), number=terms.get("number"), datasets=terms.get("datasets"),
                dataset_qc_lte=alf.qc_name(terms["dataset_qc_lte"]) if terms.get("dataset_qc_lte") is not None else None,
                ids_only=not details)
            self._record_query("search", {**terms, "details": details}, started, sessions=found.records)
            eids = [uuid.UUID(e) for e in found.ids]
        if not details:
            return eids
        if not eids:
            return [], None
        records = session_frame(found.rows).reset_index(drop=True).to_dict("records", into=Bunch)
        return eids, records

    def search_terms(self, query_type: str | None = None) -> tuple[str, ...]:
        """The search terms: one-api's local ones, and in remote mode the ``/sessions`` list filters."""
        if not self._remote_call(query_type):
            return self._search_terms
        fields = self._source.alyx.rest_schemes.field_names("sessions", "list")
        return tuple(dict.fromkeys([*self._search_terms, *fields, "django"]))

    def _search_remote(self, details: bool, kwargs: dict[str, Any]):
        """``search`` through ``GET /sessions``: each page of the answer recorded and merged as it
        arrives (later pages lazily, as one-api fetches them)."""
        from one.util import LazyId

        started = time.perf_counter()
        params = remote.rest_search_params(dict(kwargs), self.search_terms("remote"))
        answer = self._source.rest("sessions", "list", **params)

        def record(page: list[dict], offset: int = 0) -> None:
            self._remote.sessions_page(params, page)
            eids = [str(r.get("id") or r["url"][-36:]) for r in page]
            records = self._catalog.sessions(ids=eids)["record_id"].tolist() if eids else []
            self._record_query("search", {**params, "details": details, "offset": offset}, started, sessions=records)

        if isinstance(answer, list):
            record(answer)
            eids = LazyId.ses2eid(answer)
        else:
            record(answer._cache[:answer.limit])
            pages = {"next": answer.limit}

            def later(page: list[dict]) -> None:
                record(page, pages["next"])
                pages["next"] += len(page)
            self._later_pages = later   # (one-api keeps callbacks as weak references)
            answer.add_callback(later)
            eids = LazyId(answer)
        if not details:
            return eids

        def with_date(records: Any) -> Any:
            for record_ in alf.ensure_list(records):
                record_["date"] = dt.datetime.fromisoformat(record_["start_time"]).date()
            return records
        return eids, (with_date(answer) if isinstance(answer, list) else LazyId(answer, func=with_date))

    def _refresh(self, eid: str | None, query_type: str | None) -> None:
        """In remote mode, read a session and its datasets from Alyx into the tables first (as
        one-api's remote ``list_datasets`` does before every list and load)."""
        if eid and self._remote_call(query_type):
            import requests
            try:
                self._remote.session(eid)
            except requests.ConnectionError as exc:
                self._go_offline(exc)
                return
            for refused in self._remote.refused:
                self._recorder.record_events([self._event(
                    "list_datasets", "refused", session_id=eid, rel_path=refused.get("data_url"),
                    detail=f"record refused: {refused['problem']}")])
                _warn(f"dataset {refused.get('id')} of session {eid} refused: its path {refused['problem']}",
                      UserWarning)

    @_with_tables
    def list_subjects(self) -> list[str]:
        """The subjects of the client's sessions, sorted."""
        return sorted(self._catalog.sessions()["subject"].dropna().unique().tolist())

    def _list(self, eid: Any, filename=None, collection=None, revision=None, qc="FAIL", ignore_qc_not_set=False,
              default_revisions_only=False, *, table: bool = False) -> tuple[str | None, list, pd.DataFrame | None]:
        """``(eid, rows, frame)``: the dataset rows of a session (or all) passing the filters, ordered by
        rel_path; with ``table`` also as a DataFrame (else None). An eid that names no session of the
        catalog gives no rows."""
        if default_revisions_only and not self._catalog.knows_default_revisions():
            raise ALFError("No default revisions specified")
        eid = (self._eid_or_none(eid) or "") if eid is not None and eid != "" else None
        rows = [] if eid == "" else self._catalog.dataset_rows(eid, qc=qc, ignore_qc_not_set=ignore_qc_not_set)
        pattern = alf.rel_path_regex(filename, collection, revision, wildcards=self.wildcards, match_revision=True)
        keep = [(bool(r.default_revision) or not default_revisions_only) and pattern.match(r.rel_path) is not None
                for r in rows]
        kept = [r for r, k in zip(rows, keep) if k]
        if not table:
            return eid or None, kept, None
        frame = pd.DataFrame([tuple(r) for r in kept], columns=DATASET_COLUMNS)
        return eid or None, kept, frame

    def _eid_or_none(self, id: Any) -> str | None:
        """The eid of an identifier, or None when it names no session of the catalog (one-api's lists
        return nothing then)."""
        try:
            return self._eid(id)
        except ValueError:
            return None

    @_with_tables
    def list_datasets(self, eid: Any = None, filename=None, collection=None, revision=None, qc="FAIL",
                      ignore_qc_not_set: bool = False, details: bool = False, query_type: str | None = None,
                      default_revisions_only: bool = False, keep_eid_index: bool = False):
        """The datasets of a session (or of every session): sorted rel_paths, or a table with ``details``.

        Mirrors one-api's ``One.list_datasets``; the list is recorded with the datasets it returned.

        Parameters
        ----------
        eid : str, uuid.UUID, pathlib.Path or dict, optional
            A session identifier. Default None: every session. One the tables do not hold lists nothing.
        filename : str, dict or list, optional
            Only the datasets whose file name matches (``*`` wildcards; a dict of ALF parts). Default None.
        collection : str, optional
            Only the datasets of this collection (``*`` wildcards). Default None.
        revision : str, optional
            Only the datasets of this revision (``*`` wildcards). Default None.
        qc : str or int, optional
            The highest QC listed, a name or a value. Default 'FAIL'.
        ignore_qc_not_set : bool, optional
            Leave out datasets whose QC is NOT_SET. Default False.
        details : bool, optional
            Return a table instead of the rel_paths. Default False.
        query_type : {'local', 'remote'}, optional
            'remote' reads the session's datasets from Alyx first. Default None: the client's mode.
        default_revisions_only : bool, optional
            Only the datasets flagged as default revision (ignored in remote mode, as by one-api).
            Default False.
        keep_eid_index : bool, optional
            With ``details``, index the table by ``(eid, id)``. Default False (for every session it always is).

        Returns
        -------
        list of str or pandas.DataFrame
            The rel_paths (sorted for one session; each once for every session), or with
            ``details`` the datasets table as one-api's ``_cache['datasets']`` holds it.

        Raises
        ------
        ALFError
            ``default_revisions_only`` and the tables flag no default revision.
        BadInputError
            ``qc`` is not a QC name or value.
        ValueError
            ``query_type`` is unknown.
        """
        started = time.perf_counter()
        if self._remote_call(query_type):
            if eid is None or eid == "":
                _warn("Unable to list all remote datasets", UserWarning)
            else:
                self._refresh(self._eid_or_none(eid), query_type)
            default_revisions_only = False   # (one-api ignores it for a remote list)
        with _gc_paused():
            eid, rows, frame = self._list(eid, filename, collection, revision, qc, ignore_qc_not_set,
                                          default_revisions_only, table=details)
            self._record_query("list_datasets", {"eid": eid, "filename": filename, "collection": collection,
                                                 "revision": revision, "qc": qc, "details": details},
                               started, sessions=self._session_record(eid), datasets=rows)
        if details:
            return dataset_frame(frame, keep_eid=keep_eid_index or eid is None)
        paths = [r.rel_path for r in rows]
        return sorted(paths) if eid else list(dict.fromkeys(paths))

    @_with_tables
    def list_collections(self, eid: Any = None, filename=None, collection=None, revision=None,
                         details: bool = False, query_type: str | None = None):
        """The collections of a session's datasets (a dict of tables with ``details``)."""
        return self._list_by("collection", eid, filename, collection, revision, details, query_type)

    @_with_tables
    def list_revisions(self, eid: Any = None, filename=None, collection=None, revision=None,
                       details: bool = False, query_type: str | None = None):
        """The revisions of a session's datasets ('' for unrevised; a dict of tables with ``details``)."""
        return self._list_by("revision", eid, filename, collection, revision, details, query_type)

    def _list_by(self, column: str, eid: Any, filename, collection, revision, details: bool,
                 query_type: str | None = None):
        """``list_collections``/``list_revisions``: the distinct values of ``column``, recorded."""
        started = time.perf_counter()
        if eid is not None and eid != "":
            self._refresh(self._eid_or_none(eid), query_type)
        with _gc_paused():
            eid, rows, frame = self._list(eid, filename, collection, revision, table=details)
            self._record_query(f"list_{column}s", {"eid": eid, "filename": filename, "collection": collection,
                                                   "revision": revision}, started,
                               sessions=self._session_record(eid), datasets=rows)
        if details:
            return {value: dataset_frame(group, keep_eid=eid is None) for value, group in frame.groupby(column)}
        return list(dict.fromkeys(getattr(r, column) for r in rows))

    @_with_tables
    def get_details(self, eid: Any, full: bool = False, query_type: str | None = None):
        """A session's record (a Series named with its eid); with ``full``, its datasets joined with it.

        In remote mode, as one-api: the session's REST record (a dict; a list for a list of ids),
        with ``full`` the whole ``/sessions/<eid>`` record, else the fields of a search result and
        ``local_path``.
        """
        if self._remote_call(query_type):
            return self._details_remote(eid, full)
        eid = self._eid(eid)
        rows = self._catalog.sessions(ids=[eid])
        if rows.empty:
            raise ALFObjectNotFound(eid)
        record = session_frame(rows).iloc[0]
        if not full:
            return record
        table = dataset_frame(self._catalog.datasets(eid, qc="CRITICAL"), keep_eid=True).reset_index()
        for key, value in record.items():
            table[key] = value
        return table.set_index(["eid", "id"])

    def _details_remote(self, eid: Any, full: bool) -> Any:
        from one.converters import session_record2path

        eids = [self._eid(e) for e in eid] if isinstance(eid, (list, tuple)) else [self._eid(eid)]
        unique = list(dict.fromkeys(eids))
        found: dict[str, Any] = {}
        if full:
            found = {e: self._remote.session(e) for e in unique}
        else:
            for start in range(0, len(unique), 50):   # (as one-api: 50 ids per request)
                batch = tuple(unique[start:start + 50])
                page = list(self._source.rest("sessions", "list", django=f"pk__in,{batch}"))
                self._remote.sessions_page({"django": f"pk__in,{batch}"}, page)
                found.update({str(d["id"]): d for d in page})
        missing = [e for e in eids if found.get(e) is None]
        if missing:
            raise ALFObjectNotFound(f"session {missing[0]} not found on {self._source.base_url}")

        def summary(record: dict) -> dict:
            keep = ("subject", "start_time", "number", "lab", "projects", "url", "task_protocol")
            out = {k: v for k, v in record.items() if k in keep}
            out["projects"] = ",".join(out.get("projects") or [])
            out["date"] = dt.datetime.fromisoformat(out["start_time"]).date()
            out["local_path"] = session_record2path(out, self.cache_dir)
            return out
        details = [dict(found[e]) if full else summary(found[e]) for e in eids]
        return details if isinstance(eid, (list, tuple)) else details[0]

    # -- loading ----------------------------------------------------------------------------

    def _requested_revision(self, revision: str | None) -> str | None:
        return revision if revision is not None else settings.revision_cutoff()

    def _select(self, eid: str, filename: Any, collection: Any, revision: str | None, *,
                unique: bool, strict: bool = True) -> list:
        """Rows of ``eid`` matching the name filters, then the revision ONE would load (SQL).

        Rows are plain result rows (attribute access), not DataFrames: this is every load's hot path.
        """
        pattern = alf.rel_path_regex(filename, collection, wildcards=self.wildcards)

        def one_collection(rows: list) -> None:
            collections = {r.collection for r in rows}
            if unique and len(collections) > 1:
                raise ALFMultipleCollectionsFound('"' + '", "'.join(sorted(collections)) + '"')

        return self._catalog.pick(eid, lambda r: pattern.match(r.rel_path) is not None, revision, strict=strict,
                                  check=one_collection)

    def _fetch(self, method: str, rows: list, *, check_hash: bool, download_only: bool,
               requested_revision: str | None) -> list[ALFPath | None]:
        """Ask the source for each chosen file, record one event per dataset (one transaction),
        return the paths (None for a file that cannot be loaded)."""
        source = self._source.local if self.offline and isinstance(self._source, AlyxSource) else self._source
        fetched = source.fetch(rows, self._folder, self._catalog.session, check_hash=check_hash,
                               uuid_names=bool(self.uuid_filenames))
        events = [self._download_event(row, got.download) for row, got in zip(rows, fetched) if got.download]
        for row, got in zip(rows, fetched):
            outcome = ("download_only" if download_only else "loaded") if got.ok else got.status
            events.append(self._event(method, outcome, row, requested_revision=requested_revision, path=got.path))
            if got.status.endswith("mismatch"):
                _warn(f"{got.status.replace('_', ' ')} on dataset {row.rel_path} ({got.path}): not loaded")
            elif got.download is not None and got.status == "download_failed":
                _warn(f"dataset {row.rel_path} could not be downloaded: {got.download.detail}")
        if events:
            self._recorder.record_events(events)
        return [ALFPath(got.path) if got.ok else None for got in fetched]

    def _download_event(self, row: Any, done: Any) -> dict[str, Any]:
        """A download as an access event: its outcome, bytes, seconds and URL."""
        detail = {"url": done.url, "seconds": round(done.seconds, 6), **({"error": done.detail} if done.detail else {})}
        return self._recorder.event("download", "downloaded" if done.status == "ok" else done.status, row,
                                    listed=False, detail=json.dumps(detail), size=done.bytes)

    def _refuse(self, method: str, outcome: str, eid: str | None, request: str, revision: str | None,
                error: ALFError) -> None:
        """Record a request that matched nothing loadable, then raise ``error``."""
        self._recorder.record_events([self._event(method, outcome, session_id=eid, rel_path=request,
                                                  requested_revision=revision, detail=str(error))])
        raise error

    @_with_tables
    def load_dataset(self, eid: Any, dataset: Any, collection: str | None = None, revision: str | None = None,
                     query_type: str | None = None, download_only: bool = False, check_hash: bool = True) -> Any:
        """Load one dataset of a session: its content, or its path with ``download_only``.

        Mirrors one-api's ``One.load_dataset``. Every attempt is recorded (an access event with its
        outcome), also when it raises.

        Parameters
        ----------
        eid : str, uuid.UUID, pathlib.Path or dict
            A session identifier (UUID, ref, path, URL).
        dataset : str or dict
            A dataset name ('trials.intervals', '.*' added with ``wildcards``; or with its extension),
            a dict of ALF parts, or a rel_path ('alf/trials.intervals.npy').
        collection : str, optional
            The dataset's collection (not with a rel_path). Default None: any, if only one holds it.
        revision : str, optional
            The revision cutoff: the greatest revision on or before it is loaded (not with a
            rel_path). Default None: ``$ONE_REVISION_LAST_BEFORE``, else the revision flagged
            default (or the greatest).
        query_type : {'local', 'remote'}, optional
            'remote' reads the session's datasets from Alyx first. Default None: the client's mode.
        download_only : bool, optional
            Return the file's path instead of reading it (in remote mode, downloading it). Default False.
        check_hash : bool, optional
            Check the file's md5 against the tables (its size is always checked). Default True.

        Returns
        -------
        object or one.alf.path.ALFPath
            The content as one-api reads it (``one.alf.io.load_file_content``: e.g. a numpy array,
            a DataFrame), or with ``download_only`` the file's path.

        Raises
        ------
        ALFObjectNotFound
            No dataset matches, or its file is missing, differs from the tables, or failed to download.
        ALFMultipleObjectsFound
            Several datasets match.
        ALFMultipleCollectionsFound
            Datasets in several collections match: give ``collection``.
        ALFMultipleRevisionsFound
            Several revisions of the dataset are flagged default.
        ValueError
            ``eid`` names no session; ``collection`` or ``revision`` is given with a rel_path;
            ``query_type`` is unknown.
        """
        eid = self._eid(eid)
        self._refresh(eid, query_type)
        name = dataset
        if self.wildcards and isinstance(name, str) and len(name.split(".")) == 2:
            name += ".*"
        unique = ("/" if isinstance(name, str) else "collection") not in name
        if not unique and isinstance(name, str) and "*" in name:
            _warn("Wildcards should not be used with relative path as input.", UserWarning)
        if not unique and (collection is not None or revision is not None):
            raise ValueError("collection and revision kwargs must be None when dataset is a relative path")
        revision = self._requested_revision(revision) if unique else None  # a rel_path names one file
        try:
            rows = self._select(eid, name, collection, revision, unique=unique)
        except ALFError as err:
            self._refuse("load_dataset", "ambiguous", eid, str(dataset), revision, err)
        if len(rows) == 0:
            self._refuse("load_dataset", "not_found", eid, str(dataset), revision,
                         ALFObjectNotFound(f'Dataset "{dataset}" not found'))
        if len(rows) > 1:
            self._refuse("load_dataset", "ambiguous", eid, str(dataset), revision,
                         ALFMultipleObjectsFound('"' + '", "'.join(r.rel_path for r in rows) + '"'))
        (path,) = self._fetch("load_dataset", rows, check_hash=check_hash, download_only=download_only,
                              requested_revision=revision)
        if path is None:
            raise ALFObjectNotFound("Dataset not found")
        return path if download_only else read_file(path)

    @_with_tables
    def load_object(self, eid: Any, obj: str, collection: str | None = None, revision: str | None = None,
                    query_type: str | None = None, download_only: bool = False, check_hash: bool = True,
                    **kwargs: Any):
        """Load every attribute of an ALF object: an ``AlfBunch``, or the list of paths with ``download_only``.

        Mirrors one-api's ``One.load_object``. Every attempt is recorded, also when it raises.

        Parameters
        ----------
        eid : str, uuid.UUID, pathlib.Path or dict
            A session identifier (UUID, ref, path, URL).
        obj : str
            The ALF object (e.g. 'trials'; ``*`` wildcards).
        collection : str, optional
            The object's collection. Default None: any, if only one holds it.
        revision : str, optional
            The revision cutoff. Default None: ``$ONE_REVISION_LAST_BEFORE``, else the default revisions.
        query_type : {'local', 'remote'}, optional
            'remote' reads the session's datasets from Alyx first. Default None: the client's mode.
        download_only : bool, optional
            Return the files' paths instead of reading them. Default False.
        check_hash : bool, optional
            Check each file's md5 against the tables (sizes are always checked). Default True.
        **kwargs
            Other ALF parts to filter the files by (``attribute``, ``timescale``, ``extra``,
            ``namespace``), also given to ``one.alf.io.load_object``.

        Returns
        -------
        one.alf.io.AlfBunch or list of one.alf.path.ALFPath
            The object's attributes, or with ``download_only`` the paths of its files present.

        Raises
        ------
        ALFObjectNotFound
            No dataset of the object matches, or none of its files is on disk.
        ALFMultipleObjectsFound
            The name matches several objects.
        ALFMultipleCollectionsFound
            The object is in several collections: give ``collection``.
        ValueError
            ``eid`` names no session, or ``query_type`` is unknown.
        """
        eid = self._eid(eid)
        self._refresh(eid, query_type)
        revision = self._requested_revision(revision)
        rows = self._select(eid, {"object": obj, **kwargs}, collection, revision, unique=False, strict=False)
        if len(rows) == 0:
            self._refuse("load_object", "not_found", eid, obj, revision, ALFObjectNotFound(obj))
        objects = {_object_of(r.rel_path) for r in rows}
        if len(objects) > 1:
            self._refuse("load_object", "ambiguous", eid, obj, revision, ALFMultipleObjectsFound(*sorted(objects)))
        collections = {r.collection for r in rows}
        if len(collections) > 1:
            self._refuse("load_object", "ambiguous", eid, obj, revision, ALFMultipleCollectionsFound(*sorted(collections)))
        paths = self._fetch("load_object", rows, check_hash=check_hash, download_only=download_only,
                            requested_revision=revision)
        present = [p for p in paths if p is not None]
        if not present:
            raise ALFObjectNotFound(f'ALF object "{obj}" not found on disk')
        return present if download_only else load_object(present, wildcards=self.wildcards, **kwargs)

    @_with_tables
    def load_datasets(self, eid: Any, datasets: Any, collections: Any = None, revisions: Any = None,
                      query_type: str | None = None, assert_present: bool = True, download_only: bool = False,
                      check_hash: bool = True) -> tuple[list | None, Any]:
        """Load several datasets of a session: ``(contents or paths, records)``, None for the absent ones.

        Mirrors one-api's ``One.load_datasets``. Every attempt is recorded, also when it raises.

        Parameters
        ----------
        eid : str, uuid.UUID, pathlib.Path or dict
            A session identifier (UUID, ref, path, URL).
        datasets : iterable of str or of dict, or pandas.DataFrame
            Dataset names, dicts of ALF parts, rel_paths, or a table with a ``rel_path`` column (e.g.
            from ``list_datasets(details=True)``). Not a single string.
        collections : str or list of str, optional
            One collection for every dataset, or one each. Default None (not with rel_paths).
        revisions : str or list of str, optional
            One revision cutoff for every dataset, or one each. Default None:
            ``$ONE_REVISION_LAST_BEFORE``, else the default revisions (not with rel_paths).
        query_type : {'local', 'remote'}, optional
            'remote' reads the session's datasets from Alyx first. Default None: the client's mode.
        assert_present : bool, optional
            Raise when a dataset is not in the tables or its file is absent. Default True. With
            False, log a warning and give None for it.
        download_only : bool, optional
            Return the files' paths instead of reading them. Default False.
        check_hash : bool, optional
            Check each file's md5 against the tables (sizes are always checked). Default True.

        Returns
        -------
        data : list or None
            Each dataset's content (or path with ``download_only``), in the order asked; None for
            one that is absent. None when no dataset was asked, or the session has none.
        records : list of Bunch, or pandas.DataFrame
            Each dataset's record (with its revision), None for one not in the tables; an empty
            table when ``data`` is None.

        Raises
        ------
        ALFObjectNotFound
            With ``assert_present``: the session has no datasets, or a dataset is not in the tables
            or was not found on disk.
        ALFMultipleObjectsFound
            A name matches several datasets.
        ALFMultipleCollectionsFound
            A name matches datasets in several collections.
        ALFMultipleRevisionsFound
            Several revisions of a dataset are flagged default.
        TypeError
            ``datasets`` is a string.
        ValueError
            ``eid`` names no session; ``datasets`` mixes names and dicts; the collections or
            revisions do not match the datasets in number; collections, revisions or
            ``$ONE_REVISION_LAST_BEFORE`` are given with rel_paths; ``query_type`` is unknown.
        """
        if isinstance(datasets, str):
            raise TypeError("`datasets` must be a non-string iterable")
        eid = self._eid(eid)
        self._refresh(eid, query_type)
        is_frame = isinstance(datasets, pd.DataFrame)
        datasets = datasets["rel_path"].tolist() if is_frame else list(datasets)
        rel_paths = is_frame or any(isinstance(d, str) and "/" in d for d in datasets)
        if rel_paths:
            if (collections, revisions) != (None, None) or settings.revision_cutoff():
                raise ValueError("collection and revision kwargs must be None when dataset is a relative path "
                                 "(ONE_REVISION_LAST_BEFORE env var must also be unset)")
            parts = [rel_path_parts(d, as_dict=True) for d in datasets]
            collections = [p.pop("collection") or "" for p in parts]
            revisions = [p.pop("revision") or "" for p in parts]
            datasets = parts
        if not self._catalog.dataset_rows(eid):
            message = f"No datasets found for session {eid}"
            if assert_present:
                raise ALFObjectNotFound(message)
            _log.warning(message)
            return None, dataset_frame(pd.DataFrame(columns=DATASET_COLUMNS), keep_eid=True)
        if not datasets:
            return None, dataset_frame(pd.DataFrame(columns=DATASET_COLUMNS), keep_eid=True)
        kinds = [(isinstance(d, str), isinstance(d, dict)) for d in datasets]
        if not all(map(any, kinds)) or not any(map(all, zip(*kinds))):
            raise ValueError("`datasets` must be iterable of only str or only dicts")
        if self.wildcards and kinds[0][0]:
            datasets = [d + (".*" if len(d.split(".")) == 2 else "") for d in datasets]
        n = len(datasets)
        collections, revisions = (_specifiers(spec, n) for spec in (collections, revisions))
        chosen, missing = [], []
        for spec, coll, rev in zip(datasets, collections, revisions):
            rev = rev if rel_paths else self._requested_revision(rev)
            rows = self._select_exact(eid, spec, coll, rev) if rel_paths else self._select(eid, spec, coll, rev, unique=True)
            if len(rows) > 1:
                raise ALFMultipleObjectsFound('"' + '", "'.join(r.rel_path for r in rows) + '"')
            chosen.append(rows)
            if len(rows) == 0:
                missing.append(self._event("load_datasets", "not_found", session_id=eid,
                                           rel_path=_request_name(spec, coll, rev), requested_revision=rev))
        if missing:
            self._recorder.record_events(missing)
            message = "The following datasets are not in the cache: " + ", ".join(e["rel_path"] for e in missing)
            if assert_present:
                raise ALFObjectNotFound(message)
            _log.warning(message)
        found = [row for rows in chosen for row in rows]
        paths = iter(self._fetch("load_datasets", found, check_hash=check_hash, download_only=download_only,
                                 requested_revision=None))
        frame = pd.DataFrame([tuple(r) for r in found], columns=DATASET_COLUMNS)
        records = iter(dataset_frame(frame, keep_eid=True).reset_index()
                       .assign(revision=frame["revision"].to_numpy())  # ONE's records carry the revision
                       .to_dict("records", into=Bunch))
        out_paths, out_records = [], []
        for rows in chosen:
            out_paths.append(next(paths) if rows else None)
            out_records.append(next(records) if rows else None)
        absent = [r["rel_path"] for p, r in zip(out_paths, out_records) if r is not None and p is None]
        if absent:
            message = "The following datasets were not downloaded: " + ", ".join(absent)
            if assert_present:
                raise ALFObjectNotFound(message)
            _log.warning(message)
        if download_only:
            return out_paths, out_records
        return [read_file(p) if p is not None else None for p in out_paths], out_records

    def _select_exact(self, eid: str, spec: dict, collection: str, revision: str) -> list:
        """The rows of a relative path (exact collection and revision), as one-api selects them."""
        pattern = alf.rel_path_regex(spec, collection, revision, wildcards=self.wildcards, match_revision=True)
        rows = [r for r in self._catalog.dataset_rows(eid) if pattern.match(r.rel_path)]
        if len({r.collection for r in rows}) > 1:
            raise ALFMultipleCollectionsFound('"' + '", "'.join(sorted({r.collection for r in rows})) + '"')
        return rows

    @_with_tables
    def load_collection(self, eid: Any, collection: str, object: str | None = None, revision: str | None = None,
                        query_type: str | None = None, download_only: bool = False, check_hash: bool = True,
                        **kwargs: Any):
        """Load every object of a collection: a Bunch of ``AlfBunch``es, or the paths with ``download_only``.

        Unlike one-api 3.6.1, ``revision`` selects a revision (ONE passes it as the collection filter).

        Mirrors one-api's ``One.load_collection``. Every attempt is recorded, also when it raises.

        Parameters
        ----------
        eid : str, uuid.UUID, pathlib.Path or dict
            A session identifier (UUID, ref, path, URL).
        collection : str
            The collection (e.g. 'alf/probe00').
        object : str, optional
            Only this ALF object (``*`` wildcards). Default None: every object.
        revision : str, optional
            The revision cutoff. Default None: ``$ONE_REVISION_LAST_BEFORE``, else the default revisions.
        query_type : {'local', 'remote'}, optional
            'remote' reads the session's datasets from Alyx first. Default None: the client's mode.
        download_only : bool, optional
            Return the files' paths instead of reading them. Default False.
        check_hash : bool, optional
            Check each file's md5 against the tables (sizes are always checked). Default True.
        **kwargs
            Other ALF parts to filter the files by (``attribute``, ``timescale``...), also given to
            ``one.alf.io.load_object``.

        Returns
        -------
        Bunch or tuple of one.alf.path.ALFPath
            Each object's ``AlfBunch`` by object name, or with ``download_only`` the paths of the files present.

        Raises
        ------
        ALFError
            The session has no dataset in ``collection``.
        ALFObjectNotFound
            No dataset of the collection matches, or none of its files is on disk.
        ValueError
            ``eid`` names no session, or ``query_type`` is unknown.
        """
        eid = self._eid(eid)
        self._refresh(eid, query_type)
        revision = self._requested_revision(revision)
        if not self._list(eid, collection=collection)[1]:
            self._refuse("load_collection", "not_found", eid, f"{collection}/{object or '*'}", revision,
                         ALFError(f"{collection} not found for session {eid}"))
        rows = self._select(eid, {"object": object, **kwargs}, collection, revision, unique=False, strict=False)
        if len(rows) == 0:
            self._refuse("load_collection", "not_found", eid, f"{collection}/{object or '*'}", revision,
                         ALFObjectNotFound(object or ""))
        paths = self._fetch("load_collection", rows, check_hash=check_hash, download_only=download_only,
                            requested_revision=revision)
        present = [(p, _object_of(r.rel_path)) for p, r in zip(paths, rows) if p is not None]
        if not present:
            raise ALFObjectNotFound(f'ALF collection "{collection}" not found on disk')
        if download_only:
            return tuple(p for p, _ in present)
        by_object: dict[str, list[Path]] = {}
        for path, obj in present:
            by_object.setdefault(obj, []).append(path)
        return Bunch({obj: load_object(ps, wildcards=self.wildcards, **kwargs) for obj, ps in by_object.items()})

    @_with_tables
    def load_dataset_from_id(self, dset_id: Any, download_only: bool = False, details: bool = False,
                             check_hash: bool = True) -> Any:
        """Load a dataset by its UUID (any QC); with ``details`` also return its record.

        Mirrors one-api's ``One.load_dataset_from_id``. Every attempt is recorded, also when it raises.

        Parameters
        ----------
        dset_id : str, uuid.UUID or array of two int64
            The dataset's UUID, its text, or the pair of int64 of legacy tables.
        download_only : bool, optional
            Return the file's path instead of reading it. Default False.
        details : bool, optional
            Also return the dataset's record. Default False.
        check_hash : bool, optional
            Check the file's md5 against the tables (its size is always checked). Default True.

        Returns
        -------
        object or one.alf.path.ALFPath, or tuple
            The content (or path with ``download_only``); with ``details``, ``(content or path,
            record)``, the record a ``pandas.Series``.

        Raises
        ------
        ALFObjectNotFound
            No dataset has this UUID, or its file is missing or differs from the tables.
        ALFMultipleObjectsFound
            Several rows of the tables have this UUID.
        BadInputError
            ``dset_id`` is text that is not a UUID.
        """
        did = _dataset_uuid(dset_id)
        rows = self._catalog.dataset(did)
        if len(rows) > 1:
            self._refuse("load_dataset_from_id", "ambiguous", None, did, None,
                         ALFMultipleObjectsFound("Duplicate dataset IDs"))
        if len(rows) == 0:
            self._refuse("load_dataset_from_id", "not_found", None, did, None, ALFObjectNotFound("Dataset not found"))
        (path,) = self._fetch("load_dataset_from_id", list(rows.itertuples(index=False)), check_hash=check_hash,
                              download_only=download_only, requested_revision=None)
        if path is None:
            raise ALFObjectNotFound("Dataset not found")
        output = path if download_only else read_file(path)
        if details:
            return output, dataset_frame(rows, keep_eid=True).iloc[0]
        return output


One = ONE


def _object_of(rel_path: str) -> str:
    """The ALF object of a dataset's path ('' when it has none)."""
    return rel_path_parts(rel_path, assert_valid=False)[3] or ""


def _specifiers(spec: Any, n: int) -> list:
    """Collections or revisions of ``load_datasets``: one value for every dataset, or one each."""
    if not spec or isinstance(spec, str):
        return [spec] * n
    if len(spec) != n:
        raise ValueError("Collection and revision specifiers must match number of datasets")
    return list(spec)


def _request_name(spec: Any, collection: str | None, revision: str | None) -> str:
    """How a dataset asked for by ``load_datasets`` is named in messages and events."""
    from one.alf.spec import to_alf

    name = spec if isinstance(spec, str) else to_alf(**spec)
    return "/".join(filter(None, [collection, f"#{revision}#" if revision else None, name]))


def _dataset_uuid(value: Any) -> str:
    """A dataset id as lowercase text: a UUID, its text, or the int64 pair of legacy tables (``np2uuid``)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return alf.check_uuid(value, "dataset id")
    from iblutil.io.parquet import np2uuid

    (converted,) = np2uuid(np.asarray(value))
    return str(converted)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees everything) while a
    search or list fetches and records its rows: tens of thousands of short-lived, acyclic row
    objects otherwise trigger full collections of the caller's whole heap (50 ms, or 250 ms with
    one-api's tables loaded, for one 50,000-session search)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Edits:
    """one-api's tables handed out as ``ONE._cache``, and whether the user changed them since."""

    def __init__(self, tables: Bunch):
        self.tables = tables
        self.taken()

    def _fingerprint(self) -> tuple:
        out = []
        for name in ("sessions", "datasets"):
            frame = self.tables.get(name)
            if frame is None:
                out.append(None)
                continue
            out.append((id(frame), tuple(frame.columns), tuple(map(str, frame.dtypes)), len(frame),
                        int(pd.util.hash_pandas_object(frame, index=True).sum()) if len(frame) else 0))
        return tuple(out)

    def taken(self) -> None:
        self._seen = self._fingerprint()

    def changed(self) -> bool:
        return self._fingerprint() != self._seen
