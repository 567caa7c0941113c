"""The store's write and read API on real databases (SQLite file and PostgreSQL)."""
from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import ExitStack

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from oneprov import BadInputError, open_store
from oneprov.store.schema import LINK_VIEWS, PUBLIC_VIEWS, metadata, session_records
from oneprov.tables import iter_datasets

#: Every table, and the views of the records each query returned (a row per record).
ALL_TABLES = sorted([*metadata.tables, *LINK_VIEWS])


def counts(store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in ALL_TABLES}


def snapshot(store) -> dict[str, list]:
    """Every row of every table, for all-or-nothing comparisons."""
    with store.engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")).fetchall()), key=repr)
                for t in ALL_TABLES}


def copy_tables(repo, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("sessions.pqt", "datasets.pqt"):
        shutil.copy(repo.root / name, dest / name)
    return dest


def rewrite_datasets(folder, change):
    """Apply ``change`` to the raw datasets table (an arrow table -> pandas -> arrow round trip)."""
    path = folder / "datasets.pqt"
    table = pq.read_table(path)
    df = table.to_pandas()
    df["qc"] = df["qc"].astype(str)   # arrow-backed categoricals are read-only; names read back the same
    df = change(df)
    import pyarrow as pa
    pq.write_table(pa.Table.from_pandas(df, preserve_index=True).replace_schema_metadata(table.schema.metadata), path)


@pytest.mark.parametrize("path", ["small", "large"])
def test_text_with_commas_quotes_and_line_breaks_is_stored_as_given(store, repo, tmp_path, monkeypatch, path):
    """Every text of a dataset row reaches its record as given, on both back ends and both import
    paths (PostgreSQL's COPY takes the rows as CSV that arrow writes): commas, quotes, line breaks,
    backslashes and '\\.' in a hash and a path, an empty revision (not NULL), unknown sizes and hashes."""
    from oneprov.store import ingest

    if path == "large":
        monkeypatch.setattr(ingest, "SMALL_ROWS", 0)
    odd = ['a,b', 'q"uote', 'line\nbreak', 'back\\slash', '\\.', 'cr\r', '"', ',', ' x ']
    tables = copy_tables(repo, tmp_path / "odd")
    rewrite_datasets(tables, lambda df: df.assign(
        hash=[odd[k % len(odd)] if k % 4 else None for k in range(len(df))],
        rel_path=[p.replace(".npy", f".{k % 2}'a,b\"c.npy") for k, p in enumerate(df["rel_path"])],
        file_size=pd.array([None if k % 5 == 0 else v for k, v in enumerate(df["file_size"])], dtype="Int64")))
    expected = pd.concat(iter_datasets(tables / "datasets.pqt"), ignore_index=True)
    assert set(odd) <= set(expected["hash"].dropna())
    result = store.import_cache(tables)
    got = store.sql(f"SELECT uuid AS id, session_uuid AS eid, rel_path, revision, file_size, hash FROM dataset_records "
                    f"WHERE query_id = {result.query_id}")
    key = ["id", "eid", "rel_path"]
    got = got.sort_values(key).reset_index(drop=True)
    expected = expected[["id", "eid", "rel_path", "revision", "file_size", "hash"]].sort_values(key).reset_index(drop=True)
    assert got["rel_path"].tolist() == expected["rel_path"].tolist()
    assert [None if pd.isna(v) else v for v in got["hash"]] == expected["hash"].tolist()   # (None: unknown)
    assert got["revision"].tolist() == expected["revision"].tolist() and "" in set(got["revision"])
    assert [None if pd.isna(v) else int(v) for v in got["file_size"]] == \
        [None if pd.isna(v) else int(v) for v in expected["file_size"]]


def test_import_cache(store, repo):
    result = store.import_cache(repo.root)
    assert (result.sessions, result.datasets) == (len(repo.sessions), len(repo.datasets))
    assert result.changed == len(repo.datasets) and not result.unchanged_tables
    c = counts(store)
    assert c["session_records"] == len(repo.sessions) and c["dataset_records"] == len(repo.datasets)  # a record each
    assert c["query_sessions"] == len(repo.sessions) and c["query_datasets"] == len(repo.datasets)    # all linked
    assert len(store.sql("SELECT * FROM datasets")) == len(repo.datasets)   # the current state: those records
    assert c["revisions"] == 1                                 # '2024-05-06'
    row = store.sql("SELECT collection, revision, name, default_revision FROM datasets WHERE id = :id",
                    {"id": repo.revised_id}).iloc[0]
    assert (row.collection, row.revision, row["name"]) == ("alf/probe00/pykilosort", "2024-05-06", "spikes.times.npy")
    assert bool(row.default_revision) is True
    unknown = store.sql("SELECT file_size, hash FROM datasets WHERE id = :id", {"id": repo.unknown_size_id}).iloc[0]
    assert unknown.hash is None   # (its size is written as 0 by tables.write_datasets, see there)


def test_null_sizes_and_hashes_are_stored_as_unknown(store, repo, tmp_path):
    folder = copy_tables(repo, tmp_path / "tables")

    def nulls(df):
        df["file_size"] = df["file_size"].astype("UInt64")
        df.iloc[:3, df.columns.get_loc("file_size")] = pd.NA
        df.iloc[:3, df.columns.get_loc("hash")] = None
        return df

    rewrite_datasets(folder, nulls)
    store.import_cache(folder)
    unknown = store.sql("SELECT COUNT(*) AS n FROM datasets WHERE file_size IS NULL AND hash IS NULL")
    assert unknown.n[0] == 3


def test_reimport_of_same_tables_changes_nothing(store, repo, tmp_path):
    folder = copy_tables(repo, tmp_path / "tables")
    first = store.import_cache(folder)
    before = snapshot(store)
    again = store.import_cache(folder)
    assert again.unchanged_tables and again.query_id == first.query_id
    assert snapshot(store) == before
    forced = store.import_cache(folder, force=True)          # a new query, but no new record
    assert forced.changed == 0
    c = counts(store)
    assert c["dataset_records"] == len(repo.datasets) and c["queries"] == 2
    assert c["query_datasets"] == 2 * len(repo.datasets)     # each query links the same records


def test_changed_rows_become_new_records(store, repo, tmp_path):
    folder = copy_tables(repo, tmp_path / "tables")
    store.import_cache(folder)
    target = repo.datasets.iloc[0]["id"]

    def change(df):
        ids = df.index.get_level_values("id") if "id" in df.index.names else df["id"]
        df.loc[ids == target, "qc"] = "CRITICAL"
        return df

    rewrite_datasets(folder, change)
    result = store.import_cache(folder)
    assert result.changed == 1 and not result.unchanged_tables
    assert store.sql("SELECT qc FROM datasets WHERE id = :id", {"id": target}).qc[0] == "CRITICAL"
    history = store.sql("SELECT qc FROM dataset_records WHERE uuid = :id ORDER BY id", {"id": target})
    assert history.qc.tolist()[-1] == "CRITICAL" and len(history) == 2
    assert counts(store)["dataset_records"] == len(repo.datasets) + 1


def test_import_is_all_or_nothing(store, repo, tmp_path):
    """A malformed UUID in the last batch leaves the database exactly as it was: every row is read and
    checked before anything is written."""
    store.import_cache(repo.root)
    before = snapshot(store)
    folder = copy_tables(repo, tmp_path / "bad")
    last = repo.datasets.iloc[-1]["id"]
    rewrite_datasets(folder, lambda df: df.assign(qc=df["qc"].where(np.arange(len(df)) == 0, "PASS")))  # many changed

    def corrupt(df):
        df = df.reset_index()
        df.loc[df["id"] == last, "id"] = "not-a-uuid"
        return df.set_index(["eid", "id"])

    rewrite_datasets(folder, corrupt)
    with pytest.raises(BadInputError, match="not-a-uuid"):
        store.import_cache(folder, batch_size=5)
    assert snapshot(store) == before


def test_missing_tables_are_named(store, tmp_path):
    with pytest.raises(BadInputError, match="sessions.pqt"):
        store.import_cache(tmp_path)
    with pytest.raises(BadInputError, match="does not exist"):
        store.import_cache(tmp_path / "nowhere")


def test_runs_queries_and_access_views(store, repo):
    imported = store.import_cache(repo.root)
    run = store.start_run("paper1", label="fig-run")
    qid = store.record_query(run, "search", {"subject": "x"}, session_ids=[repo.eid],
                             dataset_ids=[repo.revised_id, repo.critical_id])
    store.record_access(run, [
        {"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.revised_id, "session_id": repo.eid,
         "rel_path": "alf/probe00/pykilosort/#2024-05-06#/spikes.times.npy"},
        {"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.revised_id.upper()},
        {"method": "load_dataset", "outcome": "missing", "dataset_id": repo.missing_id},
        {"method": "load_object", "outcome": "not_found", "rel_path": "alf/nothing.npy", "requested_revision": "2020-01-01"},
    ])
    store.finish_run(run)
    log = store.sql("SELECT * FROM access_log ORDER BY event_id")
    assert list(log.columns) == PUBLIC_VIEWS["access_log"]
    assert log.outcome.tolist() == ["loaded", "loaded", "missing", "not_found"]
    assert log.project.unique().tolist() == ["paper1"]
    assert log.revision[0] == "2024-05-06" and log.collection[0] == "alf/probe00/pykilosort"
    assert log.dataset_uuid[1] == repo.revised_id          # stored lowercase
    assert log.requested_revision[3] == "2020-01-01"
    loaded = store.sql("SELECT * FROM loaded_datasets")
    assert list(loaded.columns) == PUBLIC_VIEWS["loaded_datasets"]
    assert loaded.dataset_uuid.tolist() == [repo.revised_id] and loaded.session_uuid[0] == repo.eid
    sessions = store.sql("SELECT * FROM loaded_sessions")
    assert sessions.values.tolist() == [["paper1", run, repo.eid]]
    linked = store.sql("SELECT r.uuid FROM query_datasets q JOIN dataset_records r ON r.id = q.record_id "
                       "WHERE q.query_id = :q", {"q": qid})
    assert set(linked.uuid) == {repo.revised_id, repo.critical_id}
    runs = store.runs()
    assert runs.status.tolist() == ["finished"] and runs.loads.tolist() == [2] and runs.queries.tolist() == [1]
    assert store.resolve_run("last") == run == store.resolve_run("fig-run") == store.resolve_run(run[:8])
    assert imported.query_id != qid


def test_record_access_is_all_or_nothing(store, repo):
    store.import_cache(repo.root)
    run = store.start_run()
    before = snapshot(store)
    with pytest.raises(BadInputError, match="malformed dataset id"):
        store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.revised_id},
                                  {"method": "load_dataset", "outcome": "loaded", "dataset_id": "123"}])
    with pytest.raises(BadInputError, match="event 1"):
        store.record_access(run, [{"method": "load_dataset", "outcome": "loaded"}, {"method": "load_dataset"}])
    assert snapshot(store) == before


