"""Remote mode: which mode a client runs in, and the REST answers it is given, recorded and merged.

Every REST answer that answers a search or a list is ingested as a query of its own (method 'rest',
its source the request's URL, its parameters with credentials removed, its rows with their state),
then merged into the client's tables (:func:`oneprov.store.merging.merge_tables`), as one-api merges
it into ``One._cache``. An identical answer (the REST cache keeps answers a few minutes) is
recognised by its checksum and writes nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import BadInputError
from ..sources.alyx import AlyxSource, safe_rel_path
from ..store import Store
from ..tables import Frames
from .recorder import Recorder

MODES = ("local", "remote")


def decide_mode(mode: str | None, cache_dir: Any, base_url: str | None, credentials: bool) -> str:
    """'local' or 'remote', as one-api's ``ONE()`` decides: remote when a base URL or credentials are
    given, or when one-api's saved parameters hold an Alyx for ``cache_dir`` (or, without one, a
    default Alyx); otherwise local. An explicit ``mode`` wins."""
    if mode is not None and mode not in MODES:
        raise ValueError(f'Mode "{mode}" not recognized')
    if mode is not None:
        return mode
    if base_url or credentials:
        return "remote"
    return "remote" if saved_alyx(cache_dir) else "local"


def saved_alyx(cache_dir: Any) -> str | None:
    """The base URL one-api's saved parameters give for ``cache_dir`` (or the default one), or None."""
    import one.params
    from iblutil.io import params as iopar

    caches = iopar.read("one/caches", {})
    client_map = dict(getattr(caches, "CLIENT_MAP", {}) or {})
    if cache_dir:
        key = next((k for k, v in client_map.items() if v and Path(v).expanduser().absolute()
                    == Path(cache_dir).expanduser().absolute()), None)
    else:
        key = getattr(caches, "DEFAULT", None)
    if not key:
        return None
    par = iopar.read(f"one/{key}", {})
    url = getattr(par, "ALYX_URL", None)
    return url or (one.params.get_default_client() if not cache_dir else None)


class RemoteTables:
    """The REST answers of one remote client, each recorded and merged into its tables.

    ``tables()`` gives the client's current tables (a query id or None); ``use(query_id)`` makes it
    answer from new ones.
    """

    def __init__(self, store: Store, source: AlyxSource, recorder: Recorder, tables: Callable[[], int | None],
                 use: Callable[[int], None]):
        self.store = store
        self.source = source
        self.recorder = recorder
        self._tables = tables
        self._use = use
        self.refused: list[dict[str, Any]] = []   # records refused from the last answer (a path outside the session)

    def take(self, path: str, params: dict[str, Any], answer: Any, sessions: pd.DataFrame,
             datasets: pd.DataFrame | None) -> int | None:
        """Record one REST answer (``path`` and ``params`` of the request; ``answer`` as received)
        converted to ``sessions``/``datasets`` rows, and answer from the tables merged with it."""
        if sessions.empty and (datasets is None or datasets.empty):
            return self._tables()
        sessions = sessions.rename_axis("id")
        if datasets is None:
            datasets = _no_datasets()
        digest = hashlib.sha1(json.dumps(answer, sort_keys=True, default=str).encode()).hexdigest()
        rows = Frames(sessions, datasets, f"{self.source.base_url}{path}", {})
        result = self.store.ingest(rows, method="rest", location=f"{self.source.base_url}{path}",
                                   params={"request": {"method": "GET", "path": path, "params": params}},
                                   mode="remote", run_id=self.recorder.run(), checksum=digest, progress=False)
        merged = self.store.merge_tables(self._tables(), result.query_id, self.recorder.run(),
                                         source=str(self.source.root))
        self._use(merged)
        return merged

    def sessions_page(self, params: dict[str, Any], page: list[dict]) -> None:
        """Record a page of a ``/sessions`` list (search results)."""
        from one.converters import ses2records

        if not page:
            return
        frame = pd.DataFrame([ses2records(record)[0] for record in page])
        self.take("/sessions", params, page, frame, None)

    def session(self, eid: str) -> dict[str, Any] | None:
        """Read ``/sessions/<eid>`` (the session and its datasets), record it and merge it; return the
        REST record (None when the server does not know the session)."""
        import requests
        from one.converters import ses2records

        try:
            record = self.source.rest("sessions", "read", id=eid)
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise
        record, self.refused = _without_unsafe(record)
        session, datasets = ses2records(record)
        self.take(f"/sessions/{eid}", {}, record, session.to_frame().T, datasets)
        return record


