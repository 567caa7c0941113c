"""Exports: ONE's loaded-ids CSV and cache tables, checked against the real one-api."""
from __future__ import annotations

import csv
import re
import warnings

import pandas as pd
import pytest
from one.api import One

from oneprov import export, tables
from oneprov.files import file_sha256
from oneprov.export import export_cache, export_loaded_ids

STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(-\d+)?"


@pytest.fixture
def loaded(store, repo):
    """A store with the repository imported and one run that loaded three datasets."""
    store.import_cache(repo.root)
    run = store.start_run("paper")
    ids = sorted(repo.datasets["id"].tolist()[:3])
    store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i} for i in ids])
    return store, run, ids


def read_csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_loaded_ids_csv_is_ones_format(loaded, tmp_path, repo):
    store, run, ids = loaded
    got, path = export_loaded_ids(store, tmp_path, run=run)
    assert got == ids
    assert re.fullmatch(STAMP + "_loaded_dataset_uuids.csv", path.name)
    assert read_csv_rows(path) == [["dataset_uuid"], *([i] for i in ids)]
    assert path.read_bytes().endswith(b"\n") and b"\r" not in path.read_bytes()
    assert pd.read_csv(path)["dataset_uuid"].tolist() == ids     # as the seed reads it

    eids, spath = export_loaded_ids(store, tmp_path, run=run, sessions_only=True)
    assert re.fullmatch(STAMP + "_loaded_session_uuids.csv", spath.name)
    assert read_csv_rows(spath)[0] == ["session_uuid"]
    assert eids == sorted(set(repo.datasets.set_index("id").loc[ids, "eid"]))


def test_two_saves_in_one_second_do_not_overwrite(loaded, tmp_path):
    store, run, ids = loaded
    paths = [export_loaded_ids(store, tmp_path, run=run)[1] for _ in range(3)]
    assert len(set(paths)) == 3 and all(p.exists() for p in paths)
    assert all(read_csv_rows(p)[1:] == [[i] for i in ids] for p in paths)


def test_explicit_path_and_recorded_in_exports(loaded, tmp_path):
    store, run, ids = loaded
    target = tmp_path / "figure3_dataset_uuids.csv"
    _, path = export_loaded_ids(store, path=target, run=run)
    assert path == target and read_csv_rows(target)[1:] == [[i] for i in ids]
    row = store.sql("SELECT * FROM exports WHERE path = :p", {"p": str(target)}).iloc[0]
    assert row.rows == 3 and row.sha256 == file_sha256(target) and row.bytes == target.stat().st_size
    assert row.run_id == run


def test_nothing_loaded_warns_and_writes_nothing(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.warns(UserWarning, match="record_loaded"):
        assert export_loaded_ids(store, out) == ([], None)
    assert list(out.iterdir()) == []


def one_local(folder) -> One:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return One(cache_dir=folder, mode="local")


def listing(one: One, eid: str) -> list[str]:
    return sorted(one.list_datasets(eid, details=False))


def test_exported_tables_load_in_real_one_api(loaded, repo, tmp_path):
    store, _, _ = loaded
    out = tmp_path / "tables"
    out.mkdir()
    paths = export_cache(store, out)
    assert set(paths) == {"sessions", "datasets"}
    original, exported = one_local(repo.root), one_local(out)
    assert sorted(map(str, exported.search())) == sorted(map(str, original.search()))
    for eid in repo.eids:
        assert listing(exported, eid) == listing(original, eid)
    frame = exported._cache["datasets"]
    assert "default_revision" in frame.columns
    assert not [c for c in frame.reset_index().columns if re.fullmatch(r".?id", c) and c not in ("id", "eid")]
    assert isinstance(frame["qc"].dtype, pd.CategoricalDtype) and frame["qc"].dtype.ordered
    meta = tables.read_metadata(out / "datasets.pqt")
    assert "date_created" in meta
    recorded = store.sql("SELECT kind, rows, sha256 FROM exports ORDER BY id")
    assert recorded.kind.tolist() == ["sessions_table", "datasets_table"]
    assert recorded.rows.tolist() == [len(repo.sessions), len(repo.datasets)]
    assert recorded.sha256.tolist() == [file_sha256(paths["sessions"]), file_sha256(paths["datasets"])]


def test_export_merges_with_existing_tables_unless_clobber(loaded, repo, tmp_path):
    store, run, ids = loaded
    out = tmp_path / "tables"
    out.mkdir()
    export_cache(store, out, run=run)                          # only what the run loaded
    assert len(pd.concat(tables.iter_datasets(out / "datasets.pqt"))) == 3
    created = tables.read_metadata(out / "datasets.pqt")["date_created"]
    second = store.start_run("paper")
    more = repo.datasets["id"].tolist()[3:5]
    store.record_access(second, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i} for i in more])
    export_cache(store, out, run=second)                       # merged: 3 + 2
    merged = pd.concat(tables.iter_datasets(out / "datasets.pqt"))
    assert sorted(merged["id"]) == sorted(ids + more)
    meta = tables.read_metadata(out / "datasets.pqt")
    assert meta["date_created"] == created and "date_modified" in meta
    assert merged["default_revision"].notna().all()            # kept when merging (ONE drops it)
    export_cache(store, out, run=second, clobber=True)         # overwritten: 2
    assert sorted(pd.concat(tables.iter_datasets(out / "datasets.pqt"))["id"]) == sorted(more)


def test_run_export_freezes_the_state_the_run_saw(store, repo, tmp_path):
    """A dataset whose QC changed after the run loaded it is exported as the run saw it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("sessions.pqt", "datasets.pqt"):
        (src / name).write_bytes((repo.root / name).read_bytes())
    store.import_cache(src)
    run = store.start_run()
    target = repo.revised_id
    store.record_query(run, "list_datasets", {"eid": repo.eid}, session_ids=[repo.eid], dataset_ids=[target])
    store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": target}])
    before = store.sql("SELECT qc FROM datasets WHERE id = :id", {"id": target}).qc[0]

    frame = pd.concat(tables.iter_datasets(src / "datasets.pqt"))
    frame.loc[frame["id"] == target, "qc"] = "CRITICAL"
    tables.write_datasets(frame, src / "datasets.pqt", tables.read_metadata(src / "datasets.pqt"))
    store.import_cache(src)
    assert store.sql("SELECT qc FROM datasets WHERE id = :id", {"id": target}).qc[0] == "CRITICAL"

    out = tmp_path / "frozen"
    out.mkdir()
    export_cache(store, out, run=run)
    frozen = pd.concat(tables.iter_datasets(out / "datasets.pqt"))
    assert frozen["id"].tolist() == [target] and frozen["qc"].tolist() == [before]
    sessions = tables.read_sessions(out / "sessions.pqt")
    assert sessions["id"].tolist() == [repo.eid]
    one = one_local(out)
    assert listing(one, repo.eid) == [repo.datasets.set_index("id").loc[target, "rel_path"]]


def test_export_to_missing_folder_is_named(store, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        export_cache(store, tmp_path / "nope")
    with pytest.raises(Exception, match="does not exist"):
        export.export_loaded_ids(store, path=tmp_path / "nope" / "x.csv")