def test_loaded_ids_filters_and_clear_marks(store, repo):
    store.import_cache(repo.root)
    a = store.start_run("p1", label="A")
    b = store.start_run("p2")
    ids = repo.datasets["id"].tolist()
    store.record_access(a, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": ids[0], "scope": "figure1"}])
    store.mark(a, "clear_list")
    store.record_access(a, [{"method": "load_dataset", "outcome": "download_only", "dataset_id": ids[1]}])
    store.record_access(b, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": ids[2]},
                            {"method": "load_dataset", "outcome": "hash_mismatch", "dataset_id": ids[3]}])
    assert store.loaded_ids() == sorted(ids[:3])
    assert store.loaded_ids(run=a) == sorted(ids[:2])
    assert store.loaded_ids(run=a, since_clear=True) == [ids[1]]
    assert store.loaded_ids(project="p2") == [ids[2]]
    assert store.loaded_ids(label="A", scope="figure1") == [ids[0]]
    eids = store.loaded_ids(sessions_only=True)
    assert eids == sorted(set(repo.datasets.set_index("id").loc[ids[:3], "eid"]))



def test_record_access_returns_ids_in_order_with_records(store, repo):
    """One event and many: the ids follow the events, each event carries the record it names."""
    store.import_cache(repo.root)
    run = store.start_run("p")
    records = store.sql("SELECT id, uuid FROM dataset_records")
    record_of = dict(zip(records.uuid, records.id))
    ids = repo.datasets["id"].tolist()
    events = [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i, "bytes": k, "listed": k % 2 == 0,
               "record_id": record_of[i]} for k, i in enumerate(reversed(ids))]
    events.insert(3, {"method": "load_object", "outcome": "not_found", "rel_path": "alf/nothing.npy"})
    events.insert(5, {"method": "load_dataset", "outcome": "loaded", "dataset_id": "00000000-0000-4000-8000-000000000000"})
    first = store.record_access(run, events[:1])
    rest = store.record_access(run, events[1:])
    event_ids = first + rest
    assert len(event_ids) == len(events) and event_ids == sorted(event_ids)
    got = store.sql("SELECT e.id, e.dataset_id, e.rel_path, e.bytes, e.listed, e.record_id, d.record_id AS current "
                    "FROM access_events e LEFT JOIN datasets d ON d.id = e.dataset_id ORDER BY e.id")
    assert got["id"].tolist() == event_ids
    assert got["dataset_id"].fillna("").tolist() == [e.get("dataset_id", "") for e in events]
    assert got["rel_path"][3] == "alf/nothing.npy" and got["bytes"][0] == 0
    assert [bool(x) for x in got["listed"]] == [e.get("listed", True) for e in events]
    known = got["current"].notna()
    assert (got["record_id"][known] == got["current"][known]).all() and got["record_id"][~known].isna().all()
    assert known.sum() == len(ids)


