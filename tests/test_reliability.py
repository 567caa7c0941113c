"""Nothing is lost: real concurrent processes, first-start races, SIGKILLs and failed migrations."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from oneprov import open_store
from oneprov.store import migrate
from oneprov.store.engine import create_engine
from oneprov.store.migrate import check

N_PROCS = 8

OPEN_SCRIPT = """
import sys, time
from oneprov import open_store
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
store = open_store(sys.argv[1])
print(store.schema_version)
"""


def run_all(script: str, args_per_proc: list[list[str]], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args in args_per_proc]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


@pytest.mark.slow
def test_first_start_race(db_url):
    """8 processes open the same brand-new database at the same moment: all succeed, schema made once."""
    start = str(time.time() + 2.0)
    results = run_all(OPEN_SCRIPT, [[db_url, start]] * N_PROCS)
    for r in results:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == migrate.head_revision()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(sa.text("SELECT COUNT(*) FROM projects")).scalar() == 0
    engine.dispose()
    if db_url.endswith(".sqlite"):
        assert check(db_url) == []


UPGRADE_SCRIPT = """
import sys, time
from oneprov.cli import main
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
main(["db", "upgrade", "--db", sys.argv[1]])
"""


def test_first_start_race_only_the_migrating_process_says_it_migrated(db_url):
    start = str(time.time() + 2.0)
    results = run_all(UPGRADE_SCRIPT, [[db_url, start]] * N_PROCS)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    said = sorted(r.stdout.strip() for r in results)
    head = migrate.head_revision()
    assert said == [f"schema already at {head}"] * (N_PROCS - 1) + [f"schema empty -> {head}"], said


WRITER_SCRIPT = """
import json, sys, time
from oneprov import ONE
cache, db, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
specs = json.loads(sys.argv[5])
one = ONE(cache_dir=cache, db=db, project="proc", label=sys.argv[6])
time.sleep(max(0.0, start - time.time()))
acked = 0
for i in range(n):
    eid, name = specs[i % len(specs)]
    if i % 10 == 0:
        one.list_datasets(eid)
    one.load_dataset(eid, name, download_only=True)
    acked += 1
print(json.dumps({"run": one.run_id, "acked": acked}))
"""


def loadable_specs(repo) -> list[list[str]]:
    ok = repo.datasets[~repo.datasets["id"].isin([repo.missing_id, repo.critical_id])]
    ok = ok[~ok["rel_path"].str.contains("#")]
    return [[r.eid, r.rel_path] for r in ok.itertuples()][:15]


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(db_url, repo, tmp_path):
    """8 processes, each its own client and run, record loads and queries as fast as they can."""
    cache = shutil.copytree(repo.root, tmp_path / "cache")
    open_store(db_url).import_cache(cache)            # the tables are imported once, up front
    n = 150
    start = str(time.time() + 3.0)
    specs = json.dumps(loadable_specs(repo))
    results = run_all(WRITER_SCRIPT, [[str(cache), db_url, str(n), start, specs, f"w{i}"] for i in range(N_PROCS)])
    reports = []
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "database is locked" not in r.stderr
        reports.append(json.loads(r.stdout))
    store = open_store(db_url)
    events = store.sql("SELECT run_id, COUNT(*) AS n, COUNT(DISTINCT id) AS d FROM access_events GROUP BY run_id")
    by_run = dict(zip(events.run_id, events.n))
    assert {rep["run"]: rep["acked"] for rep in reports} == by_run          # each event exactly once
    assert (events.n == events.d).all()
    queries = store.sql("SELECT run_id, COUNT(*) AS n FROM queries WHERE run_id IS NOT NULL GROUP BY run_id")
    assert sorted(queries.n.tolist()) == [n // 10] * N_PROCS
    assert len(store.runs()) == N_PROCS and set(store.runs().status) == {"finished"}
    if db_url.endswith(".sqlite"):
        assert check(db_url) == []


KILL_SCRIPT = """
import json, sys
from oneprov import ONE
one = ONE(cache_dir=sys.argv[1], db=sys.argv[2])
specs = json.loads(sys.argv[3])
i = 0
while True:
    eid, name, other = specs[i % len(specs)]
    if i % 7 == 0:
        one.load_datasets(eid, [name, other], download_only=True)    # two events, one transaction
    else:
        one.load_dataset(eid, name, download_only=True)
    print(one.run_id, i, flush=True)      # acknowledged: this call has returned
    i += 1
