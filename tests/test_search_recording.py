"""Searches and lists: what each call records, and which tables it answers from.

A search or list commits a query with exactly the sessions and datasets it returned, each as the
record it was read from. A client answers from the tables it imported, whether or not they
hold every row of the database (a search skips the membership lookups only when they do).
"""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from oneprov import ONE, tables
from oneprov.store.dialects import _COVERAGE

QC_KEPT = ["NOT_SET", "PASS", "WARNING", "FAIL"]


@pytest.fixture
def cache(repo, tmp_path):
    return shutil.copytree(repo.root, tmp_path / "cache")


def last_query(one: ONE) -> tuple[pd.Series, set[str], dict[str, int]]:
    """The client's latest query row, its linked session ids and its linked {dataset id: record id}."""
    store = one.store
    query = store.sql("SELECT * FROM queries WHERE run_id = :r ORDER BY id DESC LIMIT 1", {"r": one.run_id}).iloc[0]
    return query, *linked(store, int(query["id"]))


def linked(store, qid: int) -> tuple[set[str], dict[str, int]]:
    sessions = set(store.sql("SELECT r.uuid FROM query_sessions q JOIN session_records r ON r.id = q.record_id "
                             "WHERE q.query_id = :q", {"q": qid}).uuid)
    links = store.sql("SELECT r.uuid, r.id FROM query_datasets q JOIN dataset_records r ON r.id = q.record_id "
                      "WHERE q.query_id = :q", {"q": qid})
    return sessions, dict(zip(links.uuid, links.id.astype(int)))


def current_states(one: ONE) -> dict[str, int]:
    frame = one.store.sql("SELECT id, record_id FROM datasets")
    return dict(zip(frame.id, frame.record_id.astype(int)))


def sessions_with(datasets: pd.DataFrame, name: str) -> set[str]:
    """The eids with a present dataset called ``name`` passing ONE's default QC filter."""
    names = datasets["rel_path"].str.rsplit("/", n=1).str[-1]
    ok = datasets[(names == name) & datasets["exists"].astype(bool) & datasets["qc"].astype(str).isin(QC_KEPT)]
    return set(ok["eid"])


def test_search_and_lists_record_exactly_what_they_return(cache, repo, db_url):
    one = ONE(cache_dir=cache, db=db_url)
    states = current_states(one)
    for terms in [{"datasets": "spikes.times.npy"}, {"subject": "SYN_000"}, {"subject": "SYN_000[01]"}, {},
                  {"datasets": r"trials\..*", "number": 1}, {"dataset_qc_lte": "PASS"}, {"subject": "nobody"}]:
        for details in (False, True):
            found = one.search(details=details, **terms)
            eids = [str(e) for e in (found[0] if details else found)]
            query, sessions, links = last_query(one)
            assert (query["method"], query["n_sessions"], query["n_datasets"]) == ("search", len(eids), 0)
            assert sessions == set(eids) and len(eids) == len(set(eids)) and links == {}
    assert {str(e) for e in one.search(datasets="spikes.times.npy")} == sessions_with(repo.datasets, "spikes.times.npy")

    for eid in (repo.eid, None):
        paths = one.list_datasets(eid)
        table = one.list_datasets(eid, details=True)
        query, sessions, links = last_query(one)
        ids = table.index.get_level_values("id").astype(str)
        assert len(table) == len(links) == query["n_datasets"] > 0 and set(paths) == set(table["rel_path"])
        assert set(links) == set(ids) and links == {d: states[d] for d in ids}   # the state each was read in
        assert sessions == ({eid} if eid else set()) and query["n_sessions"] == len(sessions)
    for method in ("list_collections", "list_revisions"):
        getattr(one, method)(repo.eid)
        query, sessions, links = last_query(one)
        assert query["method"] == method and sessions == {repo.eid}
        assert links == {d: states[d] for d in one.list_datasets(repo.eid, details=True).index.astype(str)}
    one.close()


def write_tables(folder, sessions: pd.DataFrame, datasets: pd.DataFrame) -> None:
    folder.mkdir()
    tables.write_sessions(sessions, folder / "sessions.pqt", {"origin": "test"})
    tables.write_datasets(datasets, folder / "datasets.pqt", {"origin": "test"})


