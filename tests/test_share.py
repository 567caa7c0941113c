"""Provenance others can read (issue 15): W3C PROV-JSON, read back by the ``prov`` package, and an
RO-Crate; both carry the same datasets as ``oneprov show`` and the loaded-ids CSV."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from prov.model import ProvActivity, ProvAgent, ProvDocument, ProvEntity, ProvGeneration, ProvUsage

import oneprov
from oneprov.audit import show
from oneprov.synthetic import SORTING, make_repository


@pytest.fixture
def paper(tmp_path):
    """Two runs with the label 'paper' (one with a scope), and another run."""
    repo = make_repository(tmp_path / "alf")
    db = tmp_path / "p.sqlite"
    for label, eid in (("paper", repo.eid), ("paper", repo.eids[1]), ("other", repo.eids[2])):
        one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label=label)
        one.record_loaded = True
        with one.scope("fig3"):
            one.load_object(eid, "trials")
        one.load_dataset(eid, "spikes.times.npy", collection=SORTING)
        one.save_loaded_ids(path=tmp_path / f"{one.run_id}.csv")
        one.close()
    return repo, db


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "oneprov", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_prov_json_reads_back_with_the_store_s_counts(paper, tmp_path):
    repo, db = paper
    out = tmp_path / "paper.prov.json"
    cli("export", "prov", "--label", "paper", "-o", out, "--db", db)
    document = ProvDocument.deserialize(source=str(out), format="json")
    records = document.get_records()
    store = oneprov.open_store(db)
    runs = store.sql("SELECT id FROM runs WHERE label = 'paper'")["id"].tolist()
    events = store.sql("SELECT e.record_id FROM access_events e JOIN runs r ON r.id = e.run_id WHERE r.label = 'paper' "
                       "AND e.outcome IN ('loaded', 'download_only')")
    exported = store.sql("SELECT x.id FROM exports x JOIN runs r ON r.id = x.run_id WHERE r.label = 'paper'")
    assert {str(a.identifier).split(":")[-1] for a in records if isinstance(a, ProvActivity)} == set(runs)
    assert sum(isinstance(r, ProvUsage) for r in records) == len(events)
    assert sum(isinstance(r, ProvGeneration) for r in records) == len(exported) == 2
    entities = [r for r in records if isinstance(r, ProvEntity)]
    datasets = [e for e in entities if "DatasetRecord" in str(e.get_attribute("prov:type"))]
    assert len(datasets) == events["record_id"].nunique()
    assert any(isinstance(r, ProvAgent) for r in records)
    plans = [e for e in entities if "Plan" in str(e.get_attribute("prov:type"))]
    assert plans and all(list(p.get_attribute("oneprov:sha256")) for p in plans)


def test_a_scope_selects_only_its_loads(paper, tmp_path):
    repo, db = paper
    out = tmp_path / "fig3.json"
    cli("export", "prov", "--scope", "fig3", "-o", out, "--db", db)
    doc = json.loads(out.read_text())
    used = [u["prov:entity"] for u in doc["used"].values()]
    store = oneprov.open_store(db)
    n = store.sql("SELECT count(*) AS n FROM access_events WHERE scope = 'fig3' AND outcome = 'loaded'")["n"].iloc[0]
    assert len(used) == n and len(doc["activity"]) == 3


def test_the_crate_show_and_the_csv_agree_on_the_datasets(paper, tmp_path):
    repo, db = paper
    store = oneprov.open_store(db)
    run = store.resolve_run("other")
    crate = tmp_path / "crate"
    cli("export", "rocrate", "--run", run, "-o", crate, "--db", db)
    graph = {node["@id"]: node for node in json.loads((crate / "ro-crate-metadata.json").read_text())["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"]["@id"] == "https://w3id.org/ro/crate/1.1"
    action = graph[f"#run-{run}"]
    assert action["@type"] == "CreateAction" and action["startTime"].endswith("+00:00") and action["endTime"]
    crate_ids = {graph[o["@id"]]["identifier"] for o in action["object"]}
    csv_ids = set(pd.read_csv(crate / "loaded_dataset_uuids.csv").iloc[:, 0])
    own_csv = set(pd.read_csv(tmp_path / f"{run}.csv").iloc[:, 0])
    shown = show(store, run)
    loaded = store.sql("SELECT DISTINCT dataset_id FROM access_events WHERE run_id = :r AND outcome = 'loaded'",
                       {"r": run})["dataset_id"]
    assert crate_ids == csv_ids == own_csv == set(loaded)
    assert sum(o["events"] for o in shown["outcomes"] if o["outcome"] == "loaded") >= len(crate_ids)
    prov = tmp_path / "run.json"
    cli("export", "prov", "--run", run, "-o", prov, "--db", db)
    prov_ids = {e["oneprov:uuid"] for e in json.loads(prov.read_text())["entity"].values() if "oneprov:uuid" in e}
    assert prov_ids == crate_ids
    parts = {part["@id"] for part in graph["./"]["hasPart"]}
    assert parts == {"loaded_dataset_uuids.csv", "loaded_session_uuids.csv"} | {o["@id"] for o in action["object"]}
    assert (crate / "loaded_dataset_uuids.csv").exists() and (crate / "loaded_session_uuids.csv").exists()


# -- the crate checked by a real RO-Crate validator, offline ----------------------------------------

RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.1/context"


def _offline_validator_cache(path: Path) -> Path:
    """An HTTP cache for ``rocrate-validator --offline`` holding the one document it fetches: the
    RO-Crate 1.1 JSON-LD context, as the ``rocrate`` package (ro-crate-py) ships it."""
    import io
    from importlib.resources import files

    import requests_cache
    import urllib3
    from requests.adapters import HTTPAdapter

    body = (files("rocrate") / "data" / "ro-crate.jsonld").read_bytes()
    assert json.loads(body)["@id"] == RO_CRATE_CONTEXT      # (a later ro-crate-py ships another version)

    class Packaged(HTTPAdapter):
        def send(self, request, **kwargs):
            raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers={"Content-Type": "application/ld+json"},
                                       status=200, preload_content=False, request_url=request.url)
            return self.build_response(request, raw)

    session = requests_cache.CachedSession(cache_name=str(path), backend="sqlite", expire_after=-1)
    session.mount("https://w3id.org/", Packaged())
    assert session.get(RO_CRATE_CONTEXT).status_code == 200
    session.close()
    return path


def _validate(crate: Path, cache: Path, severity: str) -> dict:
    """The validator's JSON report on ``crate`` against the Process Run Crate 0.5 profile."""
    done = subprocess.run([Path(sys.executable).with_name("rocrate-validator"), "validate", "--offline",
                           "--cache-path", cache, "-p", "process-run-crate-0.5", "-l", severity, "-f", "json",
                           crate], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    report, _ = json.JSONDecoder().raw_decode(done.stdout)   # (a log report may follow the JSON)
    assert (done.returncode == 0) == report["passed"], done.stderr
    return report


def test_the_crate_conforms_to_the_process_run_crate_profile(paper, tmp_path):
    """Validated offline by roc-validator: every REQUIRED check of RO-Crate 1.1 and Process Run
    Crate 0.5 passes, for one run and for a label of two; of the RECOMMENDED ones, only those that
    need facts the store does not have: an organisation, a URL for a dataset seen in local mode, an
    http URL for a script outside a repository with a remote (its id is then the ``ni:`` URI of
    its sha256, absolute but not http)."""
    repo, db = paper
    cache = _offline_validator_cache(tmp_path / "http-cache")
    store = oneprov.open_store(db)
    for what in (("--run", store.resolve_run("other")), ("--label", "paper")):
        crate = tmp_path / f"crate-{what[1]}"
        cli("export", "rocrate", *what, "-o", crate, "--db", db)
        report = _validate(crate, cache, "required")
        assert report["passed"], [i["message"] for i in report["issues"]]
        recommended = _validate(crate, cache, "recommended")
        unknowable = {"ro-crate-1.1_22.3", "ro-crate-1.1_28.1", "ro-crate-1.1_30.2", "ro-crate-1.1_30.3",
                      "process-run-crate-0.5_3.2", "process-run-crate-0.5_5.1"}
        assert {i["check"]["identifier"] for i in recommended["issues"]} <= unknowable, recommended["issues"]
    store.close()


def test_the_validator_sees_a_broken_crate(paper, tmp_path):
    """(The validation above can fail: a crate whose run has no datasets linked from the root fails.)"""
    repo, db = paper
    crate = tmp_path / "crate"
    cli("export", "rocrate", "--label", "paper", "-o", crate, "--db", db)
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    for node in metadata["@graph"]:
        if node["@id"] == "./":
            node["hasPart"] = [p for p in node["hasPart"] if not p["@id"].startswith("urn:uuid:")]
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    report = _validate(crate, _offline_validator_cache(tmp_path / "http-cache"), "required")
    assert not report["passed"]
    assert {i["check"]["identifier"] for i in report["issues"]} == {"ro-crate-1.1_14.1"}


def test_exactly_one_selection_is_required(paper, tmp_path):
    repo, db = paper
    done = subprocess.run([sys.executable, "-m", "oneprov", "export", "prov", "--run", "last", "--label", "paper",
                           "-o", tmp_path / "x.json", "--db", db], capture_output=True, text=True)
    assert done.returncode == 1 and "exactly one of --run, --scope or --label" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.json").exists()


def test_serve_runs_datasette_read_only_with_the_schema_and_canned_queries(paper, tmp_path):
    import re
    import time

    import requests

    from oneprov.store.schema import DESCRIPTIONS

    repo, db = paper
    before = db.read_bytes()
    log = tmp_path / "datasette.log"   # (a file, not a pipe: a full pipe would stall the server's logging)
    server = subprocess.Popen([sys.executable, "-m", "oneprov", "serve", "--db", db, "--port", "0"],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = None, time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
            url = found.group(0) if found else None
            time.sleep(0.1)
        assert url, "Datasette did not start"
        name = db.stem
        page = requests.get(f"{url}/{name}/loaded_datasets.json?_shape=array", timeout=10)
        assert page.ok and len(page.json()) == oneprov.open_store(db).sql(
            "SELECT count(*) AS n FROM loaded_datasets")["n"].iloc[0]
        meta = requests.get(f"{url}/-/metadata.json", timeout=10).json()["databases"][name]
        assert meta["tables"]["access_log"]["description"] == "view: one row is " + DESCRIPTIONS["access_log"]
        from oneprov.store.schema import public_schema
        for entry in public_schema():                 # every column of every view and table is described
            assert set(meta["tables"][entry["name"]]["columns"]) == set(entry["columns"])
            assert all(meta["tables"][entry["name"]]["columns"].values())
        # a view's value that names a row of another view or table is a link to that row
        store = oneprov.open_store(db)
        run = store.sql("SELECT run_id FROM loaded_datasets LIMIT 1")["run_id"].iloc[0]
        html = requests.get(f"{url}/{name}/loaded_datasets", params={"run_id": run}, timeout=10).text
        link = f'href="/{name}/runs?id={run}"'
        assert link in html, html[:2000]
        target = requests.get(f"{url}/{name}/runs.json?_shape=array&id={run}", timeout=10).json()
        assert [r["id"] for r in target] == [run]
        uuid = store.sql("SELECT dataset_uuid FROM loaded_datasets LIMIT 1")["dataset_uuid"].iloc[0]
        html = requests.get(f"{url}/{name}/loaded_datasets", params={"dataset_uuid": uuid}, timeout=10).text
        assert f'href="/{name}/datasets?id={uuid}"' in html
        assert requests.get(f"{url}/{name}/datasets.json?_shape=array&id={uuid}", timeout=10).json()
        # and a table's foreign key too (Datasette's own), labelled with the run's label
        html = requests.get(f"{url}/{name}/access_events", params={"run_id": run}, timeout=10).text
        assert f'href="/{name}/runs/{run}"' in html
        counts = requests.get(f"{url}/{name}/loads_per_project_per_month.json?_shape=array", timeout=10).json()
        assert sum(r["loads"] for r in counts) == oneprov.open_store(db).sql(
            "SELECT count(*) AS n FROM access_log WHERE outcome IN ('loaded', 'download_only')")["n"].iloc[0]
        critical = requests.get(f"{url}/{name}/runs_that_used_data_now_critical.json?_shape=array", timeout=10)
        assert critical.ok and critical.json() == []
        assert requests.get(f"{url}/{name}/revisions_used_per_dataset.json?_shape=array", timeout=10).json()
        refused = requests.get(f"{url}/{name}.json", params={"sql": "DELETE FROM runs"}, timeout=10)
        assert refused.status_code == 400 and "SELECT" in refused.text
        refused = requests.get(f"{url}/{name}.json", params={"sql": "UPDATE runs SET label = 'x'"}, timeout=10)
        assert refused.status_code == 400
    finally:
        children = [int(c) for c in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        server.terminate()
        server.wait(10)
    assert len(children) == 1                                # Datasette, which stops with oneprov serve
    deadline = time.monotonic() + 10
    while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{children[0]}").exists(), "Datasette kept running after oneprov serve stopped"
    assert db.read_bytes() == before


def chromium() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise AssertionError("no Chromium: .ci/run installs it (apt-get install chromium)")


def test_the_report_renders_in_a_real_browser_with_the_store_s_numbers(paper, tmp_path):
    import re

    repo, db = paper
    out = tmp_path / "report.html"
    cli("report", "--label", "paper", "-o", out, "--db", db)
    text = out.read_text()
    # nothing to fetch: no stylesheet, script or image from elsewhere (namespaces are names, not fetched)
    assert not re.search(r"""(?:src|href)\s*=\s*["']https?://""", text) and "<link" not in text
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=5000", "--dump-dom", out.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert "<svg" in dom, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-plots-drawn="3"' in body and "data-error" not in body
    store = oneprov.open_store(db)

    def count(name):
        return int(re.search(rf'data-count="{name}">(\d+)<', dom).group(1))
    paper_runs = store.sql("SELECT id FROM runs WHERE label = 'paper'")["id"].tolist()
    loads = store.sql("SELECT count(*) AS n FROM access_events e JOIN runs r ON r.id = e.run_id "
                      "WHERE r.label = 'paper' AND e.outcome IN ('loaded', 'download_only')")["n"].iloc[0]
    assert count("runs") == len(paper_runs) == count("runs-rows") == 2
    assert count("loads") == loads
    assert count("stale") == 0 and count("exports-rows") == 2
    assert count("scopes-rows") == 2   # fig3 and (no scope)


def test_every_link_names_real_columns():
    """Each link of the web view goes from a column of a view or table to a column of another."""
    from oneprov.store.schema import LINKS, public_schema

    columns = {entry["name"]: set(entry["columns"]) for entry in public_schema()}
    for source, links in LINKS.items():
        for column, (target, key) in links.items():
            assert column in columns[source] and key in columns[target], (source, column, target, key)
