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

from ..errors import BadInputError
from ..sources.alyx import AlyxSource, dataset_rows, session_row
from ..store import Store
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

    def take(self, path: str, params: dict[str, Any], answer: Any, sessions: list[dict], datasets: list[dict]) -> int | None:
        """Record one REST answer (``path`` and ``params`` of the request; ``answer`` as received)
        as its ``sessions``/``datasets`` rows (see :mod:`oneprov.sources.alyx`), and answer from the
        tables merged with it."""
        if not sessions and not datasets:
            return self._tables()
        digest = hashlib.sha1(json.dumps(answer, sort_keys=True, default=str).encode()).hexdigest()
        run = self.recorder.run()
        query = self.store.record_answer(location=f"{self.source.base_url}{path}", sessions=sessions, datasets=datasets,
                                         params={"request": {"method": "GET", "path": path, "params": params}},
                                         checksum=digest, run_id=run)
        merged = self.store.merge_tables(self._tables(), query, run, source=str(self.source.root))
        self._use(merged)
        return merged

    def sessions_page(self, params: dict[str, Any], page: list[dict]) -> None:
        """Record a page of a ``/sessions`` list (search results)."""
        if page:
            self.take("/sessions", params, page, [session_row(r) for r in page], [])

    def session(self, eid: str) -> dict[str, Any] | None:
        """Read ``/sessions/<eid>`` (the session and its datasets), record it and merge it; return the
        REST record (None when the server does not know the session). Datasets that cannot be
        recorded (a path outside the session folder ...) are left out, in ``self.refused``."""
        import requests

        try:
            record = self.source.rest("sessions", "read", id=eid)
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise
        datasets, self.refused = dataset_rows(record)
        self.take(f"/sessions/{eid}", {}, record, [session_row(record)], datasets)
        return record


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
