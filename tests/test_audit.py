"""Audit questions answered in one call (issue 14): what a run records about itself (``show``) and
which of its loads are stale after a newer import (``stale``), from the library and the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

import oneprov
from oneprov.audit import cutoff, diff, show, stale
from oneprov.synthetic import REVISION, SORTING, make_repository
from oneprov.tables import read_metadata, write_datasets, write_sessions


def cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "oneprov", *map(str, args)], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr
    return done


ANALYSIS = textwrap.dedent("""
    import sys
    from oneprov import ONE
    one = ONE(cache_dir=sys.argv[1], mode="local", db=sys.argv[2], label=sys.argv[3])
    one.load_dataset(sys.argv[4], "trials.intervals.npy")
    print(one.run_id)
""")


def git(folder, *args):
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                        "GIT_COMMITTER_EMAIL": "a@b"})


def test_a_run_records_its_script_git_state_and_settings(tmp_path, db_url):
    repo = make_repository(tmp_path / "alf")
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "analysis.py").write_text(ANALYSIS)
    (paper / "notes.txt").write_text("v1")
    git(paper, "init", "-q")
    git(paper, "add", ".")
    git(paper, "commit", "-q", "-m", "first")
    git(paper, "remote", "add", "origin", "https://octocat:ghp_s3cr3t@github.com/lab/paper.git")
    commit = subprocess.run(["git", "-C", str(paper), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "ONE_REVISION_LAST_BEFORE": "2030-01-01", "ONE_API_TOKEN": "tok-123", "PYTHONPATH": os.getcwd()}

    def run(label):
        done = subprocess.run([sys.executable, "analysis.py", repo.root, db_url, label, repo.eid, "--password", "hunter2"],
                              cwd=paper, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]
    clean = run("clean")
    (paper / "notes.txt").write_text("v2")   # a tracked file changed: dirty
    dirty = run("dirty")
    store = oneprov.open_store(db_url)
    a, b = show(store, clean)["run"], show(store, dirty)["run"]
    assert a["script_path"] == str(paper / "analysis.py")
    assert a["script_sha256"] == hashlib.sha256(ANALYSIS.encode()).hexdigest()
    assert a["git_commit"] == b["git_commit"] == commit
    assert (a["git_dirty"], b["git_dirty"]) == (False, True)
    assert a["git_remote"] == "https://github.com/lab/paper.git"
    assert a["cwd"] == str(paper) and a["argv"][0] == "analysis.py" and "hunter2" not in json.dumps(a["argv"])
    assert a["settings"] == {"ONE_REVISION_LAST_BEFORE": "2030-01-01"}          # ONE_API_TOKEN: a secret's name
    assert {"oneprov", "one-api", "numpy", "pandas"} <= set(a["versions"])
    if db_url.endswith(".sqlite"):
        raw = b"".join(p.read_bytes() for p in (tmp_path).glob("provenance.sqlite*"))
        assert b"ghp_s3cr3t" not in raw and b"hunter2" not in raw and b"tok-123" not in raw


def test_show_prints_the_documented_shape(tmp_path):
    repo = make_repository(tmp_path / "alf")
    db = tmp_path / "p.sqlite"
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label="fig1")
    one.record_loaded = True
    with one.scope("fig1"):
        one.load_object(repo.eid, "trials")
    one.save_loaded_ids()
    one.close()
    shown = json.loads(cli("show", "fig1", "--db", db, "--format", "json").stdout)
    assert set(shown) == {"run", "tables", "queries", "outcomes", "exports", "marks"}
    assert shown["run"]["label"] == "fig1" and shown["run"]["status"] == "finished"
    assert shown["run"]["started_at"].endswith("Z")
    assert shown["tables"][0]["origin"] == "oneprov.synthetic"
    outcomes = {(o["scope"], o["outcome"]): o["events"] for o in shown["outcomes"]}
    assert outcomes[("fig1", "loaded")] >= 3 and outcomes[("fig1", "missing")] == 1
    assert [e["kind"] for e in shown["exports"]] == ["loaded_dataset_ids"]
    table = cli("show", "fig1", "--db", db).stdout
    assert "script_sha256" in table and "loads:" in table


@pytest.fixture
def changed(tmp_path, db_url):
    """A run that loaded from tables v1; then v2 changes them in each way ``stale`` names."""
    repo = make_repository(tmp_path / "alf")
    eid = repo.eid
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db_url, label="before")
    names = ["trials.intervals.npy", "trials.choice.npy", "trials.feedbackType.npy", "_ibl_wheel.position.npy",
             "_ibl_wheel.timestamps.npy"]
    for name in names:
        one.load_dataset(eid, name)
    one.load_dataset(eid, "spikes.times.npy", collection=SORTING)      # the default revision
    one.load_dataset(repo.eids[1], "trials.intervals.npy")               # unchanged below
    before = one.run_id
    one.close()
    os.environ["ONE_REVISION_LAST_BEFORE"] = "2030-01-01"              # a run with a cutoff
    try:
        frozen = oneprov.ONE(cache_dir=repo.root, mode="local", db=db_url, label="frozen")
        frozen.load_dataset(repo.eids[1], "spikes.clusters.npy", collection=SORTING)   # the last before 2030
        frozen.close()
    finally:
        del os.environ["ONE_REVISION_LAST_BEFORE"]
    d = repo.datasets.copy()
    row = {n: (d["eid"] == eid) & (d["rel_path"] == f"alf/{n}") for n in names}
    d.loc[row["trials.intervals.npy"], "qc"] = "CRITICAL"
    d.loc[row["trials.choice.npy"], "hash"] = "0" * 32
    d.loc[row["trials.feedbackType.npy"], "file_size"] = 1
    d.loc[row["_ibl_wheel.position.npy"], "exists"] = False
    d = d[~row["_ibl_wheel.timestamps.npy"]]                           # removed from the tables
    revised = (d["eid"] == eid) & (d["rel_path"] == f"{SORTING}/#{REVISION}#/spikes.times.npy")
    d.loc[revised, "default_revision"] = False                         # the default flag moves to the old file
    d.loc[(d["eid"] == eid) & (d["rel_path"] == f"{SORTING}/spikes.times.npy"), "default_revision"] = True
    newer = d[(d["eid"] == repo.eids[1]) & (d["rel_path"] == f"{SORTING}/#{REVISION}#/spikes.clusters.npy")].copy()
    newer["id"] = "0badc0de-0000-4000-8000-000000000001"
    newer["rel_path"] = f"{SORTING}/#2025-01-01#/spikes.clusters.npy"   # a newer revision, before the cutoff
    d = pd.concat([d, newer], ignore_index=True)
    write_datasets(d, repo.datasets_table, {"origin": "oneprov.synthetic", "version": 2})
    write_sessions(repo.sessions, repo.sessions_table, {"origin": "oneprov.synthetic", "version": 2})
    oneprov.ONE(cache_dir=repo.root, mode="local", db=db_url).close()   # the newer import
    return repo, db_url, before


def test_stale_lists_exactly_the_changed_loads_with_their_reasons(changed):
    repo, db_url, before = changed
    found = stale(oneprov.open_store(db_url))
    got = sorted(zip(found["rel_path"], found["reason"]))
    assert got == sorted([
        (f"{SORTING}/#{REVISION}#/spikes.clusters.npy", "another revision now chosen"),
        ("alf/trials.intervals.npy", "now CRITICAL"),
        ("alf/trials.choice.npy", "hash changed"),
        ("alf/trials.feedbackType.npy", "size changed"),
        ("alf/_ibl_wheel.position.npy", "no longer exists"),
        ("alf/_ibl_wheel.timestamps.npy", "removed"),
        (f"{SORTING}/#{REVISION}#/spikes.times.npy", "no longer the default revision"),
        (f"{SORTING}/#{REVISION}#/spikes.times.npy", "another revision now chosen"),
    ])
    assert set(found["label"]) == {"before", "frozen"}
    chosen = found[(found["reason"] == "another revision now chosen") & (found["label"] == "before")].iloc[0]
    assert (chosen["seen"], chosen["now"]) == (REVISION, "")
    frozen = found[found["label"] == "frozen"]
    assert frozen[["rel_path", "reason", "seen", "now"]].values.tolist() == [
        [f"{SORTING}/#{REVISION}#/spikes.clusters.npy", "another revision now chosen", REVISION, "2025-01-01"]]


def test_stale_on_the_command_line_fails_a_paper_ci(changed, tmp_path):
    repo, db_url, before = changed
    done = cli("stale", "--db", db_url, "--fail-on-stale", "--format", "json", check=False)
    assert done.returncode == 3 and "8 stale load(s) in 2 run(s)" in done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 8 and set(rows[0]) == {"run_id", "label", "project", "dataset_id", "session_id", "rel_path",
                                               "reason", "seen", "now", "source", "loaded_at"}
    assert rows[0]["loaded_at"].endswith("Z")
    ndjson = cli("stale", "--db", db_url, "--format", "ndjson").stdout.splitlines()
    assert [json.loads(line) for line in ndjson] == rows
    csv = pd.read_csv(__import__("io").StringIO(cli("stale", "--db", db_url, "--format", "csv").stdout))
    assert len(csv) == 8
    cli("retire", before, "--reason", "superseded", "--db", db_url)
    cli("retire", "frozen", "--reason", "superseded", "--db", db_url)
    assert cli("stale", "--db", db_url, "--fail-on-stale").returncode == 0          # retired runs left out
    assert len(json.loads(cli("stale", "--db", db_url, "--include-retired", "--format", "json").stdout)) == 8


def test_another_cache_sharing_the_database_makes_nothing_stale(tmp_path, db_url):
    first = make_repository(tmp_path / "a")
    one = oneprov.ONE(cache_dir=first.root, mode="local", db=db_url)
    one.load_dataset(first.eid, "trials.intervals.npy")
    one.close()
    other = make_repository(tmp_path / "b")   # the same rows (same seed), one made CRITICAL in this cache only
    d = other.datasets.copy()
    d.loc[(d["eid"] == other.eid) & (d["rel_path"] == "alf/trials.intervals.npy"), "qc"] = "CRITICAL"
    write_datasets(d, other.datasets_table, {"origin": "elsewhere"})
    oneprov.ONE(cache_dir=other.root, mode="local", db=db_url).close()
    assert stale(oneprov.open_store(db_url)).empty


def test_save_cache_files_carry_their_run(tmp_path):
    repo = make_repository(tmp_path / "alf")
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=tmp_path / "p.sqlite", label="tables")
    (tmp_path / "out").mkdir()
    written = one.save_cache(tmp_path / "out", clobber=True)
    assert read_metadata(written["datasets"])["oneprov_run"] == one.run_id
    shown = show(one.store, one.run_id)
    assert sorted(e["kind"] for e in shown["exports"]) == ["datasets_table", "sessions_table"]


def loaded_paths_with_cutoff(repo, monkeypatch, cutoff_date, requests):
    """What one-api loads with ONE_REVISION_LAST_BEFORE=cutoff_date (its own filter_revision_last_before)."""
    import one.api
    from one.api import One

    monkeypatch.setattr(one.api, "REVISION_LAST_BEFORE", cutoff_date)
    theirs = One(cache_dir=repo.root, mode="local")
    return [theirs.load_dataset(eid, name, collection=collection, download_only=True).relative_to(
        repo.session_dir(eid)).as_posix() for eid, name, collection in requests]


def test_cutoff_gives_a_date_with_which_one_api_loads_the_same_revisions(tmp_path, monkeypatch):
    repo = make_repository(tmp_path / "alf")
    db = tmp_path / "p.sqlite"
    requests = [(repo.eid, "spikes.times.npy", SORTING), (repo.eids[1], "spikes.clusters.npy", SORTING),
                (repo.eid, "trials.intervals.npy", "alf")]
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label="defaults")
    loaded = [one.load_dataset(e, n, collection=c, download_only=True).relative_to(repo.session_dir(e)).as_posix()
              for e, n, c in requests]
    one.close()
    found = json.loads(cli("cutoff", "defaults", "--db", db, "--format", "json").stdout)
    assert set(found) == {"run_id", "reproducible", "from", "before", "proposed", "loads", "unexplained",
                          "default_not_last"}
    assert found["reproducible"] and found["from"] == REVISION and found["before"] is None
    assert loaded_paths_with_cutoff(repo, monkeypatch, found["proposed"], requests) == loaded
    # the unrevised spikes, as an old analysis loaded them: reproduced by a date before the revision
    monkeypatch.setenv("ONE_REVISION_LAST_BEFORE", "2024-01-01")
    old = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label="old")
    loaded = [old.load_dataset(e, n, collection=c, download_only=True).relative_to(repo.session_dir(e)).as_posix()
              for e, n, c in requests]
    old.close()
    found = cutoff(oneprov.open_store(db), oneprov.open_store(db).resolve_run("old"))
    assert found["reproducible"] and found["from"] is None and found["before"] == REVISION
    assert loaded_paths_with_cutoff(repo, monkeypatch, found["proposed"], requests) == loaded
    assert "#" not in "".join(loaded)


def test_cutoff_names_the_loads_no_date_explains(tmp_path):
    repo = make_repository(tmp_path / "alf")
    db = tmp_path / "p.sqlite"
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label="mixed")
    one.load_dataset(repo.eid, "spikes.times.npy", collection=SORTING)                   # the revised default
    one.load_dataset(repo.eid, "spikes.clusters.npy", collection=SORTING, revision="")   # the unrevised file
    one.close()
    found = cutoff(one.store, one.run_id)
    assert not found["reproducible"] and found["loads"] == 2 and len(found["unexplained"]) == 1
    table = cli("cutoff", "mixed", "--db", db).stdout
    assert "no single date reproduces every load" in table


ANALYSIS_STEPS = [("trials.intervals.npy", "alf"), ("trials.choice.npy", "alf"), ("trials.feedbackType.npy", "alf"),
                  ("spikes.times.npy", SORTING), ("spikes.clusters.npy", SORTING)]


def analysis(repo, db, label, cutoff_date=None, monkeypatch=None):
    """The same analysis: a search and five loads (each allowed to fail)."""
    from one.alf.exceptions import ALFObjectNotFound

    if cutoff_date and monkeypatch:
        monkeypatch.setenv("ONE_REVISION_LAST_BEFORE", cutoff_date)
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label=label)
    one.search(lab="lab")
    for name, collection in ANALYSIS_STEPS:
        try:
            one.load_dataset(repo.eid, name, collection=collection)
        except ALFObjectNotFound:
            pass
    one.close()
    if monkeypatch:
        monkeypatch.delenv("ONE_REVISION_LAST_BEFORE", raising=False)
    return one.run_id


def test_diff_explains_each_difference_of_two_runs(tmp_path, db_url, monkeypatch):
    repo = make_repository(tmp_path / "alf")
    before = analysis(repo, db_url, "before")
    d = repo.datasets.copy()
    at = lambda rel: (d["eid"] == repo.eid) & (d["rel_path"] == rel)   # noqa: E731
    d.loc[at("alf/trials.intervals.npy"), "qc"] = "CRITICAL"           # dropped by ONE's filter: not loaded
    choice = repo.dataset_path(d.loc[at("alf/trials.choice.npy"), "id"].iloc[0])
    import numpy as np
    np.save(choice, np.arange(7))                                        # same id, another file: hash and size
    d.loc[at("alf/trials.choice.npy"), "hash"] = hashlib.md5(choice.read_bytes()).hexdigest()
    d.loc[at("alf/trials.choice.npy"), "file_size"] = choice.stat().st_size
    d.loc[at(f"{SORTING}/#{REVISION}#/spikes.times.npy"), "default_revision"] = False
    d.loc[at(f"{SORTING}/spikes.times.npy"), "default_revision"] = True   # the default moves to the old file
    sessions = repo.sessions[repo.sessions["id"] != repo.eids[-1]]        # a session left out
    d = d[d["eid"] != repo.eids[-1]]
    write_datasets(d, repo.datasets_table, {"origin": "oneprov.synthetic", "version": 2})
    write_sessions(sessions, repo.sessions_table, {"origin": "oneprov.synthetic", "version": 2})
    after = analysis(repo, db_url, "after")
    found = diff(oneprov.open_store(db_url), before, after)
    changes = {(r.change, r.name, r.cause) for r in found.itertuples()}
    assert ("only in A", "trials.intervals.npy", None) in changes
    assert ("other revision", "spikes.times.npy", "default flag") in changes
    assert {("hash changed", "trials.choice.npy", None), ("size changed", "trials.choice.npy", None)} <= changes
    assert ("search", None, '{"details": false, "laboratory": "lab"}') in changes
    assert len(changes) == 5
    assert not any(r.name == "spikes.clusters.npy" for r in found.itertuples())   # the same load both times
    rows = json.loads(cli("diff", before, after, "--db", db_url, "--format", "json").stdout)
    assert {r["change"] for r in rows} == {c for c, _, _ in changes} and set(rows[0]) == set(found.columns)
    # the cutoff as the cause
    old = analysis(repo, db_url, "old", cutoff_date="2024-01-01", monkeypatch=monkeypatch)
    causes = {r.cause for r in diff(oneprov.open_store(db_url), after, old).itertuples() if r.change == "other revision"}
    assert causes == {"cutoff (none / 2024-01-01)"}


def test_schema_lists_the_public_views_and_tables_as_the_readme_does():
    from oneprov.store.schema import PUBLIC_VIEWS, metadata, public_schema

    rows = json.loads(cli("schema", "--format", "json").stdout)
    assert rows == json.loads(json.dumps(public_schema()))
    assert {r["name"] for r in rows} == {*PUBLIC_VIEWS, "sessions", "datasets", "query_sessions", "query_datasets",
                                         *metadata.tables}
    readme = (__import__("pathlib").Path(__file__).parent.parent / "README.md").read_text()
    for r in rows:
        assert f"| `{r['name']}` | {r['kind']} | `{', '.join(r['columns'])}` | {r['description']} |" in readme, r["name"]


def test_schema_of_one_view_describes_each_column_and_a_wrong_name_is_one_line():
    from oneprov.store.schema import PUBLIC_VIEWS

    rows = json.loads(cli("schema", "loaded_datasets", "--format", "json").stdout)
    assert [r["column"] for r in rows] == PUBLIC_VIEWS["loaded_datasets"] and all(r["description"] for r in rows)
    assert "the run's label" in cli("schema", "runs").stdout
    wrong = subprocess.run([sys.executable, "-m", "oneprov", "schema", "load_datasets"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert wrong.stderr.startswith("Error: no public view or table 'load_datasets'; they are: access_log")


def test_every_tabular_command_prints_one_json_shape(tmp_path):
    repo = make_repository(tmp_path / "alf")
    db = tmp_path / "p.sqlite"
    one = oneprov.ONE(cache_dir=repo.root, mode="local", db=db, label="shape")
    one.load_dataset(repo.eid, "trials.intervals.npy")
    one.close()
    runs = json.loads(cli("runs", "--db", db, "--format", "json").stdout)
    assert set(runs[0]) == {"run_id", "project", "label", "status", "started_at", "finished_at", "user_name", "host",
                            "pid", "loads", "queries", "retired", "script_path", "git_commit", "git_dirty"}
    assert runs[0]["started_at"].endswith("Z") and runs[0]["finished_at"].endswith("Z")
    assert json.loads(cli("runs", "--db", db, "--status", "failed", "--format", "json").stdout) == []
    assert len(json.loads(cli("runs", "--db", db, "--label", "shape", "--since", "2020-01-01", "--format",
                              "json").stdout)) == 1
    rows = [json.loads(line) for line in cli("sql", "SELECT event_time, dataset_uuid, requested_revision FROM access_log",
                                             "--db", db, "--format", "ndjson").stdout.splitlines()]
    assert rows[0]["event_time"].endswith("Z") and rows[0]["requested_revision"] is None
    table = cli("sql", "SELECT requested_revision FROM access_log", "--db", db).stdout
    assert "NULL" in table
    empty = cli("stale", "--db", db).stdout
    assert empty.splitlines()[0].split() == ["run_id", "label", "project", "dataset_id", "session_id", "rel_path",
                                             "reason", "seen", "now", "source", "loaded_at"]


def test_every_audit_question_names_a_run_that_does_not_exist(tmp_path):
    from oneprov import BadInputError
    from oneprov.audit import cutoff, diff, show

    store = oneprov.open_store(tmp_path / "p.sqlite")
    real = store.start_run("p")
    ghost = "00000000-0000-4000-8000-000000000000"
    for ask in (lambda: show(store, ghost), lambda: cutoff(store, ghost), lambda: diff(store, real, ghost),
                lambda: diff(store, ghost, real)):
        with pytest.raises(BadInputError, match=f"no run '{ghost}'"):
            ask()
    assert cutoff(store, real)["reproducible"] and diff(store, real, real).empty
    store.close()