"""


@pytest.mark.slow
def test_repeated_sigkill(repo, tmp_path):
    """A writer killed at random moments, 20 times: acknowledged events survive, nothing half-written."""
    cache = shutil.copytree(repo.root, tmp_path / "cache")
    db = tmp_path / "p.sqlite"
    open_store(db).import_cache(cache)
    specs = loadable_specs(repo)
    by_session: dict[str, list[str]] = {}
    for eid, name in specs:
        by_session.setdefault(eid, []).append(name)
    specs = [[eid, name, next(n for n in by_session[eid] if n != name)]
             for eid, name in specs if len(by_session[eid]) > 1]
    rng = random.Random(1234)
    acked_per_run: dict[str, int] = {}
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(cache), str(db), json.dumps(specs)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.6, 1.6))          # startup takes ~0.5 s: kill before, during or after loads
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue                           # killed while printing: not a complete acknowledgement
            run, i = line.split()
            acked_per_run[run] = int(i) + 1
        assert check(db) == []                     # opens cleanly, integrity and foreign keys ok
    store = open_store(db)
    runs = store.runs()
    assert set(runs.status) <= {"interrupted"}     # every interrupted run is visible as such
    # every acknowledged call left its event(s): one per load_dataset, one or two per load_datasets
    counts = store.sql("SELECT run_id, COUNT(*) AS n FROM access_events GROUP BY run_id")
    recorded = dict(zip(counts.run_id, counts.n))
    for run, acked in acked_per_run.items():
        assert recorded.get(run, 0) >= acked
    # nothing half-written: a load_datasets call (i % 7 == 0) always has both its events or none
    pairs = store.sql("SELECT run_id, event_time, COUNT(*) AS n FROM access_events WHERE method = 'load_datasets' "
                      "GROUP BY run_id, event_time")
    assert set(pairs.n) <= {2}
    assert sum(acked_per_run.values()) > 0


FAILING_MIGRATION = '''
"""A migration that fails half-way (test only)."""
import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("runs", sa.Column("half_column", sa.Text))
    op.execute("SELECT no_such_function_at_all()")


def downgrade():
    pass
'''


def test_failed_migration_leaves_previous_version(db_url, tmp_path):
    store = open_store(db_url)
    run = store.start_run("kept")
    store.close()
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0099_fails.py").write_text(
        textwrap.dedent(FAILING_MIGRATION).replace("{head}", migrate.head_revision()))
    engine = create_engine(db_url)
    with pytest.raises(Exception, match="no_such_function_at_all"):
        migrate.upgrade(engine, script_location=scripts)
    inspector = sa.inspect(engine)
    assert "half_done" not in inspector.get_table_names()
    assert "half_column" not in {c["name"] for c in inspector.get_columns("runs")}
    assert migrate.schema_status(engine).current == migrate.head_revision()
    engine.dispose()
    assert open_store(db_url).runs().run_id.tolist() == [run]


LOADER_SCRIPT = """
import json, sys, time
from pathlib import Path
import oneprov.store.dialects as dialects
dialects.BUSY_TIMEOUT_S = 3         # a load that waits longer for the write lock fails: the test would see it
from oneprov import ONE
cache, db, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
specs = json.loads(sys.argv[4])
one = ONE(cache_dir=cache, db=db)
acked, slowest, i = 0, 0.0, 0
while not stop.exists():
    eid, rel_path = specs[i % len(specs)]
    started = time.perf_counter()
    one.load_dataset(eid, rel_path, download_only=True)
    slowest = max(slowest, time.perf_counter() - started)
    acked += 1
    i += 1
