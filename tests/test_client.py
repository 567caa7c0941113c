"""oneprov.ONE beyond parity: runs, scopes, labels, the durable list, isolation, crashes."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from oneprov import BadInputError, ONE, open_store
from oneprov.store.migrate import check
from oneprov.errors import ALFObjectNotFound


@pytest.fixture
def cache(repo, tmp_path):
    """A private copy of the synthetic repository (the client writes provenance.sqlite into it)."""
    return shutil.copytree(repo.root, tmp_path / "cache")


def test_database_defaults_to_cache_dir(cache, repo, monkeypatch):
    monkeypatch.delenv("ONEPROV_DB", raising=False)
    monkeypatch.setenv("ONEPROV_PROJECT", "from-env")
    one = ONE(cache_dir=cache, mode="local")
    one.load_dataset(repo.eid, "spikes.times.npy")
    one.close()
    assert (cache / "provenance.sqlite").exists()
    runs = open_store(cache / "provenance.sqlite").runs()
    assert runs.project.tolist() == ["from-env"] and runs.status.tolist() == ["finished"]


def test_every_call_is_recorded_with_scope_and_label(cache, repo, tmp_path, db_url):
    one = ONE(cache_dir=cache, db=db_url, project="paper", label="v1")
    one.search(subject="SYN")
    with one.scope("figure3"):
        one.list_datasets(repo.eid)
        one.load_dataset(repo.eid, "spikes.times.npy")
    with pytest.raises(ALFObjectNotFound):
        one.load_dataset(repo.eid, "nothing.here.npy")
    store = one.store
    queries = store.sql("SELECT method, scope, n_sessions, n_datasets FROM queries WHERE run_id = :r ORDER BY id",
                        {"r": one.run_id})
    assert queries.method.tolist() == ["search", "list_datasets"]
    assert queries.scope.tolist()[1] == "figure3" and queries.n_datasets[1] > 0
    events = store.sql("SELECT outcome, scope FROM access_events WHERE run_id = :r ORDER BY id", {"r": one.run_id})
    assert events.outcome.tolist() == ["loaded", "not_found"]
    assert events.scope[0] == "figure3" and pd.isna(events.scope[1])
    assert store.loaded_ids(scope="figure3") == [repo.revised_id]
    assert store.loaded_ids(label="v1") == [repo.revised_id]
    assert store.runs().label.tolist() == ["v1"]


def test_loaded_list_follows_record_loaded_and_survives_clear_and_reload(cache, repo, tmp_path, db_url):
    one = ONE(cache_dir=cache, db=db_url)
    one.load_dataset(repo.eid, "probes.description")            # not listed: record_loaded is off
    one.record_loaded = True
    one.load_dataset(repo.eid, "spikes.times.npy")
    one.load_cache()                                            # ONE loses the list here; we do not
    one.reset_cache()
    one.load_cache()
    ids, path = one.save_loaded_ids(clear_list=True)
    assert [str(i) for i in ids] == [repo.revised_id]           # UUIDs, as one-api returns them
    assert pd.read_csv(path)["dataset_uuid"].tolist() == [str(i) for i in ids]
    with pytest.warns(UserWarning, match="record_loaded"):
        assert one.save_loaded_ids() == ([], None)              # cleared: the current list is empty
    # ... but nothing was deleted: both loads are in the audit views
    assert len(one.store.sql("SELECT * FROM loaded_datasets")) == 2
    assert one.store.sql("SELECT kind FROM run_marks WHERE kind != 'tables'").kind.tolist() == ["clear_list"]


def test_save_loaded_ids_to_a_chosen_path(cache, repo, tmp_path, db_url):
    one = ONE(cache_dir=cache, db=db_url)
    one.record_loaded = True
    one.load_dataset(repo.eid, "spikes.times.npy")
    target = tmp_path / "figure3_dataset_uuids.csv"
    ids, path = one.save_loaded_ids(path=target)
    assert path == target and target.read_text().splitlines() == ["dataset_uuid", repo.revised_id]


def test_client_sees_only_its_tables(repo, tmp_path, db_url):
    """Two caches share one database: each client answers from its own tables only."""
    db = db_url
    full = shutil.copytree(repo.root, tmp_path / "full")
    small = tmp_path / "small"
    small.mkdir()
    from oneprov import tables
    frame = pd.concat(tables.iter_datasets(full / "datasets.pqt"))
    tables.write_datasets(frame[frame["eid"] == repo.eid], small / "datasets.pqt", {"origin": "test"})
    sessions = tables.read_sessions(full / "sessions.pqt")
    tables.write_sessions(sessions[sessions["id"] == repo.eid], small / "sessions.pqt", {"origin": "test"})
    big = ONE(cache_dir=full, db=db)
    little = ONE(cache_dir=full, tables_dir=small, db=db)
    assert len(big.search()) == len(repo.eids) and [str(e) for e in little.search()] == [repo.eid]
    other = next(e for e in repo.eids if e != repo.eid)
    assert little.list_datasets(other) == [] and len(big.list_datasets(other)) > 0


def test_ids_are_validated(cache, tmp_path, db_url):
    one = ONE(cache_dir=cache, db=db_url)
    with pytest.raises(ValueError, match="Invalid experiment ID"):   # one-api's message
        one.load_dataset("not-an-eid", "spikes.times.npy")
    with pytest.raises(Exception, match="malformed dataset id"):
        one.load_dataset_from_id("1234")


def test_remote_mode_without_an_alyx_is_refused_clearly(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))   # (no one-api parameters)
    with pytest.raises(BadInputError, match="base_url"):
        ONE(cache_dir=cache, mode="remote")


RUN_SCRIPT = """
import sys
from oneprov import ONE
one = ONE(cache_dir=sys.argv[1], db=sys.argv[2], label="script")
one.load_dataset(sys.argv[3], "spikes.times.npy")
if sys.argv[4] == "fail":
    raise RuntimeError("analysis crashed")
