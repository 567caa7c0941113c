"""``oneprov.record(one)``: an unmodified one-api instance, recorded (issue 13). Local mode on a
generated cache, remote mode on the test Alyx; the real one-api throughout."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from one.alf.exceptions import ALFObjectNotFound
from one.api import One, OneAlyx

import oneprov
from oneprov.synthetic import REVISION, SORTING, make_repository


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    repo = make_repository(tmp_path / "alf")
    return repo, One(cache_dir=repo.root, mode="local")


def events(db, **where):
    rows = oneprov.open_store(db).sql("SELECT method, outcome, dataset_id, rel_path, revision_cutoff, scope, listed, "
                                      "record_id FROM access_events ORDER BY id")
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return rows


def test_every_search_list_and_load_of_a_local_one_api_is_recorded(local, tmp_path):
    repo, one = local
    db = tmp_path / "p.sqlite"
    handle = oneprov.record(one, db=db, label="fig-paper")
    assert oneprov.record(one, db=db) is handle             # (one recorder per instance)
    one.record_loaded = True
    eids = one.search(subject=repo.sessions["subject"].iloc[0])
    listed = one.list_datasets(repo.eid)
    with handle.scope("fig3"):
        trials = one.load_object(repo.eid, "trials")
        spikes = one.load_dataset(repo.eid, "spikes.times.npy", collection=SORTING)
    path = one.load_dataset(repo.eids[1], "probes.description.json", download_only=True)
    with pytest.raises(ALFObjectNotFound):
        one.load_dataset(repo.eid, "no_such.dataset.npy")
    assert set(trials) >= {"intervals", "choice"} and spikes is not None and path.exists()
    store = handle.store
    queries = store.sql("SELECT method, n_sessions, n_datasets FROM queries ORDER BY id")
    assert queries["method"].tolist()[:1] == ["record_one"]          # the instance's tables, as they were
    assert {"search", "list_datasets"} <= set(queries["method"])
    found = store.sql("SELECT count(*) AS n FROM query_sessions qs JOIN queries q ON q.id = qs.query_id "
                      "WHERE q.method = 'search'")["n"].iloc[0]
    assert found == len(eids)
    lists = store.sql("SELECT n_datasets FROM queries WHERE method = 'list_datasets'")["n_datasets"]
    assert lists.tolist() == [len(listed)]
    loaded = events(db, method="load_object")
    assert set(loaded["outcome"]) == {"loaded", "missing"} and set(loaded["scope"]) == {"fig3"}
    assert events(db, outcome="download_only")["rel_path"].tolist() == ["alf/probes.description.json"]
    assert events(db, outcome="not_found")["rel_path"].tolist() == ["no_such.dataset.npy"]
    chosen = events(db, method="load_dataset", outcome="loaded")["rel_path"].tolist()
    assert chosen == [f"{SORTING}/#{REVISION}#/spikes.times.npy"]    # the row one-api chose
    assert events(db)["record_id"].dropna().size == len(events(db)) - 1   # (the not-found request has none)
    # one-api's own list is untouched, and equals the store's
    ids, _ = one.save_loaded_ids(clear_list=False)
    stored = store.sql("SELECT DISTINCT dataset_id FROM access_events WHERE listed AND outcome IN ('loaded', "
                       "'download_only')")["dataset_id"]
    assert sorted(map(str, ids)) == sorted(stored)
    handle.stop()
    assert handle.stopped and "load_object" not in one.__dict__          # the instance's methods are its own again
    runs = store.sql("SELECT label, status FROM runs")
    assert runs.values.tolist() == [["fig-paper", "finished"]]


def test_the_revision_cutoff_in_force_is_recorded(local, tmp_path, monkeypatch):
    import one.api

    repo, one_ = local
    monkeypatch.setattr(one.api, "REVISION_LAST_BEFORE", "2024-01-01")
    handle = oneprov.record(one_, db=tmp_path / "p.sqlite")
    path = one_.load_dataset(repo.eid, "spikes.times.npy", collection=SORTING, download_only=True)
    assert "#" not in path.as_posix()
    row = events(tmp_path / "p.sqlite").iloc[0]
    assert row["revision_cutoff"] == "2024-01-01" and row["rel_path"] == f"{SORTING}/spikes.times.npy"
    handle.stop()


def test_a_load_records_the_row_as_one_api_held_it(local, tmp_path):
    """An edit of one._cache after record(): the load is recorded with the edited state."""
    repo, one = local
    handle = oneprov.record(one, db=tmp_path / "p.sqlite")
    table = one._cache["datasets"] = one._cache["datasets"].copy()   # (one-api's tables are read-only arrays)
    mask = table["rel_path"] == "alf/trials.choice.npy"
    table.loc[mask, "qc"] = "WARNING"
    one.load_dataset(repo.eid, "trials.choice.npy")
    rec = handle.store.sql("SELECT d.qc FROM access_events e JOIN dataset_records d ON d.id = e.record_id "
                           "WHERE e.rel_path = 'alf/trials.choice.npy'")
    assert rec["qc"].tolist() == ["WARNING"]
    handle.stop()


def test_save_loaded_ids_is_unchanged_by_recording(local, tmp_path):
    repo, recorded = local
    plain = One(cache_dir=repo.root, mode="local")
    handle = oneprov.record(recorded, db=tmp_path / "p.sqlite")
    for one in (recorded, plain):
        one.record_loaded = True
        one.load_object(repo.eid, "trials")
        one.load_dataset(repo.eids[1], "trials.choice.npy")
    a, _ = recorded.save_loaded_ids(clear_list=False)
    b, _ = plain.save_loaded_ids(clear_list=False)
    assert sorted(map(str, a)) == sorted(map(str, b)) and len(a) > 2
    handle.stop()


def test_a_failing_recorder_never_breaks_the_analysis(local, tmp_path, monkeypatch):
    repo, one = local
    handle = oneprov.record(one, db=tmp_path / "p.sqlite")

    def broken(*args, **kwargs):
        raise OSError("disk on fire")
    monkeypatch.setattr(handle.store, "record_access", broken)
    with pytest.warns(RuntimeWarning, match="could not record"):
        trials = one.load_object(repo.eid, "trials")
    one.load_dataset(repo.eid, "trials.choice.npy")   # (warned once only)
    assert "intervals" in trials and handle.unrecorded == 2
    assert "2 unrecorded" in repr(handle)
    handle.stop()


def test_changed_one_api_internals_are_refused_loudly(local, tmp_path):
    repo, _ = local

    class Changed(One):
        def _check_filesystem(self, rows, offline=None):   # a renamed parameter: not what oneprov observes
            return super()._check_filesystem(rows, offline=offline)
    with pytest.raises(oneprov.UnsupportedOneApi, match="_check_filesystem"):
        oneprov.record(Changed(cache_dir=repo.root, mode="local"), db=tmp_path / "p.sqlite")


def test_the_export_of_a_recorded_run_loads_in_one_api_with_the_same_listings(local, tmp_path):
    repo, one = local
    handle = oneprov.record(one, db=tmp_path / "p.sqlite")
    one.load_object(repo.eid, "trials")
    handle.stop()
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "oneprov", "export", "cache", str(out), "--run", handle.run_id,
                           "--db", str(tmp_path / "p.sqlite")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = One(cache_dir=out, mode="local")
    assert sorted(again.list_datasets(repo.eid)) == sorted(one.list_datasets(repo.eid))


KILLED = """
import sys
from one.api import One
import oneprov
one = One(cache_dir=sys.argv[1], mode="local")
oneprov.record(one, db=sys.argv[2])
names = ["trials.intervals.npy", "trials.choice.npy", "trials.feedbackType.npy", "_ibl_wheel.position.npy"]
i = 0
while True:
    one.load_dataset(sys.argv[3], names[i % len(names)])
    print("returned", i, flush=True)
    i += 1