def test_loaded_ids_many_in_chunks_sorted_and_distinct(store, repo, monkeypatch):
    """The ids come sorted, once each, however many chunks they take and in whatever order they were loaded."""
    import oneprov.store.loaded

    store.import_cache(repo.root)
    run = store.start_run("p", label="L")
    ids = repo.datasets["id"].tolist()
    loads = [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i} for i in reversed(ids)]
    store.record_access(run, loads + loads[::3])
    store.record_access(run, [{"method": "load_dataset", "outcome": "missing", "dataset_id": ids[0]}])
    monkeypatch.setattr(oneprov.store.loaded, "LOADED_IDS_CHUNK", 7)
    assert store.loaded_ids(run=run) == sorted(set(ids))
    assert store.loaded_ids(project="p", label="L", since_clear=True, listed_only=True) == sorted(set(ids))
    eids = sorted(set(repo.datasets["eid"]))
    assert store.loaded_ids(run=run, sessions_only=True) == eids
    monkeypatch.setattr(oneprov.store.loaded, "LOADED_IDS_CHUNK", len(ids))  # exactly one full chunk, then none
    assert store.loaded_ids(run=run) == sorted(set(ids))


def test_runs_get_distinct_ids_and_metadata(store):
    ids = {store.start_run("p", label="same") for _ in range(20)}
    assert len(ids) == 20
    runs = store.runs("p")
    assert len(runs) == 20 and (runs.status == "running").all() and runs.host.notna().all()
    with pytest.raises(BadInputError, match="ambiguous|no run"):
        store.resolve_run("0" * 36)


