"""The history is append-only in the database itself: plain SQL cannot change or delete it.

Migrations 0003, 0008 and 0009: triggers on SQLite, trigger functions on PostgreSQL. Every refused
statement is an IntegrityError that names the table, and leaves every row as it was. Nothing is
updated in place but a running run's status and an import's totals, once.
"""
from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from oneprov import export
from oneprov.store.schema import metadata

ALL_TABLES = sorted(metadata.tables)
HISTORY = ["access_events", "session_records", "dataset_records", "query_session_spans", "query_dataset_spans",
           "query_digests", "run_marks", "exports"]
NEVER_DELETED = ["runs", "queries"]


def snapshot(engine) -> dict[str, list]:
    with engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")).fetchall()), key=repr)
                for t in ALL_TABLES}


def refused(engine, statement: str, params: dict | None = None) -> str:
    """Run ``statement`` in its own transaction; it must fail as append-only. Return the message."""
    with pytest.raises(sa.exc.IntegrityError) as err:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params or {})
    message = str(err.value.orig)
    assert "oneprov:" in message and any(w in message for w in ("append-only", "never deleted", "final")), message
    return message


@pytest.fixture
def recorded(store, repo, tmp_path):
    """A store after an import (twice, the second with a changed row), a run with a query, loads,
    a mark and an export, all through the Store API."""
    folder = tmp_path / "tables"
    folder.mkdir()
    for name in ("sessions.pqt", "datasets.pqt"):
        shutil.copy(repo.root / name, folder / name)
    store.import_cache(folder)
    table = pq.read_table(folder / "datasets.pqt")
    frame = table.to_pandas()
    frame["qc"] = frame["qc"].astype(str)
    frame.iloc[0, frame.columns.get_loc("qc")] = "CRITICAL"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=True).replace_schema_metadata(table.schema.metadata),
                   folder / "datasets.pqt")
    assert store.import_cache(folder).changed == 1           # one new dataset record

    run = store.start_run("paper", label="fig1")
    ids = sorted(repo.datasets["id"].tolist()[:3])
    store.record_query(run, "search", {"subject": "x"}, session_ids=[repo.eid], dataset_ids=ids)
    store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i} for i in ids])
    store.mark(run, "clear_list")
    export.export_loaded_ids(store, tmp_path, run=run)
    store.finish_run(run)                                     # updates the run's status, once
    counts = {t: len(rows) for t, rows in snapshot(store.engine).items()}
    assert all(counts[t] > 0 for t in HISTORY + NEVER_DELETED), counts
    return store


def test_store_api_works_with_the_triggers(recorded):
    runs = recorded.runs()
    assert runs.status.tolist() == ["finished"] and runs.loads.tolist() == [3]
    imports = recorded.sql("SELECT n_sessions, n_datasets, duration_s FROM queries WHERE method = 'import_cache'")
    assert len(imports) == 2 and imports.notna().all().all()  # the totals were filled in after each import


PLAIN_SQL = [
    "UPDATE access_events SET outcome = 'x'",
    "DELETE FROM access_events",
    "DELETE FROM access_events WHERE id = (SELECT MIN(id) FROM access_events)",
    "UPDATE dataset_records SET qc = 'PASS'",
    "UPDATE dataset_records SET rel_path = 'alf/x.y.npy' WHERE id = 1",
    "DELETE FROM dataset_records",
    "UPDATE session_records SET lab = 'renamed'",
    "DELETE FROM session_records",
    "UPDATE query_dataset_spans SET last_id = last_id",
    "DELETE FROM query_dataset_spans",
    "UPDATE query_session_spans SET first_id = first_id",
    "DELETE FROM query_session_spans",
    "UPDATE query_digests SET scheme = 'x'",
    "DELETE FROM query_digests",
    "UPDATE run_marks SET kind = 'x'",
    "DELETE FROM run_marks",
    "UPDATE exports SET sha256 = 'x'",
    "DELETE FROM exports",
    "UPDATE queries SET method = 'x'",
    "UPDATE queries SET id = id + 1000",
    "UPDATE queries SET params = '{}', n_datasets = n_datasets",
    "UPDATE queries SET n_datasets = n_datasets + 1",        # already filled in: fixed
    "UPDATE queries SET duration_s = 0",
    "UPDATE queries SET completed_at = '2030-01-01'",     # an import completes once
    "DELETE FROM queries",
    "DELETE FROM runs",
    "UPDATE runs SET status = 'running'",                  # a finished run is final
    "UPDATE runs SET error = 'rewritten'",
    "UPDATE runs SET label = 'relabelled'",
]


@pytest.mark.parametrize("statement", PLAIN_SQL)
def test_plain_sql_cannot_change_or_delete_history(recorded, statement):
    before = snapshot(recorded.engine)
    message = refused(recorded.engine, statement)
    table = statement.replace("DELETE FROM", "UPDATE").split()[1]
    assert table in message
    assert snapshot(recorded.engine) == before


@pytest.mark.parametrize("statement", ["UPDATE query_datasets SET record_id = record_id", "DELETE FROM query_datasets",
                                       "INSERT INTO query_sessions (query_id, record_id) VALUES (1, 1)"])
