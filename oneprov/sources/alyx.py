"""An Alyx database and its data server: REST answers as rows, dataset files downloaded into the cache.

The REST side is one-api's own client (:class:`one.webclient.AlyxClient`), so that an existing
one-api setup works unchanged: its saved parameters (base URL, user, data server), its token auth
(``POST /auth-token``, the token cached in one-api's parameters, never in the provenance database,
one re-authentication on an invalid token), the ``ONE-API-Version`` header, its REST cache
(``<cache_dir>/.rest``, answers kept 5 minutes) and its lazy pagination. Answers are converted to
cache-table rows by one-api's converters (``ses2records``).

Files are downloaded here, not by one-api: from each dataset's data server URL (the session path,
then the rel_path with the dataset UUID before the extension), streamed into a temporary file and
moved into place only once its size and md5 match the record (a killed or failed download never
leaves a partial file under the final name), several at a time (``ONE_HTTP_DL_THREADS``, default 4),
with timeouts and retries with backoff on connection errors and 5xx answers; a 4xx is not retried.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import alf, files, settings
from .local import Fetched, LocalSource

#: Seconds to wait for the data server to connect and then for each chunk.
TIMEOUT_S = (10.0, 60.0)
#: Attempts of one download (connection errors, timeouts, 5xx, a wrong size or md5), and the first backoff.
ATTEMPTS, BACKOFF_S = 3, 0.5
_CHUNK = 1 << 20
#: Library diagnostics (retries, what was downloaded); what a user must see is a warning of the client.
_log = logging.getLogger("oneprov.remote")


@dataclass(frozen=True)
class Download:
    """What downloading one file did: ``status`` 'ok' or why not, the bytes written, the seconds taken."""

    url: str
    status: str
    bytes: int = 0
    seconds: float = 0.0
    detail: str | None = None


class AlyxSource:
    """Alyx at ``base_url`` (through one-api's ``AlyxClient``) and the files of its data server,
    downloaded into the ALF tree at ``cache_dir``."""

    mode = "remote"

    def __init__(self, base_url: str | None, cache_dir: str | os.PathLike, *, username: str | None = None,
                 password: str | None = None, token: Any = None, silent: bool = False, cache_rest: str | None = "GET"):
        from one.webclient import AlyxClient

        self.local = LocalSource(cache_dir)
        self.root = self.local.root
        kwargs = {"token": token} if token is not None else {}
        self.alyx = AlyxClient(base_url=base_url, username=username, password=password, cache_dir=str(self.root),
                               silent=silent, cache_rest=cache_rest, **kwargs)
        self.base_url = self.alyx.base_url.rstrip("/")
        self.silent = silent
        import one.params

        par = one.params.get(client=self.base_url, silent=True)
        self.data_server = (getattr(par, "HTTP_DATA_SERVER", None) or "").rstrip("/")
        login = (getattr(par, "HTTP_DATA_SERVER_LOGIN", None), getattr(par, "HTTP_DATA_SERVER_PWD", None))
        self._data_auth = login if all(login) else None
        self._sessions = threading.local()

    def __repr__(self) -> str:
        return f"AlyxSource({self.base_url!r}, {str(self.root)!r})"

    # -- REST ---------------------------------------------------------------------------------

    def rest(self, endpoint: str, action: str, **params: Any) -> Any:
        """one-api's ``AlyxClient.rest``: a list or dict, or a lazily paginated list."""
        return self.alyx.rest(endpoint, action, **params)

    def rest_headers(self) -> dict[str, str]:
        """The headers of an authenticated REST request (its token), for files the REST server
        serves itself (the cache zip). (one-api keeps them in a private attribute of AlyxClient.)"""
        if not self.alyx.is_logged_in:
            self.alyx.authenticate()
        return dict(self.alyx._headers)

    def session_folder(self, session: Any) -> Path:
        return self.local.session_folder(session)

    def file_url(self, session: Any, rel_path: str, dataset_id: str) -> str:
        """The data server URL of a dataset file: the session path, then the rel_path with the UUID."""
        session_part = alf.session_path(session.lab, session.subject, session.date, session.number)
        return f"{self.data_server}/{session_part}/{alf.with_uuid(rel_path, dataset_id)}"

    # -- files --------------------------------------------------------------------------------

    def fetch(self, rows: Sequence[Any], folder_of: Callable[[str], Path], session_of: Callable[[str], Any], *,
              check_hash: bool = True, uuid_names: bool = False, progress: bool | None = None) -> list[Fetched]:
        """Each row's file: the local one if it matches the record, else downloaded first (each
        :class:`Fetched` then carries its :class:`Download`)."""
        fetched = self.local.fetch(rows, folder_of, check_hash=check_hash, uuid_names=uuid_names)
        wanted = [(i, row) for i, (row, got) in enumerate(zip(rows, fetched)) if not got.ok]
        if not wanted:
            return fetched
        results = self.download([(self.file_url(session_of(row.session_id), row.rel_path, row.id), fetched[i].path,
                                   row.file_size, row.hash) for i, row in wanted], progress=progress)
        out = list(fetched)
        for (i, _), done in zip(wanted, results):
            out[i] = Fetched(fetched[i].path, "ok" if done.status == "ok" else done.status, done)
        return out

    def download(self, jobs: Sequence[tuple[str, Path, Any, Any]], *, progress: bool | None = None,
                 headers: dict[str, str] | None = None) -> list[Download]:
        """Download ``(url, path, size, md5)`` jobs in parallel; each file is moved into place only
        when its size and md5 (when known) match. Returns one :class:`Download` per job, in order."""
        from tqdm.auto import tqdm

        threads = settings.download_threads()
        total = sum(int(s) for _, _, s, _ in jobs if _known(s))
        show = (not self.silent) and (progress if progress is not None else (len(jobs) >= 10 or total >= 64 << 20))
        with tqdm(total=total or None, unit="B", unit_scale=True, disable=not show, desc="Downloading") as bar:
            def one(job: tuple) -> Download:
                return self._download_one(*job, bar=bar, headers=headers)
            if len(jobs) == 1 or threads == 1:
                return [one(job) for job in jobs]
            with ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="oneprov-dl") as pool:
                return list(pool.map(one, jobs))

    def _http(self) -> Any:
        import requests

        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
            if self._data_auth:
                session.auth = self._data_auth
        return session

    def _download_one(self, url: str, path: Path, size: Any, md5: Any, *, bar: Any,
                      headers: dict[str, str] | None = None) -> Download:
        import requests

        started = time.perf_counter()
        quoted = _quoted(url)
        last = "download_failed"
        detail = None
        for attempt in range(ATTEMPTS):
            if attempt:
                _log.info("retrying %s (attempt %d of %d) after %s", url, attempt + 1, ATTEMPTS, detail or last)
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                result = self._stream(quoted, path, size, md5, bar, headers)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                detail = f"HTTP {code} from {url}"
                if 400 <= code < 500:
                    return Download(url, "download_failed", 0, time.perf_counter() - started, detail)
                continue
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                detail = f"{type(exc).__name__} from {url}"
                continue
            if isinstance(result, int):
                _log.debug("downloaded %s: %d bytes in %.3f s", url, result, time.perf_counter() - started)
                return Download(url, "ok", result, time.perf_counter() - started)
            last, detail = result, f"{result.replace('_', ' ')} after downloading {url}"
        return Download(url, last, 0, time.perf_counter() - started, detail)

    def _stream(self, url: str, path: Path, size: Any, md5: Any, bar: Any, headers: dict[str, str] | None) -> int | str:
        """Download ``url`` into ``path`` through a temporary file: the bytes written, or the
        mismatch ('size_mismatch', 'hash_mismatch') that kept the file out."""
        digest = hashlib.md5()
        written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = files.temporary_name(path)
        try:
            with self._http().get(url, stream=True, timeout=TIMEOUT_S, headers=headers) as answer:
                answer.raise_for_status()
                with open(tmp, "wb") as f:
                    for chunk in answer.iter_content(_CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            # (no fsync: a file that a power cut left short or empty fails its size or md5 check at
            # the next load, and is downloaded again)
            if _known(size) and int(size) > 0 and written != int(size):
                return "size_mismatch"
            if isinstance(md5, str) and md5 and digest.hexdigest() != md5.lower():
                return "hash_mismatch"
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return written


def _known(value: Any) -> bool:
    try:
        return value is not None and value == value and int(value) >= 0
    except (TypeError, ValueError):
        return False


def _quoted(url: str) -> str:
    """A data URL as requested: its path percent-encoded ('#' of a revision folder is not a fragment)."""
    split = urllib.parse.urlsplit(url, allow_fragments=False)
    return split._replace(path=urllib.parse.quote(split.path)).geturl()


def safe_rel_path(rel_path: str) -> str | None:
    """Why a rel_path from a server may not be used (it would leave the session folder), or None."""
    if not rel_path or rel_path.startswith("/") or "\\" in rel_path:
        return "it is absolute or empty"
    if any(part in ("..", ".", "") for part in rel_path.split("/")):
        return "it has a '..', '.' or empty part"
    problem = alf.name_problem(rel_path, path=True)
    return problem


__all__ = ["AlyxSource", "Download", "safe_rel_path"]


# -- REST records as cache rows ------------------------------------------------------------------
# As one-api's converters (``one.converters.ses2records``) make them, without pandas: a REST answer
# holds tens of rows, and a DataFrame per answer costs more than recording it.

def session_row(record: dict[str, Any]) -> dict[str, Any]:
    """A ``/sessions`` record as a sessions-table row: ``uuid, lab, subject, date, number,
    task_protocol, projects`` (projects joined by commas, a missing number 0), checked as an imported
    table's rows are."""
    import datetime as dt

    uuid = alf.check_uuid(record.get("id") or str(record.get("url", ""))[-36:], "session id")
    subject = record.get("subject")
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"session {uuid}: missing subject")
    try:
        date = dt.datetime.fromisoformat(str(record["start_time"])).date()
    except (KeyError, ValueError):
        raise ValueError(f"session {uuid}: bad start_time {record.get('start_time')!r}") from None
    number = record.get("number") or 0
    if not isinstance(number, int) or not 0 <= number <= 999:
        raise ValueError(f"session {uuid}: bad number {number!r}")
    row = {"uuid": uuid, "lab": record.get("lab"), "subject": subject, "date": date, "number": number,
           "task_protocol": record.get("task_protocol"),
           "projects": ",".join(record.get("projects") or []) if isinstance(record.get("projects"), list)
           else record.get("projects")}
    for column in ("lab", "subject"):
        value = row[column]
        problem = alf.name_problem(value) if isinstance(value, str) else None
        if not problem and isinstance(value, str) and len(value) > alf.MAX_CHARS[column]:
            problem = f"it is longer than {alf.MAX_CHARS[column]} characters"
        if problem:
            raise ValueError(f"session {uuid}: {column} {value[:40]!r}: {problem}")
    for column in ("task_protocol", "projects"):
        if isinstance(row[column], str) and "\x00" in row[column]:
            raise ValueError(f"session {uuid}: {column} contains a NUL byte")
    return row