def test_datasets_last_before_on_imported_repository(store, repo):
    store.import_cache(repo.root)
    chosen = store.datasets_last_before(eid=repo.eid)
    assert repo.revised_id in set(chosen.dataset_uuid)
    assert repo.unrevised_id not in set(chosen.dataset_uuid)
    assert repo.critical_id not in set(chosen.dataset_uuid)
    older = store.datasets_last_before(revision="2024-01-01", eid=repo.eid)
    assert repo.unrevised_id in set(older.dataset_uuid) and repo.revised_id not in set(older.dataset_uuid)
    assert set(chosen.columns) >= {"dataset_uuid", "session_uuid", "rel_path", "collection", "revision", "qc",
                                   "default_revision"}
    everything = store.datasets_last_before()
    assert set(everything.session_uuid) == set(repo.datasets.eid) - set()
    with_critical = store.datasets_last_before(eid=repo.eid, qc="CRITICAL")
    assert repo.critical_id in set(with_critical.dataset_uuid)


def test_sql_is_read_only(store, repo):
    store.import_cache(repo.root)
    before = snapshot(store)
    for statement in ("DELETE FROM dataset_records", "UPDATE runs SET status = 'x'", "DROP TABLE dataset_records",
                      "INSERT INTO projects (name, created_at) VALUES ('x', '2020-01-01')",
                      # escaping the read-only transaction with several statements
                      "COMMIT; SET default_transaction_read_only = off; COMMIT; "
                      "INSERT INTO projects (name, created_at) VALUES ('x', '2020-01-01')",
                      "SELECT 1; DELETE FROM run_marks"):
        with pytest.raises(Exception, match="refused|read-only|readonly"):
            store.sql(statement)
    assert snapshot(store) == before
    # values are bound, never formatted into the SQL
    assert store.sql("SELECT COUNT(*) AS n FROM datasets WHERE id = :id", {"id": "x' OR '1'='1"}).n[0] == 0


def test_uuid_text_is_lowercase_and_canonical(store, repo):
    store.import_cache(repo.root)
    ids = store.sql("SELECT id FROM datasets UNION ALL SELECT id FROM sessions").id
    assert ids.str.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").all()


def test_two_stores_share_one_file(tmp_path, repo):
    path = tmp_path / "shared.sqlite"
    one, two = open_store(path), open_store(path)
    one.import_cache(repo.root)
    run = two.start_run("other")
    two.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.revised_id}])
    assert one.loaded_ids() == [repo.revised_id]
    one.close(), two.close()


def test_credentials_never_reach_the_database(store, monkeypatch):
    monkeypatch.setattr("sys.argv", ["analysis.py", "--db", "postgresql+psycopg://me:s3cret@db.lab/prov",
                                     "--token", "abc123"])
    run = store.start_run(base_url="https://me:pw@alyx.example.org")
    row = store.sql("SELECT command, base_url FROM runs WHERE id = :r", {"r": run}).iloc[0]
    assert "s3cret" not in row.command and "abc123" not in row.command and "me:***@" in row.command
    assert "pw" not in row.base_url


def test_retiring_a_run_adds_a_record(store):
    run = store.start_run("p")
    store.record_access(run, [{"method": "load_dataset", "outcome": "not_found", "rel_path": "x.npy"}])
    before = store.sql("SELECT * FROM access_events")
    with pytest.raises(BadInputError, match="reason"):
        store.retire_run(run, " ")
    store.retire_run(run, "killed by the scheduler; rerun as another run")
    runs = store.runs()
    assert runs.retired.astype(bool).tolist() == [True] and runs.status.tolist() == ["running"]
    marks = store.sql("SELECT kind, detail FROM run_marks")
    assert marks.values.tolist() == [["retired", "killed by the scheduler; rerun as another run"]]
    assert store.sql("SELECT * FROM access_events").equals(before)


