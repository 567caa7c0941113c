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
from oneprov.audit import show, stale
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
    write_datasets(d, repo.datasets_table, {"origin": "oneprov.synthetic", "version": 2})
    write_sessions(repo.sessions, repo.sessions_table, {"origin": "oneprov.synthetic", "version": 2})
    oneprov.ONE(cache_dir=repo.root, mode="local", db=db_url).close()   # the newer import
    return repo, db_url, before


def test_stale_lists_exactly_the_changed_loads_with_their_reasons(changed):
    repo, db_url, before = changed
    found = stale(oneprov.open_store(db_url))
    got = sorted(zip(found["rel_path"], found["reason"]))
    assert got == sorted([
        ("alf/trials.intervals.npy", "now CRITICAL"),
        ("alf/trials.choice.npy", "hash changed"),
        ("alf/trials.feedbackType.npy", "size changed"),
        ("alf/_ibl_wheel.position.npy", "no longer exists"),
        ("alf/_ibl_wheel.timestamps.npy", "removed"),
        (f"{SORTING}/#{REVISION}#/spikes.times.npy", "no longer the default revision"),
        (f"{SORTING}/#{REVISION}#/spikes.times.npy", "another revision now chosen"),
    ])
    assert set(found["run_id"]) == {before} and set(found["label"]) == {"before"}
    chosen = found[found["reason"] == "another revision now chosen"].iloc[0]
    assert (chosen["seen"], chosen["now"]) == (REVISION, "")


def test_stale_on_the_command_line_fails_a_paper_ci(changed, tmp_path):
    repo, db_url, before = changed
    done = cli("stale", "--db", db_url, "--fail-on-stale", "--format", "json", check=False)
    assert done.returncode == 3 and "7 stale load(s) in 1 run(s)" in done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 7 and set(rows[0]) == {"run_id", "label", "project", "dataset_id", "session_id", "rel_path",
                                               "reason", "seen", "now", "source", "loaded_at"}
    assert rows[0]["loaded_at"].endswith("Z")
    ndjson = cli("stale", "--db", db_url, "--format", "ndjson").stdout.splitlines()
    assert [json.loads(line) for line in ndjson] == rows
    csv = pd.read_csv(__import__("io").StringIO(cli("stale", "--db", db_url, "--format", "csv").stdout))
    assert len(csv) == 7
    cli("retire", before, "--reason", "superseded", "--db", db_url)
    assert cli("stale", "--db", db_url, "--fail-on-stale").returncode == 0          # retired runs left out
    assert len(json.loads(cli("stale", "--db", db_url, "--include-retired", "--format", "json").stdout)) == 7


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
