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


def _time(value: Any) -> str | None:
    return None if value is None else value.replace(tzinfo=None).isoformat() + "Z"


def export_rocrate(store: Store, folder: str | os.PathLike, *, run: str | None = None, scope: str | None = None,
                   label: str | None = None) -> Path:
    """Write the crate of the selection into ``folder`` (created if needed); return the folder."""
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
    graph: list[dict] = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"},
         "conformsTo": {"@id": RO_CRATE}},
        {"@id": "./", "@type": "Dataset", "name": f"oneprov provenance of {selection.what}",
         "description": "Which ONE datasets, and which revision of each, these analysis runs loaded.",
         "datePublished": _time(max((r["started_at"] for r in selection.runs), default=None)),
         "license": {"@id": "https://spdx.org/licenses/CC-BY-4.0"},
         "conformsTo": [{"@id": PROCESS_RUN_CRATE}],
         "hasPart": [{"@id": x["@id"]} for x in results],
         "mentions": [{"@id": f"#run-{r['id']}"} for r in selection.runs]},
        {"@id": PROCESS_RUN_CRATE, "@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"},
        {"@id": "https://spdx.org/licenses/CC-BY-4.0", "@type": "CreativeWork", "name": "CC BY 4.0"},
        *results, *datasets.values(),
    ]
    seen_agents: set[str] = set()
    for r in selection.runs:
        agent = f"#person-{r.get('user_name') or 'unknown'}"
        if agent not in seen_agents:
            graph.append({"@id": agent, "@type": "Person", "name": r.get("user_name") or "unknown"})
            seen_agents.add(agent)
        instrument = f"#script-{r['script_sha256']}" if r.get("script_sha256") else "#oneprov"
        if not any(node["@id"] == instrument for node in graph):
            graph.append({"@id": instrument, "@type": "SoftwareApplication",
                          "name": os.path.basename(r.get("script_path") or "") or "oneprov",
                          **({"description": f"{r['script_path']} (sha256 {r['script_sha256']}"
                              + (f", git {r['git_commit']}{' dirty' if r.get('git_dirty') else ''}" if r.get("git_commit") else "")
                              + ")"} if r.get("script_sha256") else {"description": "an interactive session (no script file)"})})
        objects = sorted({_dataset_id(l, base_urls) for l in selection.loads if l["run_id"] == r["id"]})
        action = {"@id": f"#run-{r['id']}", "@type": "CreateAction", "name": f"run {r.get('label') or r['id']}",
                  "identifier": r["id"], "startTime": _time(r["started_at"]), "agent": {"@id": agent},
                  "instrument": {"@id": instrument}, "object": [{"@id": o} for o in objects],
                  "result": [{"@id": x["@id"]} for x in results],
                  "actionStatus": {"@id": "http://schema.org/CompletedActionStatus" if r["status"] == "finished"
                                   else "http://schema.org/FailedActionStatus" if r["status"] == "failed"
                                   else "http://schema.org/ActiveActionStatus"}}
        if r["finished_at"]:
            action["endTime"] = _time(r["finished_at"])
        graph.append(action)
    return graph


__all__ = ["PROCESS_RUN_CRATE", "RO_CRATE", "export_rocrate"]