def test_background_reader_hands_over_items_errors_and_stops_when_the_consumer_does():
    from oneprov.store.ingest import Background
    closed = []

    def source(fail_at=None):
        try:
            for i in range(100):
                if i == fail_at:
                    raise BadInputError(f"bad row {i}")
                yield i
        finally:
            closed.append(True)

    assert list(Background(source())) == list(range(100))
    with pytest.raises(BadInputError, match="bad row 7"):
        list(Background(source(fail_at=7)))
    for i in Background(source()):
        if i == 3:
            break
    assert closed == [True, True, True]   # each source was closed, also the one left early


def test_background_reader_reads_ahead_before_it_is_iterated_and_a_reader_never_iterated_is_stopped():
    from oneprov.store.ingest import Background
    started, closed = threading.Event(), []

    def source():
        try:
            started.set()
            yield from range(10)
        finally:
            closed.append(True)

    with Background(source()) as reading:
        assert started.wait(5)          # the worker read before anyone asked (the import's other reads overlap it)
        assert closed == []
    assert closed == [True]             # leaving the block stopped the worker and closed the source
    with Background(source()) as reading:
        assert list(reading) == list(range(10))
    assert closed == [True, True]


def test_run_names_resolve_by_one_rule(store, tmp_path):
    """'last', an exact id, an exact label (its newest run), then a unique id prefix: a label that
    looks like hex names its own run, never another whose id starts with it."""
    runs = [store.start_run("p") for _ in range(40)]
    first = runs[0]
    by_char = {r[0]: r for r in runs}                       # a run for each leading hex digit seen
    hexy = [store.start_run("p", label=first[0]), store.start_run("p", label=first[:4]),
            store.start_run("p", label="cafe"), store.start_run("p", label="2024")]
    assert store.resolve_run(first[0]) == hexy[0] != by_char[first[0]]
    assert store.resolve_run(first[:4]) == hexy[1] != first
    assert store.resolve_run("cafe") == hexy[2] and store.resolve_run("2024") == hexy[3]
    assert store.resolve_run(first) == first == store.resolve_run(first.upper())   # an exact id wins
    assert store.resolve_run(first[:12]) == first                                   # a unique prefix
    assert store.resolve_run("last") == hexy[3]
    later = store.start_run("p", label=first[0])
    assert store.resolve_run(first[0]) == later                 # a label: its newest run
    shared = next(c for c in "0123456789abcdef" if sum(r.startswith(c) for r in runs + hexy) > 1
                  and c != first[0])
    with pytest.raises(BadInputError, match=f"'{shared}' is ambiguous") as caught:
        store.resolve_run(shared)
    assert all(r in str(caught.value) for r in runs if r.startswith(shared))
    with pytest.raises(BadInputError, match="no run in project 'other'"):
        store.resolve_run(first, project="other")


def test_a_small_first_import_builds_its_indexes_after_the_rows_in_its_transaction(tmp_path):
    """Into an empty database, a few thousand rows are written before the indexes are built, in one
    transaction: after it every index is there, and after a failed one too (rolled back whole)."""
    from oneprov.store.migrate import missing_indexes
    from oneprov.synthetic import make_repository

    repo = make_repository(tmp_path / "alf", n_sessions=150, datasets_per_session=20, write_files=False)
    bad = copy_tables(repo, tmp_path / "bad")
    rewrite_datasets(bad, lambda df: df.reset_index().assign(
        id=lambda d: d["id"].where(d.index < len(d) - 1, "not-a-uuid")).set_index(["eid", "id"]))
    store = open_store(tmp_path / "p.sqlite")
    with pytest.raises(BadInputError, match="not-a-uuid"):
        store.import_cache(bad)
    with store.reading() as conn:
        assert missing_indexes(conn) == []
    result = store.import_cache(repo.root)
    assert result.datasets == len(repo.datasets) > 1000
    with store.reading() as conn:
        assert missing_indexes(conn) == []
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN SELECT id FROM dataset_records WHERE uuid = 'x'").fetchall()
    assert "ix_dataset_records_uuid_session_uuid_rel_path" in str(plan)
    store.close()


