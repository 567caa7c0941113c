"""Roles on a shared PostgreSQL: the owner migrates and grants, clients record, auditors read.

Every test runs against the real server of the test session (tests/pgserver.py): roles are made
with the administrator's connection, as a database administrator would, and each test has a
database of its own, migrated by the owner role.
"""
from __future__ import annotations

import datetime
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine.url import make_url

from oneprov import DatabaseError, export, open_store
from oneprov.store import migrate, roles
from oneprov.store.engine import create_engine
from oneprov.store.roles import CLIENT_UPDATE
from oneprov.store.schema import CURRENT_VIEWS, PUBLIC_VIEWS, metadata
from oneprov.synthetic import make_repository

pytestmark = [
    pytest.mark.postgresql,
    pytest.mark.skipif(os.environ.get("ONEPROV_TEST_POSTGRES", "1") == "0", reason="ONEPROV_TEST_POSTGRES=0"),
]

INSUFFICIENT_PRIVILEGE = "42501"


def create_role(pg, prefix: str, name: str | None = None) -> tuple[str, str]:
    """CREATE ROLE ... LOGIN, as the administrator would: (name, password)."""
    name = name or f"{prefix}_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    with pg.admin_connection() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
    return name, password


def lock_down(pg, dbname: str) -> None:
    """What an administrator does on PostgreSQL before 15 (a no-op from 15 on): no CREATE for PUBLIC."""
    with pg.admin_connection(dbname) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")


@dataclass
class Shared:
    owner: str
    dbname: str
    owner_url: str
    client: str
    client_url: str
    auditor: str
    auditor_url: str


@pytest.fixture
def shared(pg) -> Shared:
    """A new database migrated by the owner role, with a client and an auditor granted."""
    owner_url = pg.create_database()
    dbname = make_url(owner_url).database
    lock_down(pg, dbname)
    open_store(owner_url).close()                     # the owner migrates
    client, client_pw = create_role(pg, "client")
    auditor, auditor_pw = create_role(pg, "auditor")
    engine = create_engine(owner_url)
    try:
        assert roles.grant(engine, client, "client").warnings == []
        assert roles.grant(engine, auditor, "auditor").warnings == []
    finally:
        engine.dispose()
    return Shared(pg.user, dbname, owner_url, client, pg.url_for(dbname, user=client, password=client_pw),
                  auditor, pg.url_for(dbname, user=auditor, password=auditor_pw))


def snapshot(url: str) -> dict[str, list]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")).fetchall()), key=repr)
                    for t in sorted(metadata.tables)}
    finally:
        engine.dispose()


def denied(url: str, statements: list[str]) -> None:
    """Each statement, in its own transaction on a connection to ``url``, fails for lack of privilege."""
    engine = sa.create_engine(url)
    try:
        for statement in statements:
            with pytest.raises(sa.exc.DBAPIError) as err:
                with engine.begin() as conn:
                    conn.exec_driver_sql(statement)
            assert err.value.orig.sqlstate == INSUFFICIENT_PRIVILEGE, (statement, str(err.value.orig))
    finally:
        engine.dispose()


def oneprov(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "oneprov", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    if check and proc.returncode != 0:
        raise AssertionError(f"oneprov {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    return lines[0]


def record_as_client(url: str, tmp_path) -> str:
    """Everything a client does through the Store API; returns the run id."""
    repo = make_repository(tmp_path / "repo")
    with open_store(url) as store:               # reads the schema version; migrates nothing
        assert store.schema_version == migrate.head_revision()
        first = store.import_cache(repo.root)   # TEMPORARY staging tables, upserts, history
        assert first.changed == len(repo.datasets)
        table = pq.read_table(repo.root / "datasets.pqt")   # a changed row: datasets updated in place
        frame = table.to_pandas()
        frame["qc"] = frame["qc"].astype(str)
        frame.iloc[0, frame.columns.get_loc("qc")] = "CRITICAL"
        folder = tmp_path / "changed"
        folder.mkdir()
        (folder / "sessions.pqt").write_bytes((repo.root / "sessions.pqt").read_bytes())
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=True).replace_schema_metadata(table.schema.metadata),
                       folder / "datasets.pqt")
        assert store.import_cache(folder).changed == 1
        run = store.start_run("shared", label="client")
        ids = sorted(repo.datasets["id"].tolist()[:3])
        store.record_query(run, "search", {"subject": "x"}, session_ids=[repo.eid], dataset_ids=ids)
        store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i} for i in ids])
        store.mark(run, "clear_list")
        export.export_loaded_ids(store, tmp_path, run=run)
        store.finish_run(run)
        runs = store.runs()
        assert runs.status.tolist() == ["finished"] and runs.loads.tolist() == [3]
    return run