def test_the_views_of_query_records_cannot_be_written(recorded, statement):
    """``query_sessions`` and ``query_datasets`` are views over the spans (migration 0009): neither
    back end writes through them."""
    before = snapshot(recorded.engine)
    with pytest.raises(sa.exc.DBAPIError):
        with recorded.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert snapshot(recorded.engine) == before


def test_each_back_ends_own_ways_to_overwrite_are_refused(recorded):
    """PostgreSQL: TRUNCATE and ON CONFLICT DO UPDATE. SQLite: INSERT OR REPLACE, which deletes the
    old row without firing DELETE triggers (a BEFORE INSERT trigger refuses an existing key), and
    ``rowid``, another name of an INTEGER PRIMARY KEY."""
    engine = recorded.engine
    before = snapshot(engine)
    if recorded.dialect.name == "postgresql":
        for table in HISTORY + NEVER_DELETED:
            refused(engine, f"TRUNCATE {table} CASCADE")
        refused(engine, "INSERT INTO access_events (id, run_id, event_time, method, outcome) "
                        "SELECT id, run_id, event_time, method, outcome FROM access_events "
                        "ON CONFLICT (id) DO UPDATE SET outcome = 'x'")
    else:
        refused(engine, "INSERT OR REPLACE INTO access_events (id, run_id, event_time, method, outcome) "
                        "SELECT id, run_id, event_time, method, 'x' FROM access_events")
        refused(engine, "REPLACE INTO query_dataset_spans (query_id, first_id, last_id) "
                        "SELECT query_id, first_id, last_id FROM query_dataset_spans LIMIT 1")
        refused(engine, "INSERT OR REPLACE INTO dataset_records SELECT * FROM dataset_records LIMIT 1")
        refused(engine, "INSERT OR REPLACE INTO queries (id, method, started_at) "
                        "SELECT id, 'x', started_at FROM queries LIMIT 1")
        refused(engine, "UPDATE queries SET rowid = rowid + 1000")   # the id, by its other name
    assert snapshot(engine) == before


def test_current_state_is_a_view_of_the_latest_records(recorded, repo):
    """The second import changed one dataset: its current state (the ``datasets`` view) is the new
    record, and the record the first import returned is still there, unchanged."""
    first = repo.datasets.sort_values(["eid", "id"])["id"].iloc[0]
    records = recorded.sql("SELECT qc, query_id FROM dataset_records WHERE uuid = :id ORDER BY id", {"id": first})
    assert records.qc.tolist()[-1] == "CRITICAL" and len(records) == 2 and records.query_id.is_unique
    assert recorded.sql("SELECT qc FROM datasets WHERE id = :id", {"id": first}).qc.tolist() == ["CRITICAL"]
    assert len(recorded.sql("SELECT * FROM datasets")) == len(repo.datasets)


def test_a_running_run_is_closed_once(recorded):
    engine = recorded.engine
    run = recorded.start_run("paper")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET status = 'failed', error = 'boom', finished_at = '2030-01-01' "
                             "WHERE id = :r"), {"r": run})
    refused(engine, "UPDATE runs SET status = 'finished', error = NULL WHERE id = :r", {"r": run})
    assert recorded.sql("SELECT status, error FROM runs WHERE id = :r", {"r": run}).iloc[0].tolist() == ["failed", "boom"]


def test_query_totals_are_filled_in_once(recorded):
    engine = recorded.engine
    with engine.begin() as conn:
        qid = conn.execute(sa.text("INSERT INTO queries (method, started_at) VALUES ('import_cache', '2026-01-01') "
                                   "RETURNING id")).scalar_one()
    fill = "UPDATE queries SET n_sessions = :n, n_datasets = 2, duration_s = 0.5 WHERE id = :id"
    with engine.begin() as conn:
        conn.execute(sa.text(fill), {"n": 1, "id": qid})
        conn.execute(sa.text(fill), {"n": 1, "id": qid})      # the same values again: no change
        conn.execute(sa.text("UPDATE queries SET error = 'late' WHERE id = :id"), {"id": qid})
    refused(engine, fill, {"n": 7, "id": qid})
    refused(engine, "UPDATE queries SET error = 'changed' WHERE id = :id", {"id": qid})
    refused(engine, "UPDATE queries SET n_sessions = NULL WHERE id = :id", {"id": qid})
    row = recorded.sql("SELECT n_sessions, n_datasets, duration_s, error FROM queries WHERE id = :id", {"id": qid})
    assert row.iloc[0].tolist() == [1, 2, 0.5, "late"]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE queries SET completed_at = '2026-01-02' WHERE id = :id"), {"id": qid})
    refused(engine, "UPDATE queries SET completed_at = NULL WHERE id = :id", {"id": qid})


def test_new_rows_are_still_appended(recorded):
    before = snapshot(recorded.engine)
    run = recorded.resolve_run("last")
    with recorded.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO run_marks (run_id, marked_at, kind) VALUES (:r, '2026-01-01', 'note')"),
                     {"r": run})
    after = snapshot(recorded.engine)
    assert len(after["run_marks"]) == len(before["run_marks"]) + 1
    assert set(before["run_marks"]) <= set(after["run_marks"])