def _without_unsafe(record: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A session record without the datasets whose data URL would put a file outside the session
    folder (``..``, an absolute path), and those datasets."""
    import urllib.parse

    from one.alf.path import get_alf_path, get_session_path, remove_uuid_string

    kept, refused = [], []
    for d in record.get("data_dataset_session_related") or []:
        try:
            path = urllib.parse.urlsplit(d["data_url"], allow_fragments=False).path.strip("/")
            problem = None if ".." not in path.split("/") else "it has a '..' part"
            if problem is None:
                file_path = get_alf_path(remove_uuid_string(path))
                session = get_session_path(file_path)
                rel = file_path[len(session.as_posix()):].strip("/") if session else None
                problem = "it names no session folder" if rel is None else safe_rel_path(rel)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"its data URL cannot be read ({exc})"
        (refused if problem else kept).append({**d, "problem": problem} if problem else d)
    return {**record, "data_dataset_session_related": kept}, refused


def _no_datasets() -> pd.DataFrame:
    from one.alf.cache import EMPTY_DATASETS_FRAME

    return EMPTY_DATASETS_FRAME.copy()


def rest_search_params(terms: dict[str, Any], search_terms: tuple[str, ...]) -> dict[str, Any]:
    """one-api's search terms as the ``/sessions`` list parameters one-api sends: names completed,
    ``laboratory`` as ``lab``, ``date_range`` as two ISO dates, ``django`` passed through."""
    from one.util import autocomplete, validate_date_range

    params: dict[str, Any] = {"django": terms.pop("django", "")}
    for key, value in sorted(terms.items()):
        field = autocomplete(key, search_terms)
        if field == "date_range":
            params[field] = [x.date().isoformat() for x in validate_date_range(value)]
        elif field == "laboratory":
            params["lab"] = value
        else:
            params[field] = value
    if not params["django"]:
        params.pop("django")
    return params


def check_cache_dir(cache_dir: Path) -> None:
    if not cache_dir.exists():
        try:
            cache_dir.mkdir(parents=True)
        except OSError as exc:
            raise BadInputError(f"cache_dir {str(cache_dir)!r} cannot be created: {exc}") from exc


__all__ = ["MODES", "RemoteTables", "check_cache_dir", "decide_mode", "download_tables", "rest_search_params",
           "saved_alyx"]


def download_tables(source: AlyxSource, location: str | None, folder: Path) -> list[Path]:
    """Download the server's cache zip (``location``, default ``<base_url>/cache.zip``) and move its
    tables into ``folder`` together (the old pair, or the new one, never a mix; a killed download
    leaves the old tables)."""
    import tempfile
    import zipfile

    from .. import files

    folder.mkdir(parents=True, exist_ok=True)
    url = location or f"{source.base_url}/cache.zip"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".oneprov-cache-") as tmp:
        zipped = Path(tmp) / "cache.zip"
        headers = source.rest_headers() if url.startswith(source.base_url) else None   # (the REST token)
        (done,) = source.download([(url, zipped, None, None)], headers=headers)
        if done.status != "ok":
            raise ConnectionError(f"cannot download the cache tables from {url}: {done.detail or done.status}")
        with zipfile.ZipFile(zipped) as archive:
            names = [n for n in archive.namelist() if n.endswith(".pqt") and "/" not in n]
            moves = []
            for name in names:
                target = folder / name
                tmp_file = files.temporary_name(target)
                with archive.open(name) as src, open(tmp_file, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                moves.append((tmp_file, target))
        if not moves:
            raise BadInputError(f"{url} holds no cache tables")
        files.replace_together(moves)
    return [target for _, target in moves]