def test_client_records_imports_and_finishes_runs(shared, tmp_path):
    record_as_client(shared.client_url, tmp_path)
    counts = {t: len(rows) for t, rows in snapshot(shared.owner_url).items()}
    assert all(n > 0 for n in counts.values()), counts


def test_client_cannot_change_the_schema_or_the_history(shared, tmp_path):
    record_as_client(shared.client_url, tmp_path)
    before = snapshot(shared.owner_url)
    denied(shared.client_url, [
        "CREATE TABLE notes (x text)",
        "CREATE VIEW notes AS SELECT 1 AS x",
        "DROP TABLE access_events",
        "DROP VIEW access_log",
        "ALTER TABLE access_events ADD COLUMN note text",
        "ALTER TABLE access_events DISABLE TRIGGER ALL",
        "DROP TRIGGER oneprov_append_only ON access_events",
        "DROP FUNCTION oneprov_append_only()",
        "UPDATE access_events SET outcome = 'x'",
        "DELETE FROM access_events",
        "TRUNCATE access_events",
        "UPDATE dataset_records SET qc = 'PASS'",
        "DELETE FROM session_records",
        "DELETE FROM query_dataset_spans",
        "UPDATE run_marks SET kind = 'x'",
        "DELETE FROM exports",
        "DELETE FROM runs",
        "DELETE FROM datasets",                           # a view
        "UPDATE runs SET project_id = project_id",      # a run's status, finish time and error only
        "UPDATE queries SET method = 'x'",                # the import totals only
        "UPDATE alembic_version SET version_num = '0001'",
        "DELETE FROM alembic_version",
    ])
    # A column a client may update is still guarded by the trigger: totals are filled in once.
    engine = sa.create_engine(shared.client_url)
    with pytest.raises(sa.exc.IntegrityError, match="queries is append-only"):
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE queries SET n_datasets = n_datasets + 1")
    engine.dispose()
    assert snapshot(shared.owner_url) == before


