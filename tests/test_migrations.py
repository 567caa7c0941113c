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
from oneprov.store.schema import PUBLIC_VIEWS, metadata

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
        for view, columns in PUBLIC_VIEWS.items():
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
