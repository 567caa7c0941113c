"""An RO-Crate 1.1 of a run, a scope or a label, as a Process Run Crate: ``oneprov export rocrate``.

The crate is a folder: ``ro-crate-metadata.json`` and the loaded-ids CSVs (dataset and session
UUIDs, ONE's format) of what it describes. Each run is a ``CreateAction`` (its start and end, its
agent, the script as its instrument, the datasets it loaded as its objects, the CSVs as its
results); each dataset as seen is a ``File`` whose ``@id`` is its Alyx URL (or ``urn:uuid:``),
its UUID as ``identifier``. The same facts as ``oneprov show`` and the loaded-ids CSV.

>>> import tempfile
>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run("demo", label="paper")
>>> crate = export_rocrate(store, tempfile.mkdtemp(), label="paper")
>>> (crate / "ro-crate-metadata.json").exists()
True
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from ..files import write_atomically
from ..store import Store
from .one_files import export_loaded_ids
from .selection import Selection, select

RO_CRATE = "https://w3id.org/ro/crate/1.1"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
ONEPROV_URL = "https://pypi.org/project/oneprov/"


def _time(value: Any) -> str | None:
    """ISO 8601 in UTC to the millisecond, with an explicit offset: the form the Process Run Crate
    profile checks (``2024-05-01T12:00:00.123+00:00``)."""
    return None if value is None else value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "+00:00"


def _one(values: list[dict]) -> dict | list[dict]:
    """A single value rather than a singleton list (RO-Crate 1.1's JSON-LD recommendation)."""
    return values[0] if len(values) == 1 else values


def _instrument(run: dict) -> dict:
    """The script a run ran, as a ``SoftwareApplication`` whose id names its content (RFC 6920
    ``ni:`` URI of its sha256); without a script file, oneprov itself (an interactive session)."""
    versions = run.get("versions")
    version = versions.get("oneprov") if isinstance(versions, dict) else None
    sha = run.get("script_sha256")
    if not sha:
        return {"@id": ONEPROV_URL, "@type": "SoftwareApplication", "name": "oneprov", "url": ONEPROV_URL,
                **({"softwareVersion": version} if version else {}),
                "description": "an interactive session (no script file), recorded by oneprov"}
    digest = base64.urlsafe_b64encode(bytes.fromhex(sha)).decode().rstrip("=")
    git = f", git {run['git_commit']}{' (uncommitted changes)' if run.get('git_dirty') else ''}" if run.get("git_commit") else ""
    return {"@id": f"ni:///sha-256;{digest}", "@type": "SoftwareApplication",
            "name": os.path.basename(run.get("script_path") or "") or "script",
            "softwareVersion": run.get("git_commit") or f"sha256 {sha}",
            **({"url": run["git_remote"]} if run.get("git_remote") else {}),
            "description": f"{run.get('script_path')} (sha256 {sha}{git})"}


def export_rocrate(store: Store, folder: str | os.PathLike, *, run: str | None = None, scope: str | None = None,
                   label: str | None = None) -> Path:
    """Write the crate of the selection into ``folder`` (created if needed); return the folder.

    The crate holds ``ro-crate-metadata.json`` and, when the selection loaded datasets,
    ``loaded_dataset_uuids.csv`` and ``loaded_session_uuids.csv`` (each recorded in the store's exports).

    Parameters
    ----------
    store : Store
        The store.
    folder : str or os.PathLike
        The crate's folder; created with its parents if needed. Files of the same names are replaced.
    run : str, optional
        A run id: that run.
    scope : str, optional
        A scope name: the loads made in it, in every run.
    label : str, optional
        A run label: every run with it.

    Returns
    -------
    pathlib.Path
        The crate's folder.

    Raises
    ------
    BadInputError
        Not exactly one of ``run``, ``scope`` and ``label`` is given, or no run matches it.
    OSError
        The folder or a file cannot be written.
    DatabaseError
        The database cannot be read or written.

    Warns
    -----
    UserWarning
        The selection loaded no dataset: no CSV is written.
    """
    crate = Path(folder)
    crate.mkdir(parents=True, exist_ok=True)
    selection = select(store, run=run, scope=scope, label=label)
    filters = {"run": run} if run else {"scope": scope} if scope else {"label": label}
    csvs = []
    for sessions_only, name in ((False, "loaded_dataset_uuids.csv"), (True, "loaded_session_uuids.csv")):
        ids, written = export_loaded_ids(store, crate, path=crate / name, sessions_only=sessions_only, **filters)
        if written is not None:
            csvs.append((name, len(ids), sessions_only))
    graph = _graph(selection, csvs)
    text = json.dumps({"@context": f"{RO_CRATE}/context", "@graph": graph}, indent=1)
    write_atomically(crate / "ro-crate-metadata.json", lambda f: f.write(text.encode()))
    return crate


def _dataset_id(load: dict, base_urls: dict) -> str:
    base = base_urls.get(load["run_id"])
    return f"{base.rstrip('/')}/datasets/{load['uuid']}" if base else f"urn:uuid:{load['uuid']}"


def _graph(selection: Selection, csvs: list[tuple[str, int, bool]]) -> list[dict]:
    base_urls = {r["id"]: r.get("base_url") for r in selection.runs}
    datasets = {}
    for d in selection.datasets():
        datasets[_dataset_id(d, base_urls)] = {
            "@id": _dataset_id(d, base_urls), "@type": "File", "name": d["rel_path"], "identifier": d["uuid"],
            "encodingFormat": "application/octet-stream", "description":
                f"dataset {d['uuid']} of session {d['session_uuid']}: revision {d['revision'] or '(unrevised)'}, "
                f"QC {d['qc']}" + (f", md5 {d['hash']}" if d["hash"] else ""),
            **({"contentSize": str(int(d["file_size"]))} if d["file_size"] else {})}
    results = [{"@id": name, "@type": "File", "name": name, "encodingFormat": "text/csv",
                "description": f"{n} {'session' if sessions else 'dataset'} UUIDs loaded (ONE's loaded-ids CSV)"}
               for name, n, sessions in csvs]
    root = {"@id": "./", "@type": "Dataset", "name": f"oneprov provenance of {selection.what}",
            "description": "Which ONE datasets, and which revision of each, these analysis runs loaded.",
            "datePublished": _time(max((r["started_at"] for r in selection.runs), default=None)),
            "license": {"@id": "https://spdx.org/licenses/CC-BY-4.0"},
            "conformsTo": {"@id": PROCESS_RUN_CRATE},
            "hasPart": [{"@id": x["@id"]} for x in (*results, *datasets.values())],   # (every data entity)
            "mentions": _one([{"@id": f"#run-{r['id']}"} for r in selection.runs])}
    graph: list[dict] = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"},
         "conformsTo": {"@id": RO_CRATE}},
        root,
        {"@id": PROCESS_RUN_CRATE, "@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"},
        {"@id": "https://spdx.org/licenses/CC-BY-4.0", "@type": "CreativeWork", "name": "CC BY 4.0"},
        *results, *datasets.values(),
    ]
    agents: dict[str, dict] = {}
    instruments: dict[str, dict] = {}
    for r in selection.runs:
        agent = f"#person-{r.get('user_name') or 'unknown'}"
        agents.setdefault(agent, {"@id": agent, "@type": "Person", "name": r.get("user_name") or "unknown"})
        instrument = _instrument(r)
        instruments.setdefault(instrument["@id"], instrument)
        objects = sorted({_dataset_id(l, base_urls) for l in selection.loads if l["run_id"] == r["id"]})
        action = {"@id": f"#run-{r['id']}", "@type": "CreateAction", "name": f"run {r.get('label') or r['id']}",
                  "identifier": r["id"], "startTime": _time(r["started_at"]), "agent": {"@id": agent},
                  "description": f"{r['status']} run {r['id']} of project {r.get('project')}"
                                 + (f" on {r['host']}" if r.get("host") else "")
                                 + f": {len(objects)} dataset(s) loaded",
                  "instrument": {"@id": instrument["@id"]}, "object": [{"@id": o} for o in objects],
                  "result": [{"@id": x["@id"]} for x in results],
                  # (a plain string, as the profile's examples and its validator have it)
                  "actionStatus": "http://schema.org/CompletedActionStatus" if r["status"] == "finished"
                                  else "http://schema.org/FailedActionStatus" if r["status"] == "failed"
                                  else "http://schema.org/ActiveActionStatus"}
        if r["finished_at"]:
            action["endTime"] = _time(r["finished_at"])
        graph.append(action)
    root["author"] = _one([{"@id": a} for a in agents])
    graph.extend([*agents.values(), *instruments.values()])
    return graph


__all__ = ["PROCESS_RUN_CRATE", "RO_CRATE", "export_rocrate"]