def test_effective_privileges_are_exactly_the_kinds(shared):
    """Checked by the server: what each role may do to each table, and the update columns."""
    engine = sa.create_engine(shared.owner_url)
    with engine.connect() as conn:
        def can(role, table, privilege):
            return conn.execute(sa.text("SELECT has_table_privilege(CAST(:r AS name), :t, :p)"),
                                {"r": role, "t": table, "p": privilege}).scalar()

        def can_update_column(role, table, column):
            return conn.execute(sa.text("SELECT has_column_privilege(CAST(:r AS name), :t, :c, 'UPDATE')"),
                                {"r": role, "t": table, "c": column}).scalar()

        for table in metadata.tables:
            assert can(shared.client, table, "SELECT") and can(shared.client, table, "INSERT")
            assert can(shared.client, table, "UPDATE") == (table in CLIENT_UPDATE and CLIENT_UPDATE[table] is None)
            for column in metadata.tables[table].columns:
                allowed = table in CLIENT_UPDATE and (CLIENT_UPDATE[table] is None
                                                     or column.name in CLIENT_UPDATE[table])
                assert can_update_column(shared.client, table, column.name) == allowed, (table, column.name)
            assert can(shared.auditor, table, "SELECT")
            for privilege in ("DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                assert not can(shared.client, table, privilege) and not can(shared.auditor, table, privilege)
            for privilege in ("INSERT", "UPDATE"):
                assert not can(shared.auditor, table, privilege)
        for name in [*PUBLIC_VIEWS, *CURRENT_VIEWS, "alembic_version"]:
            for role in (shared.client, shared.auditor):
                assert can(role, name, "SELECT") and not can(role, name, "INSERT") and not can(role, name, "UPDATE")
        assert conn.execute(sa.text("SELECT has_database_privilege(CAST(:r AS name), current_database(), 'TEMPORARY')"),
                            {"r": shared.client}).scalar()
    engine.dispose()


def test_auditor_reads_but_cannot_write(shared, tmp_path):
    run = record_as_client(shared.client_url, tmp_path)
    before = snapshot(shared.owner_url)
    engine = sa.create_engine(shared.auditor_url)
    with engine.connect() as conn:
        for view, columns in PUBLIC_VIEWS.items():
            assert list(conn.execute(sa.text(f"SELECT * FROM {view}")).keys()) == columns
        assert conn.execute(sa.text("SELECT COUNT(*) FROM loaded_datasets WHERE run_id = :r"), {"r": run}).scalar() == 3
        assert conn.execute(sa.text("SELECT COUNT(*) FROM datasets WHERE qc = 'CRITICAL'")).scalar() >= 1
    engine.dispose()
    denied(shared.auditor_url, [
        "INSERT INTO projects (name, created_at) VALUES ('x', now())",
        "INSERT INTO access_events (run_id, event_time, method, outcome) "
        f"VALUES ('{run}', now(), 'load_dataset', 'loaded')",
        "UPDATE runs SET status = 'failed'",
        "UPDATE datasets SET qc = 'PASS'",
        "DELETE FROM sessions",
        "CREATE TABLE notes (x text)",
        "DROP VIEW loaded_sessions",
    ])
    with open_store(shared.auditor_url) as store:   # opening only reads the schema version
        assert store.runs().run_id.tolist() == [run]
        with pytest.raises(DatabaseError, match="permission denied"):
            store.start_run("auditor")
    assert snapshot(shared.owner_url) == before

    out = oneprov("sql", "SELECT project, COUNT(*) AS n FROM loaded_datasets GROUP BY project",
                  "--format", "csv", "--db", shared.auditor_url).stdout
    assert out.splitlines() == ["project,n", "shared,3"]
    assert "refused" in one_line_error(oneprov("sql", "DELETE FROM access_events", "--db", shared.auditor_url,
                                               check=False))
    assert snapshot(shared.owner_url) == before


def test_client_cannot_migrate_an_older_schema_and_says_who_can(shared, tmp_path):
    owner = create_engine(shared.owner_url)
    try:
        migrate.downgrade(owner, "0002")
        with pytest.raises(DatabaseError) as err:
            open_store(shared.client_url)
        message = str(err.value)
        assert "0002" in message and migrate.head_revision() in message
        assert "`oneprov db upgrade`" in message and repr(shared.owner) in message
        password = make_url(shared.client_url).password
        assert password not in message
        line = one_line_error(oneprov("db", "upgrade", "--db", shared.client_url, check=False))
        assert "oneprov db upgrade" in line and shared.owner in line
        assert migrate.schema_status(owner).current == "0002"           # nothing was changed

        migrate.upgrade(owner)                                           # the owner upgrades, grants again ...
        roles.grant(owner, shared.client, "client")
        record_as_client(shared.client_url, tmp_path)                     # ... and the client carries on
    finally:
        owner.dispose()


def test_client_on_an_empty_database_is_told_to_have_the_owner_create_it(pg):
    url = pg.create_database()
    lock_down(pg, make_url(url).database)
    client, password = create_role(pg, "client")
    with pytest.raises(DatabaseError, match=r"no oneprov schema yet .* `oneprov db upgrade`"):
        open_store(pg.url_for(make_url(url).database, user=client, password=password))
    engine = create_engine(url)
    assert migrate.schema_status(engine).current is None and not sa.inspect(engine).get_table_names()
    engine.dispose()


def test_grant_refuses_what_it_cannot_do(pg, shared, tmp_path):
    owner = create_engine(shared.owner_url)
    client = create_engine(shared.client_url)
    sqlite = create_engine(tmp_path / "p.sqlite")
    try:
        with pytest.raises(DatabaseError, match=r"does not exist.*administrator.*CREATE ROLE"):
            roles.grant(owner, "nobody_at_all", "client")
        with pytest.raises(DatabaseError, match=r"owner .* privileges cannot limit it"):
            roles.grant(owner, shared.owner, "client")
        with pytest.raises(DatabaseError, match=r"superuser"):
            roles.grant(owner, pg.admin_user, "auditor")
        with pytest.raises(DatabaseError, match=rf"belong to role '{shared.owner}'.*role '{shared.client}'"):
            roles.grant(client, shared.auditor, "client")
        with pytest.raises(DatabaseError, match="roles are a PostgreSQL feature"):
            roles.grant(sqlite, "anyone", "client")
        assert not (tmp_path / "p.sqlite").exists()
        with pytest.raises(ValueError, match="client' or 'auditor"):
            roles.grant(owner, shared.client, "admin")
        migrate.downgrade(owner, "0002")
        with pytest.raises(DatabaseError, match="oneprov db upgrade"):
            roles.grant(owner, shared.client, "client")
    finally:
        for engine in (owner, client, sqlite):
            engine.dispose()


def test_role_names_are_quoted_never_formatted(pg, shared):
    name, password = create_role(pg, "", name='odd "name"; DROP TABLE runs; -- 50%')
    engine = create_engine(shared.owner_url)
    try:
        result = roles.grant(engine, name, "auditor")
        assert '"odd ""name""; DROP TABLE runs; -- 50%"' in result.statements[0]
        assert "runs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    url = pg.url_for(shared.dbname, user=name, password=password)
    assert oneprov("sql", "SELECT COUNT(*) AS n FROM runs", "--format", "csv", "--db", url).stdout.split() == ["n", "0"]


def test_grant_again_changes_the_kind_and_dry_run_changes_nothing(pg, shared):
    engine = create_engine(shared.owner_url)
    try:
        roles.grant(engine, shared.client, "auditor")               # a client demoted to auditor
        denied(shared.client_url, ["INSERT INTO projects (name, created_at) VALUES ('x', now())"])
        assert roles.grant(engine, shared.client, "client").warnings == []   # and back: idempotent
        with open_store(shared.client_url) as store:
            store.finish_run(store.start_run("again"))

        newcomer, _ = create_role(pg, "newcomer")
        dry = roles.grant(engine, newcomer, "client", dry_run=True)
        assert any(s.startswith("GRANT INSERT ON TABLE") for s in dry.statements)
        with engine.connect() as conn:
            assert not conn.execute(sa.text("SELECT has_table_privilege(CAST(:r AS name), 'runs', 'SELECT')"),
                                    {"r": newcomer}).scalar()
    finally:
        engine.dispose()


def test_grant_warns_about_rights_held_through_public(shared):
    engine = create_engine(shared.owner_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("GRANT UPDATE, DELETE ON access_events TO PUBLIC")
        warnings = roles.grant(engine, shared.auditor, "auditor").warnings
        assert len(warnings) == 1
        assert "DELETE on access_events, UPDATE on access_events" in warnings[0] and "PUBLIC" in warnings[0]
        with engine.begin() as conn:
            conn.exec_driver_sql("REVOKE UPDATE, DELETE ON access_events FROM PUBLIC")
        assert roles.grant(engine, shared.auditor, "auditor").warnings == []
    finally:
        engine.dispose()


def test_db_grant_command(pg, shared, tmp_path):
    newcomer, password = create_role(pg, "newcomer")
    out = oneprov("db", "grant", "--role", newcomer, "--kind", "client", "--db", shared.owner_url).stdout
    assert f"role '{newcomer}' has the privileges of a oneprov client" in out
    assert password not in out and pg.password not in out
    with open_store(pg.url_for(shared.dbname, user=newcomer, password=password)) as store:
        store.finish_run(store.start_run("cli"))

    dry = oneprov("db", "grant", "--role", newcomer, "--kind", "auditor", "--dry-run", "--db", shared.owner_url).stdout
    assert 'GRANT SELECT ON TABLE "public"."access_events"' in dry and "INSERT" not in dry.replace("REVOKE ALL", "")

    assert "does not exist" in one_line_error(oneprov("db", "grant", "--role", "nobody_at_all", "--kind", "client",
                                                      "--db", shared.owner_url, check=False))
    line = one_line_error(oneprov("db", "grant", "--role", "x", "--kind", "client", "--db",
                                  str(tmp_path / "p.sqlite"), check=False))
    assert "PostgreSQL" in line and not (tmp_path / "p.sqlite").exists()


def test_grant_warns_when_only_the_database_owner_can_grant(pg, tmp_path):
    """A layout some administrators prefer: the database is theirs, the tables the owner role's."""
    name = f"db_{secrets.token_hex(6)}"
    with pg.admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    lock_down(pg, name)
    with pg.admin_connection(name) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(pg.user)))
    url = pg.url_for(name)
    open_store(url).close()
    client, password = create_role(pg, "client")
    engine = create_engine(url)
    try:
        assert roles.grant(engine, client, "client").warnings == [
            f"role '{client}' lacks TEMPORARY on database '{name}' (imports need temporary tables): only the "
            "database's owner can grant it"]
        with pg.admin_connection() as conn:
            conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(sql.Identifier(name),
                                                                               sql.Identifier(client)))
        assert roles.grant(engine, client, "client").warnings == []
    finally:
        engine.dispose()
    with open_store(pg.url_for(name, user=client, password=password)) as store:
        store.import_cache(make_repository(tmp_path / "repo").root)   # needs TEMPORARY