def pragma_when_writing_records(store, pragma: str) -> list:
    """The value of SQLite's ``pragma`` on the connection of each INSERT into dataset_records from now on."""
    seen: list = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def look(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO dataset_records"):
            seen.append(cursor.connection.execute(f"PRAGMA {pragma}").fetchone()[0])

    return seen


def test_a_large_import_s_page_cache_is_small_for_a_first_import_and_restored_after(tmp_path, repo, monkeypatch):
    """A large import's connection writes with a page cache of BULK_IMPORT_CACHE_MIB into an empty
    database (appends, then index sorts: a larger cache only holds memory), of IMPORT_CACHE_MIB into
    one with records (index inserts), and gets its own size back afterwards."""
    from oneprov.store import dialects, ingest

    monkeypatch.setattr(ingest, "SMALL_ROWS", 0)   # (the path of tables of more than 20,000 rows)
    store = open_store(tmp_path / "p.sqlite")
    seen = pragma_when_writing_records(store, "main.cache_size")
    store.import_cache(repo.root)
    first, seen[:] = set(seen), []
    changed = copy_tables(repo, tmp_path / "changed")
    rewrite_datasets(changed, lambda df: df.assign(qc="CRITICAL"))
    store.import_cache(changed)
    assert first == {-dialects.BULK_IMPORT_CACHE_MIB * 1024}            # (negative: KiB)
    assert set(seen) == {-dialects.IMPORT_CACHE_MIB * 1024}
    with ExitStack() as stack:   # every pooled connection (and a new one) has its own size again
        drivers = [stack.enter_context(store.engine.connect()).connection.dbapi_connection for _ in range(4)]
        assert {d.execute("PRAGMA main.cache_size").fetchone()[0] for d in drivers}.isdisjoint(first | set(seen))
    store.close()


def test_what_an_import_commits_reaches_the_database_file_through_the_store_s_checkpointer(tmp_path, repo,
                                                                                          monkeypatch):
    """A large import's commits checkpoint only past IMPORT_AUTOCHECKPOINT_PAGES of log and wake the
    store's checkpointer thread, which copies the pages into the database file: once it is done, the
    file alone (without its -wal) holds the complete import. The connection's setting is restored."""
    import sqlite3
    import threading

    from oneprov.store import dialects, ingest

    monkeypatch.setattr(ingest, "SMALL_ROWS", 0)   # (the path of tables of more than 20,000 rows)
    checkpoints, checkpoint = [], dialects.SQLite.checkpoint
    monkeypatch.setattr(dialects.SQLite, "checkpoint",
                        lambda self, c: (checkpoints.append(threading.current_thread().name), checkpoint(self, c)))
    store = open_store(tmp_path / "p.sqlite")
    seen = pragma_when_writing_records(store, "wal_autocheckpoint")
    result = store.import_cache(repo.root)
    store.wait_for_checkpoint()
    assert set(seen) == {dialects.IMPORT_AUTOCHECKPOINT_PAGES}
    assert checkpoints and set(checkpoints) == {"oneprov-checkpointer"}
    shutil.copyfile(tmp_path / "p.sqlite", tmp_path / "alone.sqlite")
    alone = sqlite3.connect(tmp_path / "alone.sqlite")
    assert alone.execute("SELECT count(*) FROM dataset_records").fetchone()[0] == result.datasets
    assert alone.execute("SELECT completed_at IS NOT NULL FROM queries WHERE id = ?", (result.query_id,)).fetchone()[0]
    alone.close()
    with ExitStack() as stack:   # every pooled connection (and a new one) checkpoints as SQLite's default again
        drivers = [stack.enter_context(store.engine.connect()).connection.dbapi_connection for _ in range(4)]
        assert {d.execute("PRAGMA wal_autocheckpoint").fetchone()[0] for d in drivers} == {1000}
    store.close()


def test_sessions_staged_in_parts_are_recorded_as_in_one(tmp_path, repo, monkeypatch):
    """The sessions of an import are staged a part at a time (bounded memory): in parts of 4 rows,
    every session is recorded with the same values, once, and linked to the import."""
    from oneprov.store import ingest

    whole = open_store(tmp_path / "whole.sqlite")
    whole.import_cache(repo.root)
    monkeypatch.setattr(ingest, "_SESSION_PART", 4)
    parts = open_store(tmp_path / "parts.sqlite")
    parts.import_cache(repo.root)
    columns = "id, lab, subject, date, number, task_protocol, projects, record_id"
    expected = whole.sql(f"SELECT {columns} FROM sessions ORDER BY id")
    assert len(expected) > 4   # (two parts at least)
    pd.testing.assert_frame_equal(parts.sql(f"SELECT {columns} FROM sessions ORDER BY id"), expected)
    linked = parts.sql("SELECT count(*) AS n FROM query_sessions JOIN queries q ON q.id = query_id "
                       "WHERE q.method = 'import_cache'")
    assert linked["n"].iloc[0] == len(expected)
    # staged through the driver, the values are stored as SQLAlchemy stores them (a date read back is the date)
    with parts.reading() as conn:
        stored = dict(conn.execute(sa.select(session_records.c.uuid, session_records.c.date)).all())
    assert stored == dict(zip(repo.sessions["id"], pd.to_datetime(repo.sessions["date"]).dt.date))
    whole.close()
    parts.close()


def test_an_event_without_its_record_gets_its_dataset_s_current_record_alone_or_in_a_batch(store, repo, tmp_path):
    """One event (resolved inside its INSERT) and a batch (resolved before it) agree: the record is
    the dataset's latest among complete imports, the session that record's; given ones are kept."""
    store.import_cache(repo.root)
    changed = copy_tables(repo, tmp_path / "changed")
    rewrite_datasets(changed, lambda df: df.assign(qc="CRITICAL"))
    store.import_cache(changed)                                      # every row: a second, newer record
    ds = store.sql("SELECT id, session_id, record_id FROM datasets ORDER BY id LIMIT 2")
    (a, sa_, ra), (b, sb, rb) = ds.itertuples(index=False)
    older = store.sql("SELECT min(id) AS r FROM dataset_records WHERE uuid = :u", {"u": b})["r"].iloc[0]
    events = [{"method": "load_dataset", "outcome": "loaded", "dataset_id": a.upper()},       # nothing given
              {"method": "load_dataset", "outcome": "loaded", "dataset_id": b, "record_id": int(older)},  # a record
              {"method": "load_dataset", "outcome": "loaded", "dataset_id": a, "session_id": sb},  # a session
              {"method": "load_dataset", "outcome": "not_found", "rel_path": "x.npy"},             # no dataset
              {"method": "load_dataset", "outcome": "missing", "dataset_id": "00000000-0000-4000-8000-000000000000"}]
    expected = [(ra, sa_), (older, sb), (ra, sb), (None, None), (None, None)]
    run = store.start_run("p")
    alone = [store.record_access(run, [e])[0] for e in events]
    batch = store.record_access(run, events)
    got = store.sql("SELECT id, record_id, session_id FROM access_events WHERE run_id = :r", {"r": run}).set_index("id")
    for ids in (alone, batch):
        rows = [tuple(None if pd.isna(v) else v for v in got.loc[i, ["record_id", "session_id"]]) for i in ids]
        assert rows == expected


def test_the_store_logs_what_it_recorded_on_its_logger(tmp_path, repo, caplog):
    """Library diagnostics go to logging (``oneprov.store``), as one-api's go to ``one.api``."""
    import logging

    caplog.set_level(logging.INFO, logger="oneprov.store")
    store = open_store(tmp_path / "p.sqlite")
    first = store.import_cache(repo.root)
    store.import_cache(repo.root)
    messages = [r.getMessage() for r in caplog.records if r.name == "oneprov.store"]
    assert any("schema upgraded from empty to" in m for m in messages)
    assert any(f"{len(repo.datasets)} datasets rows recorded as query {first.query_id}" in m for m in messages)
    assert any(f"recorded before, as query {first.query_id} (nothing written)" in m for m in messages)
    store.close()


def test_driver_reads_return_what_sqlalchemy_returns(store, repo):
    """The hot reads' driver path (store/driver.py): for statements with given and own IN lists of
    several lengths, the same rows, values and types as SQLAlchemy's execution, in one snapshot."""
    from oneprov.store.schema import dataset_records

    store.import_cache(repo.root, progress=False)
    d = dataset_records.c
    stmt = (sa.select(d.id.label("record_id"), d.uuid, d.exists, d.default_revision, d.file_size, d.first_seen_at)
            .where(d.qc.in_(["PASS", "NOT_SET", "WARNING"]), d.id.in_(sa.bindparam("ids", expanding=True)))
            .order_by(d.id))
    with store.reading() as conn:
        every = conn.execute(sa.select(d.id).order_by(d.id)).scalars().all()
    assert len(every) > 20
    for ids in ([], every[:1], every[:7], every[3:20], every[:7]):   # (the shape of 7 twice: from its cache)
        with store.reading() as conn:
            expected = [tuple(r) for r in conn.execute(stmt, {"ids": ids})]
        with store.driver_reading() as reader:
            got = reader.rows(stmt, {"ids": ids})
        assert [tuple(r) for r in got] == expected
        assert all(type(a) is type(b) for row, want in zip(got, expected) for a, b in zip(row, want))
        if ids:
            assert len(got) > 0 and isinstance(got[0].exists, bool) and got[0].record_id == min(
                i for i in ids if i in {r[0] for r in expected})


def test_driver_writes_from_several_threads_and_after_a_failure(store, repo):
    """The driver write path keeps the first writing thread's connection: other threads write through
    the pool meanwhile, a failed write leaves nothing behind and the next write works, and close()
    releases it."""
    import threading

    from oneprov import DatabaseError

    store.import_cache(repo.root, progress=False)
    run = store.start_run(project="threads")
    event = {"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.unrevised_id}
    first = store.record_access(run, [event])                  # this thread keeps its connection
    with pytest.raises(DatabaseError):
        store.record_access("no-such-run", [event])             # a foreign key refuses it
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for _ in range(n):
                store.record_access(run, [event])
        except BaseException as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=write, args=(20,)) for _ in range(4)]
    for t in threads:
        t.start()
    write(20)
    for t in threads:
        t.join()
    assert not errors
    counts = store.sql("SELECT run_id, COUNT(*) AS n FROM access_events GROUP BY run_id")
    assert counts.set_index("run_id")["n"].to_dict() == {run: 1 + 5 * 20}
    last = store.record_access(run, [event])
    assert last[0] > first[0] and store.sql("SELECT max(id) AS m FROM access_events").m[0] == last[0]
    store.close()
    assert store._kept is None