def test_search_by_datasets_answers_from_the_client_tables(repo, tmp_path, db_url):
    """Two caches in one database: one holds every row, the other lacks a session and one dataset."""
    full = shutil.copytree(repo.root, tmp_path / "full")
    sessions = tables.read_sessions(full / "sessions.pqt")
    datasets = pd.concat(tables.iter_datasets(full / "datasets.pqt"))
    dropped = next(e for e in repo.eids if e != repo.eid)
    spikes = datasets["rel_path"].str.endswith("/spikes.times.npy") & (datasets["eid"] == repo.eid)
    small_datasets = datasets[~spikes & (datasets["eid"] != dropped)]
    write_tables(tmp_path / "small", sessions[sessions["id"] != dropped], small_datasets)

    big = ONE(cache_dir=full, db=db_url)
    little = ONE(cache_dir=full, tables_dir=tmp_path / "small", db=db_url)
    name = "spikes.times.npy"
    assert {str(e) for e in big.search(datasets=name)} == sessions_with(repo.datasets, name)
    assert {str(e) for e in little.search(datasets=name)} == sessions_with(small_datasets, name)
    assert repo.eid in sessions_with(repo.datasets, name) and repo.eid not in sessions_with(small_datasets, name)
    assert dropped not in {str(e) for e in little.search()} and dropped in {str(e) for e in big.search()}
    assert {str(e) for e in little.search(dataset_qc_lte="FAIL")} <= set(small_datasets["eid"])
    if big.store.dialect.name == "sqlite":   # only the big client's searches skip the membership lookups
        with big.store.reading() as conn:
            covered = [tuple(conn.execute(_COVERAGE, {"query_id": c._catalog.query_id}).one()) for c in (big, little)]
        assert covered == [(1, 1), (0, 0)]
    big.close()
    little.close()


def test_a_catalog_does_not_see_tables_imported_after_it(repo, tmp_path, db_url):
    """Rows added to the database by a later import are not in an earlier client's tables."""
    full = shutil.copytree(repo.root, tmp_path / "full")
    sessions = tables.read_sessions(full / "sessions.pqt")
    datasets = pd.concat(tables.iter_datasets(full / "datasets.pqt"))
    later = next(e for e in repo.eids if e != repo.eid)
    write_tables(tmp_path / "early", sessions[sessions["id"] != later], datasets[datasets["eid"] != later])

    early = ONE(cache_dir=full, tables_dir=tmp_path / "early", db=db_url)
    before = (early.search(), early.search(datasets="spikes.times.npy"), early.search(dataset_qc_lte="CRITICAL"))
    assert uuid_strings(before[0]) == [e for e in uuid_strings(before[0]) if e != later] and len(before[0]) > 0
    complete = ONE(cache_dir=full, db=db_url)                     # imports the full tables: one more session
    assert later in uuid_strings(complete.search(datasets="spikes.times.npy"))
    after = (early.search(), early.search(datasets="spikes.times.npy"), early.search(dataset_qc_lte="CRITICAL"))
    assert [uuid_strings(x) for x in after] == [uuid_strings(x) for x in before]
    assert early.list_datasets(later) == []
    early.close()
    complete.close()


def uuid_strings(values) -> list[str]:
    return [str(v) for v in values]


def test_rows_are_recorded_by_record_or_by_uuid(cache, repo, tmp_path):
    """Record ids (as a catalog reads them) are linked as given; UUIDs are linked with their current
    records; a malformed UUID is refused and nothing is written."""
    from oneprov import BadInputError
    one = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    run = one.store.start_run()
    before = one.store.sql("SELECT COUNT(*) AS n FROM queries").n[0]
    with pytest.raises(BadInputError, match="malformed dataset id"):
        one.store.record_query(run, "search", dataset_ids=[repo.revised_id, "nope"])
    assert one.store.sql("SELECT COUNT(*) AS n FROM queries").n[0] == before
    current = current_states(one)
    qid = one.store.record_query(run, "search", dataset_records=[current[repo.critical_id]],
                                 dataset_ids=[repo.revised_id, repo.revised_id.upper()])
    assert linked(one.store, qid)[1] == {d: current[d] for d in (repo.critical_id, repo.revised_id)}
    one.close()