def test_a_client_cannot_record_into_or_close_another_roles_run(pg, shared, tmp_path):
    """Only the role that started a run adds its events, queries, marks and exports, and closes it;
    any client may retire it (a retirement is a note about the run, not part of it)."""
    other, other_pw = create_role(pg, "other")
    engine = create_engine(shared.owner_url)
    try:
        roles.grant(engine, other, "client")
    finally:
        engine.dispose()
    other_url = pg.url_for(shared.dbname, user=other, password=other_pw)
    with open_store(shared.client_url) as mine:
        run = mine.start_run("shared", label="mine")
        mine.record_access(run, [{"method": "load_dataset", "outcome": "not_found", "rel_path": "a.npy"}])
    before = snapshot(shared.owner_url)
    with open_store(other_url) as theirs:
        attempts = [
            lambda: theirs.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "rel_path": "b.npy",
                                                "event_time": datetime.datetime(2020, 1, 1)}]),   # backdated
            lambda: theirs.record_query(run, "search", {"subject": "x"}),
            lambda: theirs.mark(run, "clear_list"),
            lambda: theirs.finish_run(run, "failed", "forged"),
        ]
        for attempt in attempts:
            with pytest.raises(DatabaseError, match="was started by role"):
                attempt()
        assert snapshot(shared.owner_url) == before
        theirs.retire_run(run, "reviewed by another lab member")
        own = theirs.start_run("shared", label="theirs")
        theirs.record_access(own, [{"method": "load_dataset", "outcome": "not_found", "rel_path": "c.npy"}])
        theirs.finish_run(own)
    with open_store(shared.owner_url) as store:
        runs = store.runs().set_index("label")
        assert bool(runs.loc["mine", "retired"]) and runs.loc["mine", "status"] == "running"
        assert runs.loc["mine", "loads"] == 0 and runs.loc["theirs", "status"] == "finished"