"""


@pytest.mark.parametrize("ending, status", [("ok", "finished"), ("fail", "failed")])
def test_run_is_closed_at_exit(cache, repo, tmp_path, ending, status, db_url):
    db = db_url
    proc = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(cache), str(db), repo.eid, ending],
                          capture_output=True, text=True)
    assert (proc.returncode == 0) == (ending == "ok"), proc.stderr
    runs = open_store(db).runs()
    assert runs.status.tolist() == [status] and runs.loads.tolist() == [1]
    if status == "failed":
        error = open_store(db).sql("SELECT error FROM runs").error[0]
        assert "analysis crashed" in error


KILL_SCRIPT = """
import sys
from oneprov import ONE
one = ONE(cache_dir=sys.argv[1], db=sys.argv[2])
one.record_loaded = True
names = sys.argv[3:]
i = 0
while True:
    eid, name = names[i % len(names)].split(":")
    one.load_dataset(eid, name, download_only=True)
    print(eid, name, flush=True)          # the load has returned: it must be durable now
    i += 1
"""


def test_sigkill_mid_analysis_loses_no_returned_load(cache, repo, tmp_path, db_url):
    db = db_url
    present = repo.datasets[~repo.datasets["id"].isin([repo.missing_id, repo.critical_id])]
    present = present[~present["rel_path"].str.contains("#")]
    specs = [f"{r.eid}:{r.rel_path}" for r in present.itertuples()][:20]
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(cache), str(db), *specs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    returned = []
    try:
        for line in proc.stdout:
            returned.append(line.split())
            if len(returned) == 60:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert len(returned) == 60, proc.stderr.read()
    if db.endswith(".sqlite"):
        assert check(db) == []                               # integrity_check and foreign keys ok
    store = open_store(db)
    loaded = store.sql("SELECT session_uuid, rel_path FROM loaded_datasets")
    assert {(e, n) for e, n in returned} <= set(map(tuple, loaded.values.tolist()))
    events = store.sql("SELECT COUNT(*) AS n FROM access_events WHERE outcome = 'download_only'").n[0]
    assert events >= 60
    assert store.runs().status.tolist() == ["interrupted"]   # killed: visible as such
    assert store.sql("SELECT status FROM runs").status.tolist() == ["running"]   # as recorded
