"""The recorder: one run's lifecycle and everything recorded in it, apart from any ONE API.

A run starts with the first recorded call and is closed at exit: 'finished', or 'failed' (with the
error) when an uncaught exception ends the process. Inside ``with recorder.scope('figure3'):`` every
event and query carries the scope. Each record is committed before the call that made it returns.
The ONE client uses a recorder; so will the wrapper that records an unmodified one-api instance.

>>> from oneprov import open_store
>>> recorder = Recorder(open_store(":memory:"), project="demo")
>>> with recorder.scope("fig1"):
...     event = recorder.event("load_dataset", "not_found", rel_path="x.y.npy", listed=True)
...     ids = recorder.record_events([event])
>>> recorder.store.runs()["project"].tolist(), event["scope"]
(['demo'], 'fig1')
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import settings
from ..context import run_context
from ..store import Store


class Recorder:
    """Records one run of ``project`` (``label`` names it) into ``store``."""

    def __init__(self, store: Store, project: str | None = None, label: str | None = None, *,
                 cache_dir: str | os.PathLike | None = None, base_url: str | None = None):
        self.store = store
        self.project = settings.project(project)
        self.label = label
        self.cache_dir = cache_dir
        self.base_url = base_url
        self.run_id: str | None = None
        self.scope_name: str | None = None
        self.tables: int | None = None          # the query whose tables the client answers from
        self._marked_tables: int | None = None
        self._lock = threading.RLock()

    def run(self) -> str:
        """The run's id, starting the run (and the exit hooks that close it) on first use."""
        with self._lock:
            if self.run_id is None:
                self.run_id = self.store.start_run(self.project, label=self.label, cache_dir=self.cache_dir,
                                                   base_url=self.base_url, revision_cutoff=settings.revision_cutoff(),
                                                   context=run_context())
                _open_runs[self.run_id] = weakref.ref(self)
                _install_exit_hooks()
                self._mark_tables()
        return self.run_id

    def use_tables(self, query_id: int | None) -> None:
        """The client now answers from the tables of ``query_id``: a run that has started records it
        (a mark 'tables' naming the query), so that the run says which tables it worked from."""
        with self._lock:
            self.tables = query_id
            if self.run_id is not None:
                self._mark_tables()

    def _mark_tables(self) -> None:
        if self.tables is not None and self.tables != self._marked_tables:
            self._marked_tables = self.tables
            self.store.mark(self.run_id, "tables", scope=self.scope_name, detail=str(self.tables))

    def close(self, error: BaseException | None = None) -> None:
        """Close the run, if one was started: 'finished', or 'failed' with ``error``."""
        with self._lock:
            if self.run_id is not None and _open_runs.pop(self.run_id, None) is not None:
                status = "failed" if error is not None else "finished"
                self.store.finish_run(self.run_id, status, _error_text(error) if error is not None else None)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Record every event and query inside the block under a scope name (e.g. a figure)."""
        previous, self.scope_name = self.scope_name, str(name)
        try:
            yield
        finally:
            self.scope_name = previous

    def event(self, method: str, outcome: str, row: Any = None, *, listed: bool, requested_revision: str | None = None,
              rel_path: str | None = None, path: Path | None = None, detail: str | None = None,
              session_id: str | None = None, size: int | None = None, cutoff: Any = ...) -> dict[str, Any]:
        """A load attempt as :meth:`record_events` takes it: of a dataset ``row`` (with ``id``,
        ``session_id``, ``rel_path`` and the ``record_id`` it was read from) or of a request that
        matched none (``rel_path``, ``session_id``).

        ``listed``: the load counts in the run's loaded-ids list (ONE's ``record_loaded``). A
        successful load records the file's size (``size``: the bytes of a download). ``cutoff`` is
        the revision cutoff in force (default: ``$ONE_REVISION_LAST_BEFORE`` now).
        """
        if size is None and path is not None and outcome in ("loaded", "download_only"):
            size = path.stat().st_size
        return {
            "method": method, "outcome": outcome,
            "dataset_id": getattr(row, "id", None) if row is not None else None,
            "record_id": getattr(row, "record_id", None) if row is not None else None,
            "session_id": getattr(row, "session_id", None) if row is not None else session_id,
            "rel_path": getattr(row, "rel_path", None) if row is not None else rel_path,
            "requested_revision": requested_revision,
            "revision_cutoff": settings.revision_cutoff() if cutoff is ... else cutoff,
            "scope": self.scope_name, "path": str(path) if path is not None else None, "bytes": size,
            "detail": detail, "listed": bool(listed),
        }

    def record_events(self, events: list[dict[str, Any]]) -> list[int]:
        """Record load attempts (see :meth:`event`) in one transaction."""
        return self.store.record_access(self.run(), events)

    def record_query(self, method: str, params: dict[str, Any], started: float, *, mode: str,
                     sessions: Sequence[int] = (), datasets: Sequence = ()) -> int:
        """Record a search or list with what it returned: the session records (ids) and the dataset
        rows (each with the ``record_id`` it was read from). ``started`` is the call's
        ``time.perf_counter()`` at its start."""
        return self.store.record_query(self.run(), method, params, session_records=sessions,
                                       dataset_records=[r.record_id for r in datasets], mode=mode,
                                       revision_cutoff=settings.revision_cutoff(), scope=self.scope_name,
                                       duration_s=time.perf_counter() - started)

    def mark(self, kind: str) -> None:
        """Add a mark to the run (e.g. 'clear_list'), under the current scope."""
        self.store.mark(self.run(), kind, scope=self.scope_name)


# -- closing runs at exit -------------------------------------------------------------------

_open_runs: dict[str, "weakref.ReferenceType[Recorder]"] = {}
_exit_error: list[BaseException] = []
_hooks_installed = False


def _install_exit_hooks() -> None:
    """Close open runs at interpreter exit: 'failed' when an uncaught exception ends the process."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def excepthook(exc_type, exc, tb):
        _exit_error.append(exc)
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(_close_open_runs)


def _close_open_runs() -> None:
    error = _exit_error[-1] if _exit_error else None
    for ref in list(_open_runs.values()):
        recorder = ref()
        if recorder is not None:
            try:
                recorder.close(error)
            except Exception:  # at exit, a closed database must not hide the real error
                pass


def _error_text(error: BaseException) -> str:
    """How a run's error is stored: 'RuntimeError: message' (secrets are hidden by the store)."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()
