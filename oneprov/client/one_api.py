"""Record an unmodified one-api session: ``handle = oneprov.record(one)``.

Labs that keep using one-api itself (ibllib's loaders take a one-api instance) get the same durable
provenance without changing client: every search and list result, every load attempt and every
REST answer of that instance is recorded into the store, in a run with the same semantics (scopes,
labels, exit hooks, exports) as oneprov's own client.

One-api is observed where it funnels its work, on the instance only (the class is not touched):

- its public ``search``, ``list_*`` and ``load_*`` methods: what was asked, what came back, and
  the outcome of each load (an exception is recorded, then raised on unchanged);
- ``_check_filesystem(datasets, ...)``: the dataset rows it chose for a load, and the file of
  each (None: missing). The rows are recorded in the state one-api held them, so the record of
  each load is the row one-api actually used;
- ``alyx.rest`` (remote mode): each REST answer to a sessions list or read, recorded as a query.

These are one-api internals: :func:`record` checks them first and refuses, naming the one-api
version, when they are not what this module knows (one-api 3.4 to 3.6), rather than recording
nothing. A failure inside the recorder never breaks the analysis: it warns once, and
:attr:`Recording.unrecorded` counts what could not be recorded.

>>> import tempfile
>>> from one.api import One
>>> from oneprov.synthetic import make_repository
>>> repo = make_repository(tempfile.mkdtemp())
>>> one = One(cache_dir=repo.root, mode="local")
>>> handle = record(one, db=repo.root / "provenance.sqlite")
>>> _ = one.load_object(repo.eid, "trials")
>>> handle.stop()
>>> int(handle.store.sql("SELECT count(*) AS n FROM access_events WHERE outcome = 'loaded'")["n"].iloc[0]) > 0
True
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import threading
import time
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pandas as pd

from .. import settings
from ..errors import OneprovError
from ..store import Store, open_store
from ..store.catalog import Catalog
from .recorder import Recorder

#: The public methods recorded: (name, kind).
_LOADS = ("load_dataset", "load_object", "load_datasets", "load_collection", "load_dataset_from_id")
_LISTS = ("list_datasets", "list_collections", "list_revisions")
#: What this module needs of one-api, checked by :func:`check_one_api`: a method and the parameters it must take.
_FUNNELS = {"_check_filesystem": ("datasets",), "search": ("details",), "load_dataset": ("eid", "dataset"),
            "load_object": ("eid", "obj"), "load_datasets": ("eid", "datasets"), "list_datasets": ("eid",)}
_recordings: "weakref.WeakKeyDictionary[Any, Recording]" = weakref.WeakKeyDictionary()


class UnsupportedOneApi(OneprovError, RuntimeError):
    """The one-api instance does not funnel its work where this version of oneprov observes it."""


def check_one_api(one: Any) -> None:
    """Refuse an instance whose internals are not those :func:`record` observes (see the module)."""
    import one as one_package

    for name, parameters in _FUNNELS.items():
        method = getattr(type(one), name, None)
        if method is None:
            raise UnsupportedOneApi(f"one-api {one_package.__version__}: {type(one).__name__}.{name} is missing; "
                                    "oneprov.record supports one-api 3.4 to 3.6")
        found = inspect.signature(inspect.unwrap(method)).parameters
        if any(p not in found for p in parameters):
            raise UnsupportedOneApi(f"one-api {one_package.__version__}: {type(one).__name__}.{name} no longer takes "
                                    f"{', '.join(parameters)}; oneprov.record supports one-api 3.4 to 3.6")
    if not hasattr(one, "_cache") or "datasets" not in one._cache:
        raise UnsupportedOneApi("this one-api instance has no _cache tables: oneprov.record cannot see its rows")


def record(one: Any, db: Any = None, project: str | None = None, label: str | None = None) -> "Recording":
    """Record every search, list and load of the one-api instance ``one`` (``One`` or ``OneAlyx``)
    into the store ``db`` (default ``$ONEPROV_DB``, else ``<cache_dir>/provenance.sqlite``), as a run
    of ``project`` named ``label``. Recording an instance that is being recorded returns its handle.

    The instance's cache tables are recorded at once (as one query), and the run starts then.

    Parameters
    ----------
    one : one.api.One or one.api.OneAlyx
        The one-api instance (one-api 3.4 to 3.6). Only this instance is changed, not its class.
    db : str, os.PathLike or sqlalchemy.engine.URL, optional
        The provenance database (see :func:`oneprov.open_store`). Default None: ``$ONEPROV_DB``,
        else ``<cache_dir>/provenance.sqlite`` of the instance.
    project : str, optional
        The run's project. Default None: ``$ONEPROV_PROJECT``, else "default".
    label : str, optional
        The run's label. Default None.

    Returns
    -------
    Recording
        The handle: its run, scopes, and a count of what could not be recorded. For an instance
        already being recorded, that recording (``db``, ``project`` and ``label`` are then ignored).

    Raises
    ------
    UnsupportedOneApi
        The instance's internals are not those this module observes (another one-api version), or
        it has no cache tables. A :class:`~oneprov.OneprovError` and a ``RuntimeError``.
    BadInputError
        ``project`` is blank.
    SchemaVersionError
        The database's schema is newer than this oneprov knows.
    DatabaseError
        The database cannot be opened or created.
    """
    existing = _recordings.get(one)
    if existing is not None and not existing.stopped:
        return existing
    check_one_api(one)
    settings.project(project)
    cache_dir = Path(one.cache_dir)
    store = open_store(db or settings.database() or cache_dir / "provenance.sqlite")
    handle = Recording(one, store, project, label)
    _recordings[one] = handle
    return handle


class Recording:
    """The recording of one one-api instance: its run, scopes, and what could not be recorded.

    Made by :func:`record`, which checks the instance first. Making one records the instance's
    tables and sets recording wrappers of its search, list and load methods (and of the internals
    they funnel through) on the instance.

    Parameters
    ----------
    one : one.api.One or one.api.OneAlyx
        The one-api instance.
    store : Store
        The store to record into.
    project : str or None
        The run's project (None: ``$ONEPROV_PROJECT``, else "default").
    label : str or None
        The run's label.

    Attributes
    ----------
    one : one.api.One or one.api.OneAlyx
        The instance recorded.
    store : Store
        The store recorded into.
    base_url : str or None
        The Alyx base URL of a remote instance; None in local mode.
    unrecorded : int
        How many calls could not be recorded (the analysis went on; a warning was given once).
    stopped : bool
        Whether :meth:`stop` was called.
    """

    def __init__(self, one: Any, store: Store, project: str | None, label: str | None):
        self.one = one
        self.store = store
        web = getattr(one, "_web_client", None)
        self.base_url = getattr(web, "base_url", None)
        self.recorder = Recorder(store, project, label, cache_dir=Path(one.cache_dir), base_url=self.base_url)
        self.unrecorded = 0            # calls whose recording failed (the analysis went on)
        self.stopped = False
        self._warned = False
        self._lock = threading.RLock()
        self._local = threading.local()   # the public call under way, per thread
        self._source = f"one-api tables of {Path(one.cache_dir)}"
        self._originals: dict[str, Any] = {}
        self._tables = self._guard(self._ingest_tables, default=None)()
        self.recorder.use_tables(self._tables)
        self._install()

    # -- the run ------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The id of the recording's run, once it started (else None)."""
        return self.recorder.run_id

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator["Recording"]:
        """Record every search and load inside the block under a scope name (e.g. a figure).

        Parameters
        ----------
        name : str
            The scope's name (e.g. "figure3"); scopes nest, the innermost is recorded.

        Yields
        ------
        Recording
            This recording.
        """
        with self.recorder.scope(name):
            yield self

    def stop(self, error: BaseException | None = None) -> None:
        """Stop recording (the instance's methods are restored) and close the run.

        A second call does nothing. A run still open at exit is closed then (see
        :mod:`oneprov.client.recorder`).

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
        if self.stopped:
            return
        for name, original in self._originals.items():
            target = self.one.alyx if name == "alyx.rest" else self.one
            attr = "rest" if name == "alyx.rest" else name
            if original is None:
                with contextlib.suppress(AttributeError):
                    delattr(target, attr)
            else:
                setattr(target, attr, original)
        self.stopped = True
        self.recorder.close(error)

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "recording"
        return f"<oneprov recording of {type(self.one).__name__} ({state}; run {self.run_id}; {self.unrecorded} unrecorded)>"

    # -- failures never reach the analysis ----------------------------------------------------

    def _guard(self, fn: Callable, default: Any = None) -> Callable:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:   # (the recorder's own failure: counted, warned once, never raised)
                with self._lock:
                    self.unrecorded += 1
                    first = not self._warned
                    self._warned = True
                if first:
                    warnings.warn(f"oneprov could not record a call of this one-api session ({type(exc).__name__}: "
                                  f"{exc}); the analysis goes on, and the handle counts what was not recorded",
                                  RuntimeWarning, stacklevel=3)
                return default
        return guarded

    # -- hooks --------------------------------------------------------------------------------

    def _install(self) -> None:
        one = self.one
        for name in ("search", *_LISTS, *_LOADS):
            if hasattr(one, name):
                self._patch(one, name, self._wrap_call(name, getattr(one, name)))
        self._patch(one, "_check_filesystem", self._wrap_check(one._check_filesystem))
        web = getattr(one, "_web_client", None)
        if web is not None:
            self._originals["alyx.rest"] = web.__dict__.get("rest")
            web.rest = self._wrap_rest(web.rest)

    def _patch(self, target: Any, name: str, wrapper: Callable) -> None:
        self._originals[name] = target.__dict__.get(name)
        setattr(target, name, wrapper)

    def _wrap_call(self, name: str, method: Callable) -> Callable:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            outer = getattr(self._local, "call", None)
            if outer is not None or self.stopped:   # (a call inside a recorded call: recorded by the outer)
                return method(*args, **kwargs)
            state = SimpleNamespace(name=name, args=args, kwargs=kwargs, chosen=[], started=time.perf_counter(),
                                    cutoff=_cutoff())
            self._local.call = state
            try:
                result = method(*args, **kwargs)
            except BaseException as exc:
                self._guard(self._after, default=None)(state, None, exc)
                raise
            finally:
                self._local.call = None
            self._guard(self._after, default=None)(state, result, None)
            return result
        return call

    def _wrap_check(self, method: Callable) -> Callable:
        @functools.wraps(method)
        def check(datasets: Any, *args: Any, **kwargs: Any) -> Any:
            state = getattr(self._local, "call", None)
            try:
                files = method(datasets, *args, **kwargs)
            except BaseException:   # (a download failed: the rows it chose were not loaded)
                if state is not None:
                    self._guard(lambda: state.chosen.append((_frame(datasets), None)))()
                raise
            if state is not None:
                self._guard(lambda: state.chosen.append((_frame(datasets), list(files))))()
            return files
        return check

    def _wrap_rest(self, method: Callable) -> Callable:
        @functools.wraps(method)
        def rest(endpoint: Any = None, action: Any = None, *args: Any, **kwargs: Any) -> Any:
            answer = method(endpoint, action, *args, **kwargs)
            if endpoint == "sessions" and action in ("list", "read") and not self.stopped:
                self._guard(self._record_rest)(action, kwargs, answer)
            return answer
        return rest

    # -- what is recorded ---------------------------------------------------------------------

    def _ingest_tables(self) -> int | None:
        """The instance's cache tables, as they are now, as one recorded query."""
        from ..tables import Frames

        cache = self.one._cache
        if cache["datasets"].empty and cache["sessions"].empty:
            return None
        meta = (cache.get("_meta") or {}).get("raw") or {}
        rows = Frames(cache["sessions"], cache["datasets"], self._source, meta)
        result = self.store.ingest(rows, method="record_one", location=self._source, run_id=self.recorder.run(),
                                   mode=getattr(self.one, "mode", "local"), progress=False)
        return result.query_id

    def _rows_now(self, sessions: list[dict], datasets: list[dict], why: str) -> dict[tuple, int]:
        """Record rows in the state one-api holds them now; return the record of each dataset row
        ``(uuid, session, rel_path)`` (and of each session ``(uuid,)``)."""
        if not sessions and not datasets:
            return {}
        digest = hashlib.sha1(json.dumps([sessions, datasets], sort_keys=True, default=str).encode()).hexdigest()
        query = self.store.record_answer(location=self._source, sessions=sessions, datasets=datasets,
                                         method="one_api_rows", params={"why": why}, checksum=digest,
                                         run_id=self.recorder.run(), mode=getattr(self.one, "mode", "local"))
        catalog = Catalog(self.store, query)
        out: dict[tuple, int] = {}
        for row in catalog.dataset_rows(None, qc="CRITICAL"):
            out[(row.id, row.session_id, row.rel_path)] = row.record_id
        for row in catalog.sessions().itertuples(index=False):
            out[(row.id,)] = row.record_id
        return out

    def _after(self, state: SimpleNamespace, result: Any, error: BaseException | None) -> None:
        if state.name == "search":
            self._after_search(state, result)
        elif state.name in _LISTS:
            self._after_list(state, result)
        else:
            self._after_load(state, result, error)

    def _after_search(self, state: SimpleNamespace, result: Any) -> None:
        eids = result[0] if isinstance(result, tuple) else result
        eids = [str(e) for e in (eids or [])]
        sessions = _session_rows(self.one, eids)
        records = self._rows_now(sessions, [], "search")
        params = {**state.kwargs, "query_type": state.kwargs.get("query_type") or getattr(self.one, "mode", None)}
        self.store.record_query(self.recorder.run(), "search", params,
                                session_records=[records[(e,)] for e in eids if (e,) in records],
                                mode=getattr(self.one, "mode", "local"), revision_cutoff=state.cutoff,
                                scope=self.recorder.scope_name, duration_s=time.perf_counter() - state.started)

    def _after_list(self, state: SimpleNamespace, result: Any) -> None:
        eid = _eid_argument(self.one, state)
        datasets = _dataset_rows(self.one, eid) if eid else []
        if isinstance(result, pd.DataFrame) and "rel_path" in result:
            keep = set(result["rel_path"])
        else:
            keep = None if state.name != "list_datasets" else set(result or [])
        if keep is not None:
            datasets = [d for d in datasets if d["rel_path"] in keep]
        records = self._rows_now(_session_rows(self.one, [eid]) if eid else [], datasets, state.name)
        self.store.record_query(self.recorder.run(), state.name, {**state.kwargs, "eid": eid},
                                session_records=[records[(eid,)]] if eid and (eid,) in records else [],
                                dataset_records=[records[k] for k in (_key(d) for d in datasets) if k in records],
                                mode=getattr(self.one, "mode", "local"), revision_cutoff=state.cutoff,
                                scope=self.recorder.scope_name, duration_s=time.perf_counter() - state.started)

    def _after_load(self, state: SimpleNamespace, result: Any, error: BaseException | None) -> None:
        download_only = bool(state.kwargs.get("download_only"))
        listed = bool(getattr(self.one, "record_loaded", False))
        rows, files, failed = [], [], []
        for frame, found in state.chosen:
            chosen = _frame_rows(frame)
            rows.extend(chosen)
            files.extend(found if found is not None else [None] * len(chosen))
            failed.extend([found is None] * len(chosen))
        records = self._rows_now([], rows, state.name)
        events = []
        for row, file, broke in zip(rows, files, failed):
            if broke or (error is not None and file is not None and not isinstance(error, _alf_errors())):
                outcome = "failed"
            elif file is None:
                outcome = "missing"
            else:
                outcome = "download_only" if download_only else "loaded"
            ref = SimpleNamespace(id=row["uuid"], session_id=row["session_uuid"], rel_path=row["rel_path"],
                                  record_id=records.get(_key(row)))
            events.append(self.recorder.event(state.name, outcome, ref, listed=listed and outcome in ("loaded", "download_only"),
                                              path=Path(file) if file is not None and outcome != "failed" else None,
                                              detail=None if error is None else _error_text(error),
                                              cutoff=state.cutoff))
        if not rows:   # nothing was chosen: the request itself, and why it failed
            outcome = "not_found" if error is None or isinstance(error, _alf_errors()) else "failed"
            events.append(self.recorder.event(state.name, outcome, None, listed=False,
                                              session_id=_eid_argument(self.one, state),
                                              rel_path=_request_text(state), detail=_error_text(error) if error else None,
                                              cutoff=state.cutoff))
        self.recorder.record_events(events)

    def _record_rest(self, action: str, params: dict, answer: Any) -> None:
        """A REST answer to a sessions list or read, as a recorded query of its rows."""
        from ..sources.alyx import dataset_rows, session_row

        if action == "read":
            datasets, _ = dataset_rows(answer)
            sessions, path = [session_row(answer)], f"/sessions/{params.get('id')}"
        else:
            page = answer if isinstance(answer, list) else list(getattr(answer, "_cache", [])[:getattr(answer, "limit", 0)])
            sessions, datasets, path = [session_row(r) for r in page if r], [], "/sessions"
        if not sessions:
            return
        digest = hashlib.sha1(json.dumps(answer if action == "read" else sessions, sort_keys=True,
                                         default=str).encode()).hexdigest()
        self.store.record_answer(location=f"{self.base_url}{path}", sessions=sessions, datasets=datasets,
                                 params={"request": {"method": "GET", "path": path, "params": params}},
                                 checksum=digest, run_id=self.recorder.run())


