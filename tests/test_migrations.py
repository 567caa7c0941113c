"""The schema's history: migrations agree with the models, go down and up, and guard versions."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from oneprov import DatabaseError, SchemaVersionError, open_store
from oneprov.store import migrate
from oneprov.store.engine import create_engine
from oneprov.store.schema import CURRENT_VIEWS, LINK_VIEWS, PUBLIC_VIEWS, metadata

ROOT = Path(__file__).parent.parent


def schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


def view_columns(engine: sa.Engine, view: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"SELECT * FROM {view} WHERE 1 = 0")).keys())


def user_tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_agrees_with_models(db_url):
    engine = create_engine(db_url)
    try:
        assert migrate.schema_status(engine).current is None
        assert migrate.upgrade(engine).current == migrate.head_revision()
        assert schema_diff(engine) == []
        assert user_tables(engine) == set(metadata.tables)
        for view, columns in {**PUBLIC_VIEWS, **CURRENT_VIEWS, **LINK_VIEWS}.items():
            assert view_columns(engine, view) == columns

        assert migrate.downgrade(engine, "base").current is None
        assert user_tables(engine) == set()
        assert sa.inspect(engine).get_view_names() == []

        migrate.upgrade(engine)
        assert schema_diff(engine) == []
        assert view_columns(engine, "access_log") == PUBLIC_VIEWS["access_log"]
    finally:
        engine.dispose()


def test_single_head():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1


def test_sqlite_is_set_up_for_many_processes(tmp_path):
    store = open_store(tmp_path / "p.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    store.close()


def test_newer_schema_is_refused_and_nothing_changes(tmp_path):
    path = tmp_path / "p.sqlite"
    open_store(path).close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError) as err:
        open_store(path)
    assert "9999_from_the_future" in str(err.value) and migrate.head_revision() in str(err.value)
    assert path.read_bytes() == before


def test_newer_schema_is_refused_on_postgresql(pg):
    url = pg.create_database()
    open_store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(SchemaVersionError, match="9999_from_the_future"):
        open_store(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "9999_from_the_future"
    engine.dispose()


def test_foreign_database_is_not_written(tmp_path):
    path = tmp_path / "other.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (x TEXT)")
    engine.dispose()
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match="no oneprov schema version"):
        open_store(path)
    assert path.read_bytes() == before


def test_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"this is not a database, just some text\n" * 100)
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match=str(path)):
        open_store(path)
    assert path.read_bytes() == before


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_store(tmp_path / "no" / "such" / "p.sqlite")


def test_no_database_says_what_to_pass(monkeypatch):
    monkeypatch.delenv("ONEPROV_DB", raising=False)
    with pytest.raises(DatabaseError, match="ONEPROV_DB"):
        open_store()


def test_database_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ONEPROV_DB", str(tmp_path / "env.sqlite"))
    open_store().close()
    assert (tmp_path / "env.sqlite").exists()


def test_wheel_carries_migrations_and_upgrades_without_the_repo(tmp_path):
    """Build the wheel, unpack it away from the repository, and create a database with it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("oneprov-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "oneprov/migrations/env.py" in names
    assert any(n.startswith("oneprov/migrations/versions/0001_") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import oneprov, sys; s = oneprov.open_store(sys.argv[1]); "
            "print(oneprov.__file__); print(s.schema_version)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.sqlite")], cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[0].startswith(str(site))
    assert out[1] == migrate.head_revision()


def _link_tables(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                                         "AND name IN ('query_sessions', 'query_datasets')").fetchall())


def _triggers(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}