@pytest.mark.parametrize("in_parts", [False, True], ids=["one transaction", "in parts"])
def test_a_first_import_adds_back_what_it_writes_its_rows_without(db_url, tmp_path, monkeypatch, in_parts):
    """A first import writes the dataset records without their secondary indexes, and on PostgreSQL
    (which checks a foreign key row by row) without their foreign key: once it completes they are
    all there, and the key holds."""
    from oneprov.store import ingest
    from oneprov.store.migrate import (BULK_FOREIGN_KEYS, BULK_INDEXES, missing_foreign_keys,
                                       missing_indexes)
    from oneprov.store.schema import dataset_records
    from oneprov.synthetic import make_repository

    repo = make_repository(tmp_path / "alf", n_sessions=150, datasets_per_session=20, write_files=False)
    if in_parts:
        monkeypatch.setattr(ingest, "SMALL_ROWS", 0)
        monkeypatch.setattr(ingest, "WRITE_SECONDS", 0.0)
        monkeypatch.setattr(ingest, "FIRST_PART", 500)
        monkeypatch.setattr(ingest, "MIN_PART", 500)
    seen, real = [], ingest._add_revisions

    def spy(conn, names, now):   # (inside the transaction that wrote a part's records)
        seen.append((missing_indexes(conn), missing_foreign_keys(conn)))
        return real(conn, names, now)

    monkeypatch.setattr(ingest, "_add_revisions", spy)
    store = open_store(db_url)
    assert store.import_cache(repo.root).datasets == len(repo.datasets) == 3000
    keys = [k.name for k in BULK_FOREIGN_KEYS] if store.dialect.name == "postgresql" else []
    assert len(seen) == (6 if in_parts else 1)
    assert seen == [([i.name for i in BULK_INDEXES], keys)] * len(seen)
    with store.reading() as conn:
        assert missing_indexes(conn) == [] and missing_foreign_keys(conn) == []
        row = dict(conn.execute(sa.select(dataset_records).limit(1)).one()._mapping)
    with pytest.raises(Exception, match="(?i)foreign key"):
        with store.writing() as conn:
            conn.execute(dataset_records.insert().values({**row, "id": 10 ** 8, "query_id": 10 ** 7}))
    store.close()


