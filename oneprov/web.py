"""A browsable, read-only view of a provenance database: ``oneprov serve`` runs Datasette on it.

Datasette (``pip install oneprov[web]``) serves the SQLite file with metadata made here from the one
description of the public views and tables (:data:`oneprov.store.schema.DESCRIPTIONS`, the text
``oneprov schema`` prints) and of each of their columns, links from a value to the row it names
(:data:`oneprov.store.schema.LINKS`, rendered by the plugin in ``datasette_plugins``), and canned
queries for the audit questions. It only reads: its SQL console takes SELECT statements only, and
no canned query writes.

>>> sorted(metadata("provenance")["databases"]["provenance"]["queries"])
['loads_per_project_per_month', 'revisions_used_per_dataset', 'runs_that_used_data_now_critical']
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .store.schema import LINKS, column_description, public_schema

#: What names a row of a table in Datasette's links to it (instead of its id).
LABELS = {"projects": "name", "runs": "label"}
#: The Datasette plugins of ``oneprov serve`` (links between views and tables).
PLUGINS = Path(__file__).parent / "datasette_plugins"

#: The audit questions, as canned queries: (name, title, SQL).
CANNED = [
    ("runs_that_used_data_now_critical", "Runs that used data now CRITICAL",
     "SELECT DISTINCT l.project, l.run_id, l.rel_path, l.revision, d.qc FROM loaded_datasets l "
     "JOIN datasets d ON d.id = l.dataset_uuid AND d.session_id = l.session_uuid AND d.rel_path = l.rel_path "
     "WHERE d.qc = 'CRITICAL' ORDER BY l.project, l.run_id, l.rel_path"),
    ("revisions_used_per_dataset", "Revisions used per dataset (collection and name)",
     "SELECT a.collection, r.name AS dataset, a.revision, count(*) AS loads, count(DISTINCT a.run_id) AS runs "
     "FROM access_log a JOIN dataset_records r ON r.uuid = a.dataset_uuid AND r.session_uuid = a.session_uuid "
     "AND r.rel_path = a.rel_path WHERE a.outcome IN ('loaded', 'download_only') "
     "GROUP BY a.collection, r.name, a.revision ORDER BY a.collection, dataset, a.revision"),
    ("loads_per_project_per_month", "Loads per project per month",
     "SELECT project, substr(event_time, 1, 7) AS month, count(*) AS loads FROM access_log "
     "WHERE outcome IN ('loaded', 'download_only') GROUP BY project, month ORDER BY project, month"),
]


def metadata(name: str) -> dict[str, Any]:
    """Datasette's metadata for the database called ``name`` (its file's stem).

    Parameters
    ----------
    name : str
        The database's name in Datasette: its file's name without the extension.

    Returns
    -------
    dict
        Datasette's metadata (JSON-ready): ``title``, ``description`` and ``databases``, whose
        entry ``name`` holds ``tables`` (each view's and table's description, column descriptions,
        label column and links) and ``queries`` (the canned queries of :data:`CANNED`).
    """
    tables = {}
    for entry in public_schema():
        table = entry["name"]
        tables[table] = {"description": f"{entry['kind']}: one row is {entry['description']}",
                         "columns": {c: column_description(table, c) for c in entry["columns"]}}
        if table in LABELS:
            tables[table]["label_column"] = LABELS[table]
        if table in LINKS:
            tables[table]["plugins"] = {"oneprov-links": {"links": LINKS[table]}}
    return {"title": "oneprov provenance", "description":
            "Which ONE datasets, and which revision of each, analyses loaded: read-only.",
            "databases": {name: {"tables": tables, "queries": {
                key: {"title": title, "sql": sql} for key, title, sql in CANNED}}}}


def serve_command(db: str | os.PathLike, metadata_file: Path, *, host: str, port: int) -> list[str]:
    """The Datasette command line that serves ``db``.

    Parameters
    ----------
    db : str or os.PathLike
        The SQLite file.
    metadata_file : pathlib.Path
        The JSON file of :func:`metadata`.
    host : str
        The address to listen on.
    port : int
        The TCP port to listen on.

    Returns
    -------
    list of str
        The command and its arguments (this Python's ``-m datasette serve ...``, with a 5 s time
        limit per query and downloads of the database off).
    """
    return [sys.executable, "-m", "datasette", "serve", str(db), "--metadata", str(metadata_file), "--host", host,
            "--port", str(port), "--plugins-dir", str(PLUGINS),
            "--setting", "sql_time_limit_ms", "5000", "--setting", "allow_download", "off"]


def serve(db: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8001) -> int:
    """Run Datasette on the SQLite file ``db`` until it is stopped; return its exit status.

    Parameters
    ----------
    db : str or os.PathLike
        The SQLite provenance database (a PostgreSQL database cannot be served).
    host : str, optional
        The address to listen on. Default "127.0.0.1": this machine only.
    port : int, optional
        The TCP port to listen on. Default 8001.

    Returns
    -------
    int
        Datasette's exit status (0 when it stopped cleanly).

    Raises
    ------
    BadInputError
        ``db`` is not a file, or Datasette is not installed (``pip install 'oneprov[web]'``).
    """
    path = Path(db)
    if not path.is_file():
        raise BadInputError(f"no SQLite provenance database at {str(path)!r} (Datasette serves SQLite files)")
    try:
        import datasette  # noqa: F401
    except ImportError:
        raise BadInputError("oneprov serve needs Datasette: pip install 'oneprov[web]'") from None
    with tempfile.TemporaryDirectory(prefix="oneprov-web-") as folder:
        meta = Path(folder) / "metadata.json"
        meta.write_text(json.dumps(metadata(path.stem), indent=1))
        server = subprocess.Popen(serve_command(path, meta, host=host, port=port))
        # Stopped (SIGTERM: a service manager, a test), oneprov stops Datasette too, and waits for it.
        before = signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            return server.wait()
        except KeyboardInterrupt:   # (Ctrl-C reached Datasette as well: it is stopping)
            server.terminate()
            server.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, before)


__all__ = ["CANNED", "metadata", "serve", "serve_command"]