print(json.dumps({"run": one.run_id, "acked": acked, "slowest": slowest}))
"""


@pytest.mark.slow
def test_loads_keep_being_recorded_through_a_long_import(db_url, repo, tmp_path):
    """Two analyses load (each load committed, a 3 s lock timeout) while another process imports
    300,000 rows: no load fails, every acknowledged load is stored (the import writes in short
    transactions, not one long one, and gives way to other writers between them)."""
    from oneprov.synthetic import make_repository

    cache = shutil.copytree(repo.root, tmp_path / "cache")
    open_store(db_url).import_cache(cache)
    big = make_repository(tmp_path / "big", n_sessions=3000, datasets_per_session=100, write_files=False).root
    stop = tmp_path / "stop"
    specs = json.dumps(loadable_specs(repo))
    loaders = [subprocess.Popen([sys.executable, "-c", LOADER_SCRIPT, str(cache), db_url, str(stop), specs],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(3)                                       # the loaders are loading
    started = time.perf_counter()
    importer = subprocess.run([sys.executable, "-m", "oneprov", "import-cache", str(big), "--db", db_url],
                              capture_output=True, text=True, timeout=600)
    import_seconds = time.perf_counter() - started
    stop.touch()
    reports = []
    for loader in loaders:
        out, err = loader.communicate(timeout=120)
        assert loader.returncode == 0, err
        reports.append(json.loads(out))
    assert importer.returncode == 0 and "imported 3000 sessions and 300000 datasets" in importer.stdout, importer.stderr
    store = open_store(db_url)
    events = store.sql("SELECT run_id, COUNT(*) AS n FROM access_events GROUP BY run_id")
    assert dict(zip(events.run_id, events.n)) == {r["run"]: r["acked"] for r in reports}
    assert all(r["acked"] > 20 for r in reports)
    print(f"slowest load during the import: {max(r['slowest'] for r in reports):.2f} s; the import took "
          f"{import_seconds:.1f} s; {sum(r['acked'] for r in reports)} loads")
    store.close()


def test_an_import_gives_way_only_while_other_connections_write(db_url, monkeypatch):
    """An import's run of write transactions pauses before the next one only while another
    connection has committed in the last CONTENDED_S seconds, at most every GIVE_WAY_EVERY_S
    (SQLite: a waiting writer's tries would miss the gaps between them); alone it never pauses, and
    PostgreSQL, whose writers do not queue on one lock, never needs to."""
    from oneprov.store import ingest
    from oneprov.store.engine import Database

    monkeypatch.setattr(ingest, "GIVE_WAY_EVERY_S", 0.0)
    db = Database(create_engine(db_url))
    migrate.upgrade(db.engine)
    names = iter(range(100))

    def add_project(conn):
        return lambda: conn.execute(sa.text("INSERT INTO projects (name, created_at) VALUES (:n, '2026-01-01')"),
                                    {"n": f"p{next(names)}"})

    with db.engine.connect() as conn, db.engine.connect() as other:
        writer = ingest._Writer(db.dialect, conn)
        for _ in range(3):
            writer.write(add_project(conn), 1)
        assert writer.pauses == 0                       # alone
        with other.begin():
            add_project(other)()
        writer.write(add_project(conn), 1)
        writer.write(add_project(conn), 1)              # (within CONTENDED_S of the other's commit)
        expected = 2 if db.dialect.name == "sqlite" else 0
        assert writer.pauses == expected
        monkeypatch.setattr(ingest, "CONTENDED_S", 0.0)   # the other's commit is long past
        writer.write(add_project(conn), 1)
        assert writer.pauses == expected
        with conn.begin():
            assert conn.execute(sa.text("SELECT COUNT(*) FROM projects")).scalar() == 7
    db.engine.dispose()