def test_what_a_stopped_first_import_left_missing_is_named_by_check_and_added_by_the_next(db_url, tmp_path):
    """A first import killed half-way leaves the indexes (and on PostgreSQL the foreign key) it
    had dropped missing: ``oneprov db check`` names each, and the next import adds them back."""
    from oneprov.store.migrate import BULK_FOREIGN_KEYS, BULK_INDEXES, check
    from oneprov.synthetic import make_repository

    repo = make_repository(tmp_path / "alf", n_sessions=60, datasets_per_session=20, write_files=False)
    store = open_store(db_url)
    store.import_cache(repo.root)
    postgres = store.dialect.name == "postgresql"
    with store.writing() as conn:   # (what the killed import's first transaction had committed)
        for index in BULK_INDEXES:
            index.drop(conn)
        for key in BULK_FOREIGN_KEYS if postgres else []:
            conn.execute(sa.schema.DropConstraint(key))
    expected = [f"index {i.name} is missing" for i in BULK_INDEXES]
    expected += [f"foreign key {k.name} is missing" for k in BULK_FOREIGN_KEYS] if postgres else []
    problems = check(db_url)
    assert [p.split(":")[0] for p in problems] == expected
    folder = copy_tables(repo, tmp_path / "changed")
    rewrite_datasets(folder, lambda df: df.assign(qc="PASS"))
    assert store.import_cache(folder).changed > 0
    assert check(db_url) == []
    store.close()


@pytest.mark.postgresql
@pytest.mark.skipif(os.environ.get("ONEPROV_TEST_POSTGRES", "1") == "0", reason="ONEPROV_TEST_POSTGRES=0")
def test_a_load_recorded_after_the_server_closed_the_kept_connection_is_recorded_once(pg, repo):
    """A load event is written on a connection the writing thread keeps (no pool, no ping). When
    the server has closed it meanwhile (restarted, an idle timeout), the write, which had not
    committed, runs again once on a new connection: the call succeeds and its event is there once."""
    from sqlalchemy.engine.url import make_url

    url = pg.create_database()
    store = open_store(url)
    store.import_cache(repo.root)
    run = store.start_run("p")
    event = {"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.datasets["id"].iloc[0]}
    first = store.record_access(run, [event])
    with pg.admin_connection() as admin:
        closed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_backend_pid()", (make_url(url).database,)).fetchall()
    assert closed and all(ok for (ok,) in closed)
    with pg.admin_connection() as admin:   # (terminating is a signal: wait until the backends are gone)
        for _ in range(200):
            if not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                 (make_url(url).database,)).fetchone()[0]:
                break
            time.sleep(0.025)
    second = store.record_access(run, [event])
    got = store.sql("SELECT id, record_id FROM access_events WHERE run_id = :r ORDER BY id", {"r": run})
    assert got["id"].tolist() == [*first, *second] and got["record_id"].notna().all()
    store.close()