# -- one-api's rows as store rows ----------------------------------------------------------------

def _cutoff() -> str | None:
    """The revision cutoff one-api applies: its module constant, read from the environment at import."""
    import one.api

    return getattr(one.api, "REVISION_LAST_BEFORE", None) or None


def _alf_errors() -> tuple[type, ...]:
    from one.alf.exceptions import ALFError

    return (ALFError,)


def _error_text(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"[:2000]


def _key(row: dict) -> tuple:
    return (row["uuid"], row["session_uuid"], row["rel_path"])


def _frame(datasets: Any) -> pd.DataFrame:
    """What one-api passed to ``_check_filesystem`` as a frame: a frame, or one row (a Series named
    by its ``(eid, id)``, as ``load_dataset_from_id`` passes it)."""
    if isinstance(datasets, pd.DataFrame):
        return datasets.copy()
    if isinstance(datasets, pd.Series):
        frame = datasets.to_frame().T
        name = datasets.name
        frame.index = pd.MultiIndex.from_tuples([name], names=["eid", "id"]) if isinstance(name, tuple) \
            else pd.Index([name], name="id")
        return frame
    return pd.DataFrame(datasets)


def _frame_rows(frame: pd.DataFrame) -> list[dict]:
    """The dataset rows of a frame one-api passed to ``_check_filesystem``, as store rows."""
    from .. import alf

    table = frame.reset_index()
    if "id" not in table and "index" in table:
        table = table.rename(columns={"index": "id"})
    rows = []
    for rec in table.to_dict("records"):
        collection, revision, name = alf.split_rel_path(rec["rel_path"])
        size = rec.get("file_size")
        md5 = rec.get("hash")
        default = rec.get("default_revision")
        rows.append({"uuid": str(rec["id"]).lower(), "session_uuid": str(rec.get("eid")).lower(),
                     "rel_path": rec["rel_path"], "collection": collection, "revision": revision, "name": name,
                     "file_size": None if pd.isna(size) else int(size),
                     "hash": None if md5 is None or (isinstance(md5, float) and pd.isna(md5)) or md5 == "" else md5,
                     "exists": bool(rec.get("exists", True)) if not pd.isna(rec.get("exists", True)) else True,
                     "qc": alf.qc_name(str(rec.get("qc") or "NOT_SET")),
                     "default_revision": None if default is None or pd.isna(default) else bool(default)})
    return rows


def _dataset_rows(one: Any, eid: str) -> list[dict]:
    """A session's rows of one-api's datasets table (its index holds ids as text or UUIDs)."""
    import uuid as uuid_module

    table = one._cache["datasets"]
    if table.empty or "eid" not in (table.index.names or []):
        return []
    for key in (eid, uuid_module.UUID(eid)):
        with contextlib.suppress(KeyError, TypeError):
            return _frame_rows(table.xs(key, level="eid", drop_level=False))
    return []


def _session_rows(one: Any, eids: list[str]) -> list[dict]:
    """Sessions of one-api's table, as store rows."""
    import datetime as dt

    table = one._cache["sessions"]
    if table.empty or not eids:
        return []
    index = {str(i).lower(): i for i in table.index}
    out = []
    for eid in eids:
        key = index.get(str(eid).lower())
        if key is None:
            continue
        rec = table.loc[key]
        date = rec.get("date")
        if isinstance(date, (pd.Timestamp, dt.datetime)):
            date = date.date()
        out.append({"uuid": str(eid).lower(), "lab": rec.get("lab"), "subject": rec.get("subject"), "date": date,
                    "number": int(rec.get("number") or 0), "task_protocol": rec.get("task_protocol"),
                    "projects": rec.get("projects")})
    return out


def _eid_argument(one: Any, state: SimpleNamespace) -> str | None:
    eid = state.args[0] if state.args else state.kwargs.get("eid")
    if eid is None or state.name == "load_dataset_from_id":
        return None
    with contextlib.suppress(Exception):
        found = one.to_eid(eid)
        return None if found is None else str(found)
    return None


def _request_text(state: SimpleNamespace) -> str | None:
    for position, key in ((1, "dataset"), (1, "obj"), (1, "datasets"), (1, "collection"), (0, "dset_id")):
        value = state.args[position] if len(state.args) > position else state.kwargs.get(key)
        if value is not None:
            return str(value)[:1000]
    return None


__all__ = ["Recording", "UnsupportedOneApi", "check_one_api", "record"]