RESERVE_IDS = """
import json, random, sys
from oneprov import open_store
from oneprov.store.schema import dataset_records, session_records
store = open_store(sys.argv[1])
rng, taken = random.Random(int(sys.argv[2])), []
for _ in range(40):
    with store.writing() as conn:
        table = rng.choice([dataset_records, session_records])
        ids = list(store.dialect.reserve_ids(conn, table, rng.randint(1, 400)))
        taken.append([table.name, ids])
print(json.dumps(taken))
"""


def test_owner_and_clients_drawing_ids_at_once_each_get_one_range_of_their_own(shared):
    """Every writer of records draws its ids under one lock a table: the owner moves the sequence
    on in one call, a client (which may not) draws them one by one. Two owner and two client
    processes drawing at once: each draw is one range, and no id is drawn twice."""
    procs = [subprocess.Popen([sys.executable, "-c", RESERVE_IDS, url, str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for seed, url in enumerate([shared.owner_url, shared.client_url] * 2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    drawn: dict[str, list[int]] = {"dataset_records": [], "session_records": []}
    for out, _ in results:
        for table, ids in json.loads(out):
            assert ids == list(range(ids[0], ids[0] + len(ids))), (table, ids[:5])
            drawn[table].extend(ids)
    for table, ids in drawn.items():
        assert len(ids) > 1000 and len(set(ids)) == len(ids), table
