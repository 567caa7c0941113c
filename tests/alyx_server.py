"""A test Alyx: an HTTP server on 127.0.0.1 that answers as Alyx does, over a synthetic repository.

No real Alyx runs here, so the remote-mode tests start this one. Its answers are shaped as the
recorded real responses and the OpenAPI schema that ship in one-api's wheel
(``one/tests/fixtures/rest_responses/``): token auth (``POST /auth-token``), ``/sessions`` (list,
filtered and paginated; read, with ``data_dataset_session_related``), ``/datasets``, ``/files``,
``cache/info`` and the cache zip, and the data files under ``/data`` named with their dataset UUID
(``trials.intervals.<uuid>.npy``). It is checked by the real client: unmodified one-api ``OneAlyx``
runs against it in tests/test_alyx_server.py.

Faults on demand, for the client's error paths (:meth:`AlyxServer.fault`): an HTTP status, a
connection dropped half-way through a file, a slow answer, wrong bytes, an expired token.

>>> import tempfile
>>> from oneprov.synthetic import make_repository
>>> with AlyxServer(make_repository(tempfile.mkdtemp())) as alyx:
...     import requests
...     token = requests.post(alyx.url + "/auth-token", data=alyx.credentials).json()["token"]
...     answer = requests.get(alyx.url + "/sessions", headers={"Authorization": f"Token {token}"}).json()
>>> len(answer)
6
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import io
import json
import re
import secrets
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from oneprov.alf import QC_LEVELS, session_path
from oneprov.synthetic import RepositoryInfo
from oneprov.tables import write_datasets, write_sessions

#: The user the server knows, and its password (``credentials``).
USER, PASSWORD = "test_user", "TapetesBloc18"
SCHEMA = Path(__import__("one").__file__).parent / "tests" / "fixtures" / "rest_responses" / "openapiv3.json"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass
class Fault:
    """What to do, instead of answering, to the next ``times`` requests whose path matches ``path``
    (an fnmatch pattern of the decoded path, e.g. ``/data/*trials.intervals*``).

    ``kind``: ``"status"`` (answer ``status``), ``"drop"`` (send half the body, then close),
    ``"slow"`` (wait ``seconds`` first), ``"trickle"`` (send half the body, wait ``seconds``, send
    the rest), ``"corrupt"`` (flip the first byte of a file),
    ``"expire_token"`` (the caller's token becomes invalid: Alyx's 403 "Invalid token.").
    """

    path: str
    kind: str
    times: int = 1
    status: int = 500
    seconds: float = 5.0


@dataclass
class AlyxServer:
    """Alyx over ``repo``: its sessions and datasets, its files served from ``repo.root``.

    ``page_size`` paginates every list as Alyx's ``limit``/``offset`` does even without a ``limit``
    parameter (None: only when asked). ``tags`` maps a data-release tag to the dataset ids it holds.
    ``extra_datasets`` are added to the session records as they are (e.g. a traversal path).
    ``data_login`` (user, password) makes the data server ask for HTTP basic auth.
    """

    repo: RepositoryInfo
    page_size: int | None = None
    tags: dict[str, list[str]] = field(default_factory=dict)
    extra_datasets: dict[str, list[dict]] = field(default_factory=dict)
    data_login: tuple[str, str] | None = None
    origin: str = "alyx-test"
    date_created: str = "2026-11-30T10:00:00"

    def __post_init__(self) -> None:
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []   # (method, path with query) of every request
        self.headers: list[dict[str, str]] = []     # the headers of every GET
        self.tokens: set[str] = set()
        self.most_at_once = 0   # the most data files served at the same time
        self._serving = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        sessions = self.repo.sessions.copy()
        sessions["date"] = pd.to_datetime(sessions["date"]).dt.date
        self.sessions = sessions.set_index("id", drop=False)
        self.datasets = self.repo.datasets.set_index("id", drop=False)

    # -- running ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def data_url(self) -> str:
        """The data server (one-api's ``HTTP_DATA_SERVER``)."""
        return self.url + "/data"

    @property
    def credentials(self) -> dict[str, str]:
        return {"username": USER, "password": PASSWORD}

    def start(self) -> "AlyxServer":
        server = self

        class Handler(_Handler):
            alyx = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="alyx-test").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "AlyxServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def fault(self, path: str, kind: str, **kwargs: Any) -> Fault:
        """Plan a fault (see :class:`Fault`); it applies to the next matching requests."""
        planned = Fault(path, kind, **kwargs)
        with self._lock:
            self.faults.append(planned)
        return planned

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for planned in self.faults:
                if planned.times > 0 and fnmatch.fnmatchcase(path, planned.path):
                    planned.times -= 1
                    return planned
        return None

    def one_params(self, cache_dir: str | Path) -> None:
        """Save one-api's parameters for this server (in ``$HOME/.one``): its URL, user, data
        server and cache folder, as ``ONE.setup`` would."""
        import one.params

        one.params.setup(self.url, silent=True, make_default=True, username=USER, cache_dir=str(cache_dir))
        par = one.params.get(self.url, silent=True).set("HTTP_DATA_SERVER", self.data_url)
        if self.data_login:
            par = par.set("HTTP_DATA_SERVER_LOGIN", self.data_login[0]).set("HTTP_DATA_SERVER_PWD", self.data_login[1])
        one.params.save(par, self.url)

    # -- records ----------------------------------------------------------------------------

    def session_record(self, eid: str) -> dict[str, Any]:
        s = self.sessions.loc[eid]
        return {"id": eid, "url": f"{self.url}/sessions/{eid}", "subject": s["subject"],
                "start_time": dt.datetime.combine(s["date"], dt.time(10, 0)).isoformat(),
                "number": int(s["number"]), "lab": s["lab"],
                "projects": [p for p in (s["projects"] or "").split(",") if p],
                "task_protocol": s["task_protocol"] or ""}

    def file_url(self, did: str) -> str:
        """The data server URL of a dataset's file: the session path, then the rel_path with the UUID."""
        d = self.datasets.loc[did]
        s = self.sessions.loc[d["eid"]]
        rel = Path(d["rel_path"])
        name = ".".join([*rel.name.split(".")[:-1], did, rel.name.split(".")[-1]])
        return f"{self.data_url}/{session_path(s['lab'], s['subject'], s['date'], s['number'])}/{rel.parent / name}"

    def _parts(self, did: str) -> tuple[str, str, str]:
        """(collection, revision, name) of a dataset's rel_path."""
        rel = self.datasets.loc[did]["rel_path"].split("/")
        revision = rel[-2][1:-1] if len(rel) > 1 and rel[-2].startswith("#") else ""
        collection = "/".join(rel[:-2] if revision else rel[:-1])
        return collection, revision, rel[-1]

    def session_dataset(self, did: str) -> dict[str, Any]:
        """A dataset as ``data_dataset_session_related`` lists it."""
        d = self.datasets.loc[did]
        collection, revision, name = self._parts(did)
        return {"id": did, "name": name, "dataset_type": ".".join(name.split(".")[:2]),
                "data_url": self.file_url(did), "url": f"{self.url}/datasets/{did}",
                "file_size": None if pd.isna(d["file_size"]) else int(d["file_size"]),
                "hash": None if pd.isna(d["hash"]) else d["hash"], "version": "1.0.0",
                "collection": collection, "revision": revision,
                "default_revision": str(bool(d["default_revision"])), "qc": d["qc"]}

    def dataset_record(self, did: str) -> dict[str, Any]:
        """A dataset as ``/datasets`` lists it (with its file records)."""
        d = self.datasets.loc[did]
        collection, revision, name = self._parts(did)
        url = self.file_url(did)
        relative = url[len(self.data_url) + 1:]
        return {"url": f"{self.url}/datasets/{did}", "name": name, "created_by": USER,
                "created_datetime": "2024-06-01T12:00:00", "dataset_type": ".".join(name.split(".")[:2]),
                "data_format": name.split(".")[-1], "collection": collection,
                "session": f"{self.url}/sessions/{d['eid']}",
                "file_size": None if pd.isna(d["file_size"]) else int(d["file_size"]),
                "hash": None if pd.isna(d["hash"]) else d["hash"], "version": "1.0.0", "experiment_number": 1,
                "file_records": [{"id": did, "data_repository": "flatiron_test", "data_repository_path": "/data/",
                                  "relative_path": relative, "data_url": url, "exists": self.on_server(did)}],
                "auto_datetime": "2024-06-01T12:00:00", "revision": revision or None,
                "default_dataset": bool(d["default_revision"]), "qc": d["qc"], "protected": False,
                "public": True, "tags": [t for t, ids in self.tags.items() if did in ids]}

    def on_server(self, did: str) -> bool:
        """Whether the data server has the dataset's file (the repository's missing file it has not)."""
        return self.repo.dataset_path(did).is_file()

    def search(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """Sessions matching Alyx's filters (case-insensitive partial text; a comma list is OR,
        except ``datasets``, all of which must be present), newest first."""
        s = self.sessions
        keep = pd.Series(True, index=s.index)
        for term, column in (("subject", "subject"), ("lab", "lab"), ("projects", "projects"),
                             ("task_protocol", "task_protocol")):
            if term in query:
                text = s[column].fillna("").str.lower()
                keep &= pd.concat([text.str.contains(v.lower(), regex=False) for v in query[term].split(",")],
                                  axis=1).any(axis=1)
        if "number" in query:
            keep &= s["number"].astype(int) == int(query["number"])
        if "date_range" in query:
            start, end = (dt.date.fromisoformat(x) for x in query["date_range"].split(","))
            keep &= (s["date"] >= start) & (s["date"] <= end)
        d = self.datasets
        if "dataset_qc_lte" in query:
            limit = int(query["dataset_qc_lte"]) if query["dataset_qc_lte"].isdigit() else QC_LEVELS[query["dataset_qc_lte"]]
            ok = d[d["qc"].astype(str).map(QC_LEVELS) <= limit]
            keep &= s.index.isin(ok["eid"])
        if "datasets" in query:
            names = d["rel_path"].str.rsplit("/", n=1).str[-1]
            for name in query["datasets"].split(","):
                keep &= s.index.isin(d.loc[names == name, "eid"])
        if "tag" in query:
            keep &= s.index.isin(d.loc[d.index.isin(self.tags.get(query["tag"], [])), "eid"])
        django = query.get("django", "")
        if django.startswith("pk,"):
            keep &= s.index == django.split(",")[1]
        if django.startswith("pk__in,"):
            keep &= s.index.isin(re.findall(UUID, django))
        found = s[keep].sort_values(["date", "number"], ascending=False)
        return [self.session_record(e) for e in found.index]

    def list_datasets(self, query: dict[str, str]) -> list[dict[str, Any]]:
        d = self.datasets
        keep = pd.Series(True, index=d.index)
        if "session" in query:
            keep &= d["eid"] == query["session"]
        django = query.get("django", "")
        if django.startswith("id__in,"):
            keep &= d.index.isin(re.findall(UUID, django))
        if "tag" in query:
            keep &= d.index.isin(self.tags.get(query["tag"], []))
        return [self.dataset_record(did) for did in d[keep].index]

    def cache_zip(self, tag: str | None) -> bytes:
        """The cache tables as Alyx serves them: ``sessions.pqt`` and ``datasets.pqt`` in a zip."""
        import tempfile

        datasets = self.repo.datasets
        if tag:
            datasets = datasets[datasets["id"].isin(self.tags[tag])]
        sessions = self.repo.sessions[self.repo.sessions["id"].isin(datasets["eid"])]
        metadata = {"origin": self.origin, "date_created": self.date_created.replace("T", " ")[:16],
                    "database_tags": [tag] if tag else []}
        with tempfile.TemporaryDirectory() as folder:
            write_sessions(sessions, Path(folder, "sessions.pqt"), metadata)
            write_datasets(datasets, Path(folder, "datasets.pqt"), metadata)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as zipped:
                for name in ("sessions.pqt", "datasets.pqt"):
                    zipped.write(Path(folder, name), name)
        return buffer.getvalue()

    def data_file(self, path: str) -> bytes | None:
        """The bytes of a data server path (``<session path>/<rel_path with uuid>``), or None."""
        found = re.search(rf"\.({UUID})\.[^./]+$", path)
        if not found or found.group(1) not in self.datasets.index:
            return None
        file = self._file_of(found.group(1))
        return file.read_bytes() if file.is_file() else None

    def _file_of(self, did: str) -> Path:
        """The repository file of a dataset (looked up once: pandas lookups per request would make
        the server, not the clients, what a benchmark measures)."""
        files = self.__dict__.setdefault("_files", {})
        if did not in files:
            files[did] = self.repo.dataset_path(did)
        return files[did]


def _paged(items: list, query: dict[str, str], page_size: int | None, url: str) -> Any:
    """A list as Alyx answers it: the list, or ``{count, next, previous, results}`` with a limit."""
    limit = int(query["limit"]) if "limit" in query else page_size
    if not limit:
        return items
    offset = int(query.get("offset", 0))
    rest = {k: v for k, v in query.items() if k not in ("limit", "offset")}

    def page(at: int) -> str | None:
        if at < 0 or at >= len(items):
            return None
        return url + "?" + urllib.parse.urlencode({**rest, "limit": limit, "offset": at})

    return {"count": len(items), "next": page(offset + limit), "previous": page(offset - limit) if offset else None,
            "results": items[offset:offset + limit]}


class _Handler(BaseHTTPRequestHandler):
    alyx: AlyxServer
    protocol_version = "HTTP/1.1"
    # Buffered: the headers and a small body leave in one segment (unbuffered, the body's segment
    # waits for the client's delayed ACK, 40 ms a request: the server would be what is measured).
    wbufsize = 1 << 16

    def log_message(self, *args: Any) -> None:   # (quiet: tests read ``alyx.requests`` instead)
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None,
              fault: Fault | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if fault is not None and fault.kind == "trickle":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(fault.seconds)
            self.wfile.write(body[len(body) // 2:])
            return
        if fault is not None and fault.kind == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode())

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Token ") and header[6:] in self.alyx.tokens:
            return True
        self._json(403 if header.startswith("Token ") else 401,
                   {"detail": "Invalid token."} if header.startswith("Token ")
                   else {"detail": "Authentication credentials were not provided."})
        return False

    def do_POST(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        self.alyx.requests.append(("POST", self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if split.path.rstrip("/") == "/auth-token":
            form = dict(urllib.parse.parse_qsl(body))
            if (form.get("username"), form.get("password")) == (USER, PASSWORD):
                token = secrets.token_hex(20)
                self.alyx.tokens.add(token)
                return self._json(200, {"token": token})
            return self._json(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
        self._json(405, {"detail": "Method not allowed."})

    def do_PATCH(self) -> None:
        self.alyx.requests.append(("PATCH", self.path))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self._authorised():
            self._json(200, {})

    def do_GET(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        query = dict(urllib.parse.parse_qsl(split.query))
        self.alyx.requests.append(("GET", self.path))
        self.alyx.headers.append(dict(self.headers))
        fault = self.alyx.take_fault(path)
        if fault is not None:
            if fault.kind == "status":
                return self._json(fault.status, {"detail": f"planned fault {fault.status}"})
            if fault.kind == "slow" and not path.startswith("/data/"):   # (a data file's: while it is served)
                time.sleep(fault.seconds)
            if fault.kind == "expire_token":
                self.alyx.tokens.clear()
        if path.startswith("/data/"):
            return self._data(path[len("/data/"):], fault)
        if not self._authorised():
            return
        base = self.alyx.url
        parts = path.strip("/").split("/")
        if parts[0] == "api" and parts[1:] == ["schema"]:
            return self._send(200, SCHEMA.read_bytes(), "application/vnd.oai.openapi+json")
        if parts[0] == "sessions" and len(parts) == 1:
            return self._json(200, _paged(self.alyx.search(query), query, self.alyx.page_size, base + "/sessions"))
        if parts[0] == "sessions" and len(parts) == 2 and parts[1] in self.alyx.sessions.index:
            eid = parts[1]
            record = self.alyx.session_record(eid)
            # (as Alyx: only datasets with a file on the data server)
            ids = [d for d in self.alyx.datasets.index[self.alyx.datasets["eid"] == eid] if self.alyx.on_server(d)]
            record["data_dataset_session_related"] = [self.alyx.session_dataset(d) for d in ids] + \
                self.alyx.extra_datasets.get(eid, [])
            return self._json(200, record)
        if parts[0] == "datasets" and len(parts) == 1:
            return self._json(200, _paged(self.alyx.list_datasets(query), query, self.alyx.page_size, base + "/datasets"))
        if parts[0] == "datasets" and len(parts) == 2 and parts[1] in self.alyx.datasets.index:
            return self._json(200, self.alyx.dataset_record(parts[1]))
        if parts[0] == "files" and len(parts) == 1:
            did = re.search(UUID, query.get("django", ""))
            return self._json(200, [{"url": f"{base}/files/{did.group(0)}", "json": None}] if did else [])
        if parts[0] == "cache" and parts[1:2] == ["info"]:
            tag = parts[2] if len(parts) > 2 else None
            if tag and tag not in self.alyx.tags:
                return self._json(404, {"detail": "Not found."})
            return self._json(200, {"date_created": self.alyx.date_created, "origin": self.alyx.origin,
                                    "min_api_version": "2.0.0", "database_tags": [tag] if tag else [],
                                    "location": f"{base}/cache{'/' + tag if tag else ''}.zip"})
        if parts[0] == "cache.zip" or (parts[0] == "cache" and len(parts) == 2 and parts[1].endswith(".zip")):
            tag = parts[1][:-4] if parts[0] == "cache" else None
            return self._send(200, self.alyx.cache_zip(tag), "application/zip")
        self._json(404, {"detail": "Not found."})

    def _data(self, path: str, fault: Fault | None) -> None:
        login = self.alyx.data_login
        if login:
            import base64

            expected = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                return self._send(401, b"", "text/plain", {"WWW-Authenticate": 'Basic realm="data"'})
        body = self.alyx.data_file(path)
        if body is None:
            return self._send(404, b"Not found", "text/plain")
        if fault is not None and fault.kind == "corrupt" and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        alyx = self.alyx
        with alyx._lock:
            alyx._serving += 1
            alyx.most_at_once = max(alyx.most_at_once, alyx._serving)
        try:
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            self._send(200, body, "application/octet-stream", fault=fault)
        finally:
            with alyx._lock:
                alyx._serving -= 1


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