"""


def test_a_killed_analysis_keeps_every_load_that_returned(local, tmp_path):
    repo, _ = local
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(repo.root), str(tmp_path / "p.sqlite"), repo.eid],
                             stdout=subprocess.PIPE, text=True)
    returned = 0
    deadline = time.monotonic() + 60
    while returned < 12 and time.monotonic() < deadline:
        line = child.stdout.readline()
        returned += line.startswith("returned")
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert returned >= 12
    assert len(events(tmp_path / "p.sqlite", outcome="loaded")) >= returned


def test_a_remote_one_api_is_recorded(alyx, tmp_path):
    one = OneAlyx(base_url=alyx.url, username="test_user", password="TapetesBloc18", silent=True,
                  cache_dir=tmp_path / "cache")
    handle = oneprov.record(one, db=tmp_path / "p.sqlite", label="remote")
    one.record_loaded = True
    eids = one.search(subject=alyx.sessions["subject"].iloc[0])
    trials = one.load_object(alyx.repo.eids[1], "trials")
    assert len(eids) and "intervals" in trials
    store = handle.store
    rest = store.sql("SELECT source FROM queries WHERE method = 'rest'")["source"].tolist()
    assert f"{alyx.url}/sessions" in rest and f"{alyx.url}/sessions/{alyx.repo.eids[1]}" in rest
    loaded = events(tmp_path / "p.sqlite", method="load_object", outcome="loaded")
    expected = alyx.datasets[(alyx.datasets["eid"] == alyx.repo.eids[1])
                             & alyx.datasets["rel_path"].str.startswith("alf/trials.")]
    assert sorted(loaded["dataset_id"]) == sorted(expected.index[expected["qc"] != "CRITICAL"])
    ids, _ = one.save_loaded_ids(clear_list=False)
    assert sorted(map(str, ids)) == sorted(loaded["dataset_id"])
    assert store.sql("SELECT base_url FROM runs")["base_url"].tolist() == [alyx.url]
    handle.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("p.sqlite*"))
    assert b"TapetesBloc18" not in raw and not any(t.encode() in raw for t in alyx.tokens)


def test_download_only_and_a_failed_remote_load(alyx, tmp_path):
    one = OneAlyx(base_url=alyx.url, username="test_user", password="TapetesBloc18", silent=True,
                  cache_dir=tmp_path / "cache")
    handle = oneprov.record(one, db=tmp_path / "p.sqlite")
    eid = alyx.repo.eids[1]
    path = one.load_dataset(eid, "trials.choice.npy", download_only=True)
    assert path.exists()
    alyx.fault("/data/*trials.intervals*", "status", status=404, times=3)
    with pytest.raises(Exception):
        one.load_dataset(eid, "trials.intervals.npy")
    recorded = events(tmp_path / "p.sqlite")
    assert recorded[recorded["rel_path"] == "alf/trials.choice.npy"]["outcome"].tolist() == ["download_only"]
    failed = recorded[recorded["rel_path"] == "alf/trials.intervals.npy"]
    assert failed["outcome"].tolist() == ["failed"] and failed["record_id"].notna().all()
    handle.stop()


def test_load_datasets_collection_and_from_id_are_recorded(local, tmp_path):
    repo, one = local
    handle = oneprov.record(one, db=tmp_path / "p.sqlite")
    one.record_loaded = True
    data, records = one.load_datasets(repo.eid, ["trials.intervals.npy", "trials.choice.npy"])
    assert len(data) == 2 and all(d is not None for d in data)
    collection = one.load_collection(repo.eid, "alf", object="trials")
    assert "trials" in collection
    one.load_dataset_from_id(repo.revised_id)
    db = tmp_path / "p.sqlite"
    assert sorted(events(db, method="load_datasets")["rel_path"]) == ["alf/trials.choice.npy", "alf/trials.intervals.npy"]
    assert set(events(db, method="load_collection")["rel_path"]) >= {"alf/trials.intervals.npy", "alf/trials.choice.npy"}
    assert events(db, method="load_dataset_from_id")["dataset_id"].tolist() == [repo.revised_id]
    ids, _ = one.save_loaded_ids(clear_list=False)
    stored = handle.store.sql("SELECT DISTINCT dataset_id FROM access_events WHERE listed AND outcome = 'loaded'")
    assert sorted(map(str, ids)) == sorted(stored["dataset_id"])
    handle.stop()