def test_link_tables_are_rebuilt_without_rowid_keeping_rows_and_triggers(tmp_path):
    """Migration 0004 (SQLite): same rows and append-only triggers before and after, both ways."""
    engine = create_engine(tmp_path / "p.sqlite")
    try:
        migrate.upgrade(engine, "0003")
        triggers = _triggers(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO queries (id, method, started_at) VALUES (7, 'search', '2026-01-01')")
            conn.exec_driver_sql("INSERT INTO query_sessions VALUES (7, 'a'), (7, 'b')")
            conn.exec_driver_sql("INSERT INTO query_datasets VALUES (7, 'c', 3)")
        rows = {t: sorted(open_rows(engine, t)) for t in ("query_sessions", "query_datasets")}
        migrate.upgrade(engine, "0004")
        assert all(sql.rstrip().endswith("WITHOUT ROWID") for sql in _link_tables(engine).values())
        assert {t: sorted(open_rows(engine, t)) for t in rows} == rows and _triggers(engine) == triggers
        with pytest.raises(sa.exc.IntegrityError, match="append-only"):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT OR REPLACE INTO query_datasets VALUES (7, 'c', 4)")
        migrate.downgrade(engine, "0003")
        assert not any("WITHOUT ROWID" in sql for sql in _link_tables(engine).values())
        assert {t: sorted(open_rows(engine, t)) for t in rows} == rows and _triggers(engine) == triggers
    finally:
        engine.dispose()
    # the models say the same: a table created from them is stored without rowid too
    fresh = sa.create_engine(f"sqlite:///{tmp_path / 'models.sqlite'}")
    metadata.create_all(fresh)
    assert all(sql.rstrip().endswith("WITHOUT ROWID") for sql in _link_tables(fresh).values())
    fresh.dispose()


def open_rows(engine: sa.Engine, table: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table}")]


# -- migration 0008 (records), with data, both ways ----------------------------------------------

S1, S2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
D1, D2, D3 = ("aaaaaaaa-0000-4000-8000-00000000000" + str(k) for k in (1, 2, 3))
RUN = "99999999-9999-4999-8999-999999999999"
#: A database of schema 0007 as its oneprov wrote it: two imports (D1 changed QC in the second),
#: a search, a run that loaded D1 in its first state and D2, a cleared list and an export.
SCHEMA_0007_ROWS = [
    "INSERT INTO projects (id, name, created_at) VALUES (1, 'paper', '2026-01-01 00:00:00')",
    f"INSERT INTO runs (id, project_id, status, started_at, finished_at) VALUES ('{RUN}', 1, 'finished', "
    "'2026-01-02 00:00:00', '2026-01-02 01:00:00')",
    "INSERT INTO queries (id, method, source, checksum, mode, started_at, duration_s, n_sessions, n_datasets) VALUES "
    "(1, 'import_cache', '/t', 'c1', 'local', '2026-01-01 00:00:00', 1.0, 2, 3), "
    "(2, 'import_cache', '/t', 'c2', 'local', '2026-01-03 00:00:00', 1.0, 2, 3)",
    f"INSERT INTO queries (id, run_id, method, params, mode, started_at, n_sessions, n_datasets) VALUES "
    f"(3, '{RUN}', 'search', '{{}}', 'local', '2026-01-02 00:10:00', 1, 1)",
    f"INSERT INTO sessions (id, lab, subject, date, number, task_protocol, projects, first_seen_at, updated_at) VALUES "
    f"('{S1}', 'lab', 'mouse1', '2025-05-05', 1, 'task', 'p1', '2026-01-01 00:00:00', '2026-01-01 00:00:00'), "
    f"('{S2}', NULL, 'mouse2', '2025-05-06', 2, NULL, NULL, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    f"INSERT INTO datasets (id, session_id, rel_path, collection, revision, name, file_size, hash, \"exists\", qc, "
    f"default_revision, state_id, first_seen_at, updated_at) VALUES "
    f"('{D1}', '{S1}', 'alf/#2024-01-01#/spikes.times.npy', 'alf', '2024-01-01', 'spikes.times.npy', 10, 'ab', TRUE, "
    f"'CRITICAL', TRUE, 4, '2026-01-01 00:00:00', '2026-01-03 00:00:00'), "
    f"('{D2}', '{S1}', 'alf/trials.table.pqt', 'alf', '', 'trials.table.pqt', NULL, NULL, TRUE, 'PASS', NULL, 2, "
    f"'2026-01-01 00:00:00', '2026-01-01 00:00:00'), "
    f"('{D3}', '{S2}', 'raw/x.y.bin', 'raw', '', 'x.y.bin', 5, NULL, FALSE, 'NOT_SET', TRUE, 3, "
    f"'2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    f"INSERT INTO dataset_history (id, dataset_id, query_id, observed_at, qc, default_revision, \"exists\", hash, "
    f"file_size) VALUES (1, '{D1}', 1, '2026-01-01 00:00:00', 'PASS', TRUE, TRUE, 'ab', 10), "
    f"(2, '{D2}', 1, '2026-01-01 00:00:00', 'PASS', NULL, TRUE, NULL, NULL), "
    f"(3, '{D3}', 1, '2026-01-01 00:00:00', 'NOT_SET', TRUE, FALSE, NULL, 5), "
    f"(4, '{D1}', 2, '2026-01-03 00:00:00', 'CRITICAL', TRUE, TRUE, 'ab', 10)",
    f"INSERT INTO query_sessions (query_id, session_id) VALUES (1, '{S1}'), (1, '{S2}'), (2, '{S1}'), (2, '{S2}'), "
    f"(3, '{S1}')",
    f"INSERT INTO query_datasets (query_id, dataset_id, state_id) VALUES (1, '{D1}', 1), (1, '{D2}', 2), "
    f"(1, '{D3}', 3), (2, '{D1}', 4), (2, '{D2}', 2), (2, '{D3}', 3), (3, '{D1}', 1)",
    f"INSERT INTO access_events (id, run_id, event_time, method, outcome, dataset_id, session_id, rel_path, state_id, "
    f"listed) VALUES (1, '{RUN}', '2026-01-02 00:20:00', 'load_dataset', 'loaded', '{D1}', '{S1}', "
    f"'alf/#2024-01-01#/spikes.times.npy', 1, TRUE), "
    f"(2, '{RUN}', '2026-01-02 00:21:00', 'load_dataset', 'loaded', '{D2}', '{S1}', 'alf/trials.table.pqt', 2, TRUE), "
    f"(3, '{RUN}', '2026-01-02 00:22:00', 'load_dataset', 'not_found', NULL, '{S1}', 'alf/none.npy', NULL, TRUE)",
    f"INSERT INTO run_marks (id, run_id, marked_at, kind) VALUES (1, '{RUN}', '2026-01-02 00:30:00', 'clear_list')",
    f"INSERT INTO exports (id, run_id, kind, path, rows, bytes, sha256, created_at) VALUES "
    f"(1, '{RUN}', 'loaded_dataset_ids', '/x.csv', 2, 90, 'ff', '2026-01-02 00:31:00')",
]


def rows_of(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(str(v) for v in r) for r in conn.exec_driver_sql(sql).fetchall())


def test_records_migration_moves_every_row_and_back(db_url):
    """0007 -> 0008 -> 0007 on both back ends: each history row becomes the record with its id, each
    link and event names the record it named, the public views show the same rows, and the way back
    gives the tables of 0007 again."""
    engine = create_engine(db_url)
    try:
        migrate.upgrade(engine, "0007")
        with engine.begin() as conn:
            for statement in SCHEMA_0007_ROWS:
                conn.exec_driver_sql(statement)
            if conn.dialect.name == "postgresql":   # (ids given explicitly above: the sequences follow)
                for table in ("projects", "queries", "dataset_history", "access_events", "run_marks", "exports"):
                    conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")
        values = {"sessions": "id, lab, subject, date, number, task_protocol, projects",
                  "datasets": 'id, session_id, rel_path, collection, revision, name, file_size, hash, "exists", qc, '
                              'default_revision, state_id'}
        old = {t: rows_of(engine, f"SELECT {values.get(t, '*')} FROM {t}") for t in
               ("sessions", "datasets", "dataset_history", "query_sessions", "query_datasets")}
        public = {v: rows_of(engine, f"SELECT * FROM {v}") for v in PUBLIC_VIEWS}
        events = rows_of(engine, "SELECT id, state_id FROM access_events")

        migrate.upgrade(engine)
        assert schema_diff(engine) == []
        assert {v: rows_of(engine, f"SELECT * FROM {v}") for v in PUBLIC_VIEWS} == public
        assert rows_of(engine, "SELECT id, uuid, qc, query_id FROM dataset_records") == sorted(
            (str(i), d, q, str(k)) for i, d, q, k in [(1, D1, "PASS", 1), (2, D2, "PASS", 1), (3, D3, "NOT_SET", 1),
                                                       (4, D1, "CRITICAL", 2)])
        assert rows_of(engine, "SELECT uuid, subject FROM session_records") == [(S1, "mouse1"), (S2, "mouse2")]
        assert rows_of(engine, "SELECT id, record_id FROM access_events") == events
        linked = rows_of(engine, "SELECT q.query_id, r.uuid FROM query_datasets q "
                                 "JOIN dataset_records r ON r.id = q.record_id WHERE q.record_id = 1")
        assert linked == [("1", D1), ("3", D1)]    # the search saw D1 in its first state, as recorded
        assert rows_of(engine, "SELECT id, qc, record_id FROM datasets") == [(D1, "CRITICAL", "4"), (D2, "PASS", "2"),
                                                                               (D3, "NOT_SET", "3")]
        assert rows_of(engine, "SELECT COUNT(*) FROM queries WHERE completed_at IS NULL") == [("0",)]
        # the upgraded database takes new writes
        with open_store(db_url) as store:
            run = store.start_run("paper")
            store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": D3}])
            assert store.sql("SELECT record_id FROM access_events WHERE run_id = :r", {"r": run}).record_id.tolist() == [3]
        with engine.begin() as conn:   # (leave the 0007 rows alone for the comparison below)
            conn.exec_driver_sql(f"INSERT INTO run_marks (run_id, marked_at, kind) VALUES ('{run}', "
                                 "'2026-02-01 00:00:00', 'note')")

        migrate.downgrade(engine, "0007")
        # the same rows (current rows by their values: first-seen times are those of their first records)
        assert {t: rows_of(engine, f"SELECT {values.get(t, '*')} FROM {t}") for t in old} == old
        assert {v: [r for r in rows_of(engine, f"SELECT * FROM {v}") if RUN in r] for v in PUBLIC_VIEWS} == public
        assert rows_of(engine, "SELECT id, state_id FROM access_events WHERE id <= 3") == events
        migrate.upgrade(engine)                       # and up again
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_links_become_spans_and_back(db_url):
    """0008 -> 0009 -> 0008 on both back ends: each query's links become the fewest spans (a run of
    consecutive records is one), the views ``query_sessions``/``query_datasets`` show exactly the
    links, and the way back gives the link rows again."""
    engine = create_engine(db_url)
    try:
        migrate.upgrade(engine, "0008")
        now = "'2026-01-01 00:00:00'"
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO queries (id, method, started_at, completed_at) VALUES "
                                 f"(1, 'import_cache', {now}, {now}), (2, 'search', {now}, {now}), "
                                 f"(3, 'list_datasets', {now}, {now})")
            conn.exec_driver_sql("INSERT INTO session_records (id, uuid, subject, query_id, first_seen_at) VALUES " +
                                 ", ".join(f"({i}, '{S1[:-2]}{i:02d}', 'm', 1, {now})" for i in range(1, 6)))
            conn.exec_driver_sql(
                "INSERT INTO dataset_records (id, uuid, session_uuid, rel_path, collection, revision, name, \"exists\", "
                "qc, query_id, first_seen_at) VALUES " +
                ", ".join(f"({i}, '{D1[:-2]}{i:02d}', '{S1}', 'alf/x{i}.npy', 'alf', '', 'x{i}.npy', TRUE, 'PASS', 1, {now})"
                          for i in range(1, 13)))
            links = {"query_sessions": [(1, i) for i in range(1, 6)] + [(2, 2), (2, 4), (2, 5)],
                     "query_datasets": [(1, i) for i in range(1, 13)] + [(2, i) for i in (1, 2, 3, 7, 8, 12)]
                     + [(3, 9)]}
            for table, rows in links.items():
                conn.exec_driver_sql(f"INSERT INTO {table} (query_id, record_id) VALUES " +
                                     ", ".join(f"({q}, {r})" for q, r in rows))
        old = {t: rows_of(engine, f"SELECT query_id, record_id FROM {t}") for t in links}

        migrate.upgrade(engine)
        assert schema_diff(engine) == []
        assert {t: rows_of(engine, f"SELECT query_id, record_id FROM {t}") for t in links} == old
        assert rows_of(engine, "SELECT query_id, first_id, last_id FROM query_dataset_spans") == sorted(
            tuple(str(v) for v in r) for r in [(1, 1, 12), (2, 1, 3), (2, 7, 8), (2, 12, 12), (3, 9, 9)])
        assert rows_of(engine, "SELECT query_id, first_id, last_id FROM query_session_spans") == sorted(
            tuple(str(v) for v in r) for r in [(1, 1, 5), (2, 2, 2), (2, 4, 5)])
        with open_store(db_url) as store:   # the upgraded database answers from the spans
            held = store.sql("SELECT count(*) AS n FROM query_datasets WHERE query_id = 2").n[0]
            assert held == 6

        migrate.downgrade(engine, "0008")
        assert {t: rows_of(engine, f"SELECT query_id, record_id FROM {t}") for t in links} == old
        assert "query_dataset_spans" not in user_tables(engine) and "query_datasets" in user_tables(engine)
        migrate.upgrade(engine)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_digests_are_stored_uncompressed_on_postgresql_and_back(pg):
    """0009 -> 0010 -> 0009 on PostgreSQL: the digests' columns are stored as they are (EXTERNAL:
    no compression tried), and back as bytea's default (EXTENDED); digests stored before read the same."""
    import numpy as np

    from oneprov.store import digests

    engine = create_engine(pg.create_database())
    storage = ("SELECT attname, attstorage FROM pg_attribute WHERE attrelid = 'query_digests'::regclass "
               "AND attname IN ('record_ids', 'digests')")
    try:
        migrate.upgrade(engine, "0009")
        assert set(rows_of(engine, storage)) == {("record_ids", "x"), ("digests", "x")}
        words = np.arange(30, dtype=np.uint64).reshape(10, 3)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO queries (id, method, started_at) VALUES (1, 'import_cache', now())")
            digests.store_digests(conn, 1, "dataset_records", np.arange(1, 11), words)
        migrate.upgrade(engine)
        assert set(rows_of(engine, storage)) == {("record_ids", "e"), ("digests", "e")}
        with engine.connect() as conn:
            ids, stored = digests.read_digests(conn, 1, "dataset_records")
        assert ids.tolist() == list(range(1, 11)) and (stored == words).all()
        migrate.downgrade(engine, "0009")
        assert set(rows_of(engine, storage)) == {("record_ids", "x"), ("digests", "x")}
        migrate.upgrade(engine)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()