def dataset_rows(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The datasets of a ``/sessions/<eid>`` record (``data_dataset_session_related``) as
    datasets-table rows (``uuid, session_uuid, rel_path, collection, revision, name, file_size,
    hash, exists, qc, default_revision``), and the records refused, each with its ``problem``
    (a path leaving the session folder, a bad id or QC)."""
    from one.alf.path import get_alf_path, get_session_path, remove_uuid_string

    session = session_row(record)["uuid"]
    rows, refused = [], []
    for d in record.get("data_dataset_session_related") or []:
        try:
            path = urllib.parse.urlsplit(d["data_url"], allow_fragments=False).path.strip("/")
            if ".." in path.split("/"):
                raise ValueError("its path has a '..' part")
            file_path = get_alf_path(remove_uuid_string(path))
            session_path = get_session_path(file_path)
            if session_path is None:
                raise ValueError("its path names no session folder")
            rel_path = file_path[len(session_path.as_posix()):].strip("/")
            problem = safe_rel_path(rel_path)
            if problem:
                raise ValueError(f"its path {problem}")
            collection, revision, name = alf.split_rel_path(rel_path)
            size = d.get("file_size")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise ValueError(f"bad file_size {size!r}")
            md5 = d.get("hash") or None
            if md5 is not None and (not isinstance(md5, str) or len(md5) > alf.MAX_CHARS["hash"] or "\x00" in md5):
                raise ValueError(f"bad hash {md5!r}")
            rows.append({"uuid": alf.check_uuid(d["id"], "dataset id"), "session_uuid": session, "rel_path": rel_path,
                         "collection": collection, "revision": revision, "name": name, "file_size": size,
                         "hash": md5, "exists": True, "qc": alf.qc_name(d.get("qc") or "NOT_SET"),
                         "default_revision": d.get("default_revision") == "True"})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:   # (BadInputError is a ValueError)
            refused.append({**d, "problem": str(exc)})
    return rows, refused
