"""The ``oneprov`` command, run as a real process."""
from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from conftest import BACKENDS

from oneprov import open_store
from oneprov.store import migrate


def oneprov(*args, db=None, cwd=None, check=True):
    env_db = ["--db", str(db)] if db is not None else []
    proc = subprocess.run([sys.executable, "-m", "oneprov", *args, *env_db], capture_output=True, text=True,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    if check and proc.returncode != 0:
        raise AssertionError(f"oneprov {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_clean_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def db(tmp_path, repo):
    """A database with the repository imported and one run with two loads."""
    path = tmp_path / "p.sqlite"
    store = open_store(path)
    store.import_cache(repo.root)
    run = store.start_run("paper", label="fig2")
    store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": i}
                              for i in (repo.revised_id, repo.unknown_size_id)])
    store.finish_run(run)
    store.close()
    return path


def test_db_commands(tmp_path):
    path = tmp_path / "new.sqlite"
    head = migrate.head_revision()
    assert f"empty -> {head}" in oneprov("db", "upgrade", db=path).stdout
    assert "already at" in oneprov("db", "upgrade", db=path).stdout
    assert oneprov("db", "current", db=path).stdout.split() == ["database:", head, "oneprov:", head]
    assert oneprov("db", "check", db=path).stdout.strip() == "ok"


def test_import_runs_and_sql(tmp_path, repo):
    path = tmp_path / "p.sqlite"
    out = oneprov("import-cache", str(repo.root), db=path).stdout
    assert f"imported {len(repo.sessions)} sessions and {len(repo.datasets)} datasets" in out
    assert "unchanged" in oneprov("import-cache", str(repo.root), db=path).stdout
    rows = json.loads(oneprov("sql", "SELECT COUNT(*) AS n FROM datasets", "--format", "json", db=path).stdout)
    assert rows == [{"n": len(repo.datasets)}]
    assert "(no rows)" in oneprov("runs", db=path).stdout


def test_export_loaded_ids_and_cache(db, tmp_path, repo):
    listed = oneprov("runs", "--format", "csv", db=db).stdout
    assert "fig2" in listed and "finished" in listed
    out = tmp_path / "ids.csv"
    oneprov("export", "loaded-ids", "--run", "last", "-o", str(out), db=db)
    with open(out) as f:
        assert list(csv.reader(f)) == [["dataset_uuid"], *([i] for i in sorted([repo.revised_id, repo.unknown_size_id]))]
    folder = tmp_path / "csvs"
    folder.mkdir()
    oneprov("export", "loaded-ids", "--run", "fig2", "--sessions", "-o", str(folder), db=db)
    (written,) = folder.glob("*_loaded_session_uuids.csv")
    assert written.read_text().splitlines() == ["session_uuid", repo.eid]
    proc = oneprov("export", "cache", str(tmp_path / "tables"), "--run", "last", db=db)
    assert "datasets.pqt" in proc.stdout and (tmp_path / "tables" / "sessions.pqt").exists()


def test_sql_cannot_write(db):
    before = db.read_bytes()
    for statement in ("DELETE FROM access_events", "DROP VIEW access_log", "UPDATE runs SET status = 'x'"):
        assert_clean_error(oneprov("sql", statement, db=db, check=False), "refused")
    assert db.read_bytes() == before


def test_errors_are_one_line(tmp_path, repo):
    assert_clean_error(oneprov("runs", check=False), "ONEPROV_DB")
    assert_clean_error(oneprov("import-cache", str(tmp_path / "missing"), db=tmp_path / "p.sqlite", check=False),
                       "does not exist")
    notdb = tmp_path / "notes.sqlite"
    notdb.write_text("hello\n" * 1000)
    assert_clean_error(oneprov("runs", db=notdb, check=False), str(notdb))
    assert_clean_error(oneprov("export", "loaded-ids", "--run", "nope", db=tmp_path / "p.sqlite", check=False),
                       "no run has the id, label or id prefix")
    assert_clean_error(oneprov("sql", "SELECT * FROM no_such_table", db=tmp_path / "p.sqlite", check=False),
                       "no_such_table")


def test_demo_runs_offline(tmp_path):
    out = oneprov("demo", "--dir", str(tmp_path / "demo")).stdout
    assert "_loaded_dataset_uuids.csv" in out and "older revision" in out and "Audit" in out
    db = tmp_path / "demo" / "alf_cache" / "provenance.sqlite"
    assert oneprov("db", "check", db=db).stdout.strip() == "ok"
    rows = json.loads(oneprov("sql", "SELECT DISTINCT project, outcome FROM access_log ORDER BY 2", "--format", "json",
                              db=db).stdout)
    assert {r["outcome"] for r in rows} >= {"loaded", "download_only", "missing", "not_found"}


def test_help_explains():
    out = oneprov("--help").stdout
    for command in ("db", "import-cache", "runs", "export", "sql", "demo"):
        assert command in out
    assert "read-only" in oneprov("sql", "--help").stdout


def test_export_per_scope_and_label(tmp_path, repo):
    cache = tmp_path / "cache"
    import shutil
    shutil.copytree(repo.root, cache)
    from oneprov import ONE
    db = tmp_path / "p.sqlite"
    one = ONE(cache_dir=cache, db=db, label="paper-v2")
    with one.scope("figure3"):
        one.load_dataset(repo.eid, "spikes.times.npy")
    one.load_dataset(repo.eid, "probes.description")
    one.close()
    fig3 = tmp_path / "figure3_dataset_uuids.csv"
    oneprov("export", "loaded-ids", "--scope", "figure3", "-o", str(fig3), db=db)
    assert fig3.read_text().splitlines() == ["dataset_uuid", repo.revised_id]
    everything = tmp_path / "paper.csv"
    oneprov("export", "loaded-ids", "--label", "paper-v2", "-o", str(everything), db=db)
    assert len(everything.read_text().splitlines()) == 3


def test_retire_by_a_label_that_looks_like_an_id_prefix(db):
    store = open_store(db)
    fig2 = store.resolve_run("fig2")
    labelled = store.start_run("paper", label=fig2[0])      # e.g. 'b': also the start of fig2's id
    store.finish_run(labelled)
    store.close()
    assert oneprov("retire", fig2[0], "--reason", "wrong input", db=db).stdout.startswith(f"retired run {labelled}")
    listed = {r["run_id"]: r["retired"] for r in json.loads(oneprov("runs", "--format", "json", db=db).stdout)}
    assert listed[labelled] in (True, 1) and listed[fig2] in (False, 0)


def test_retire(db):
    out = oneprov("retire", "fig2", "--reason", "figure redone", db=db).stdout
    assert out.startswith("retired run ")
    listed = json.loads(oneprov("runs", "--format", "json", db=db).stdout)
    assert listed[0]["retired"] in (True, 1)
    missing = oneprov("retire", "fig2", db=db, check=False)     # a usage error: click's usage line + one error
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "Error: Missing option '--reason'" in missing.stderr


@pytest.mark.parametrize("command", [["runs"], ["sql", "SELECT 1"], ["db", "current"], ["db", "check"],
                                     ["export", "loaded-ids"], ["export", "cache", "OUT"],
                                     ["retire", "last", "--reason", "x"]])
def test_commands_that_only_read_never_create_a_database(command, tmp_path):
    typo = tmp_path / "typo.sqlite"
    command = [str(tmp_path / "out") if word == "OUT" else word for word in command]
    proc = oneprov(*command, db=typo, check=False)
    assert proc.returncode == 1
    assert_clean_error(proc, "no database at", "nothing was created")
    assert not any(tmp_path.iterdir())                  # no database file, no output folder


def test_damaged_database_is_refused_with_that_message(db, repo):
    size = db.stat().st_size
    with open(db, "r+b") as f:                            # damage the pages in the middle of the file
        f.seek(size // 2)
        f.write(b"\xff" * 8192)
    check = oneprov("db", "check", db=db, check=False)
    assert check.returncode == 1 and "is damaged" in check.stderr and "Traceback" not in check.stderr
    before = db.read_bytes()
    write = oneprov("import-cache", str(repo.root), "--force", db=db, check=False)
    assert_clean_error(write, "is damaged", "nothing was written")
    assert db.read_bytes() == before


def test_warnings_are_one_line(db):
    proc = oneprov("export", "loaded-ids", "--label", "nobody", db=db, check=False)
    assert "warning: No datasets loaded" in proc.stderr and "cli.py" not in proc.stderr


def with_sigint(args: list[str], disposition: str = "SIG_DFL") -> list[str]:
    """A Python command line (``args`` after the interpreter) that starts with SIGINT at
    ``disposition`` whatever this process has: by default Ctrl-C reaches it, though a shell runs a
    background job with SIGINT ignored and children inherit that (oneprov then ignores Ctrl-C too,
    as a background job should); ``"SIG_IGN"`` starts it as such a job."""
    return [sys.executable, "-c", f"import os, signal, sys; signal.signal(signal.SIGINT, signal.{disposition}); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])", *args]


def test_a_process_that_ignores_ctrl_c_goes_on_ignoring_it_during_a_query(db):
    """Started with SIGINT ignored (a shell's background job), ``oneprov sql`` on SQLite does not take
    Ctrl-C over to stop its query: SIGINT changes nothing, as on PostgreSQL; the query's own timeout
    still stops it."""
    import signal
    import time

    child = subprocess.Popen(with_sigint(["-m", "oneprov", "sql", LONG_QUERY["sqlite"], "--timeout", "4", "--db", str(db)],
                                         "SIG_IGN"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_running(child, "sqlite", db)
    child.send_signal(signal.SIGINT)
    time.sleep(1)
    assert child.poll() is None          # still running its query
    out, err = child.communicate(timeout=60)
    assert "stopped after 4 s" in err and child.returncode != 130, err


def test_ctrl_c_during_import_prints_one_line_and_exits_130(tmp_path):
    """Ctrl-C in the middle of a large import: one line, status 130, nothing imported (the views show
    nothing of it), the database checks out, and the next import completes."""
    import signal
    import time

    from oneprov.synthetic import make_repository

    tables = make_repository(tmp_path / "big", n_sessions=2000, datasets_per_session=100, write_files=False).root

    def start_and_hold(db: Path) -> tuple[subprocess.Popen, sqlite3.Connection] | None:
        """Start the import; once its first rows are committed, take the write lock between two of
        its transactions, so that it waits, incomplete. None if it completed before the lock was
        taken (a machine busy enough to leave this process no time while the import ran)."""
        open_store(db).close()
        proc = subprocess.Popen(with_sigint(["-m", "oneprov", "import-cache", str(tables), "--db", str(db)]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watch = sqlite3.connect(db, isolation_level=None, timeout=60)
        deadline = time.monotonic() + 60
        while watch.execute("SELECT max(id) FROM dataset_records").fetchone() == (None,):   # rows being written?
            assert time.monotonic() < deadline and proc.poll() is None, "the import never started writing"
            time.sleep(0.002)
        watch.execute("BEGIN IMMEDIATE")
        if watch.execute("SELECT completed_at FROM queries").fetchall() == [(None,)]:
            return proc, watch
        watch.rollback()
        watch.close()
        proc.communicate(timeout=60)
        return None

    for attempt in range(5):
        db = tmp_path / f"p{attempt}.sqlite"
        held = start_and_hold(db)
        if held is not None:
            break
    else:
        pytest.fail("the import completed before the test could hold it, five times")
    proc, lock = held
    store = open_store(db)
    proc.send_signal(signal.SIGINT)   # Ctrl-C lands while the import waits for the lock
    time.sleep(0.5)
    lock.rollback()
    lock.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "interrupted: nothing imported (the database is as it was)"
    assert store.sql("SELECT error FROM queries").error.tolist() == ["interrupted"]
    assert store.sql("SELECT count(*) AS n FROM datasets").n[0] == 0
    store.close()
    assert oneprov("db", "check", db=db).stdout.strip() == "ok"
    assert "imported 2000 sessions and 200000 datasets" in oneprov("import-cache", str(tables), db=db).stdout


def test_sql_refuses_attach_and_writing_pragmas_before_they_run(db, tmp_path):
    for statement in (f"ATTACH '{tmp_path / 'new.db'}' AS x", f"VACUUM INTO '{tmp_path / 'copy.db'}'",
                      "PRAGMA journal_mode=delete", "PRAGMA user_version=7"):
        proc = oneprov("sql", statement, db=db, check=False)
        assert_clean_error(proc, "")
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "copy.db").exists()
    assert "rel_path" in oneprov("sql", "PRAGMA table_info(dataset_records)", db=db).stdout


def test_sql_prints_blobs_in_every_format(db):
    table = oneprov("sql", "SELECT x'00ff10' AS b, 1 AS n", db=db).stdout
    assert "\\x00ff10" in table
    assert "\\x00ff10,1" in oneprov("sql", "SELECT x'00ff10' AS b, 1 AS n", "--format", "csv", db=db).stdout
    assert json.loads(oneprov("sql", "SELECT x'00ff10' AS b", "--format", "json", db=db).stdout) == [{"b": "\\x00ff10"}]


LONG_QUERY = {"sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
              "postgresql": "SELECT pg_sleep(60)"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sql_timeout_and_ctrl_c_stop_a_long_query(backend, db, request):
    import signal
    import time

    target = db if backend == "sqlite" else request.getfixturevalue("pg").url
    started = time.monotonic()
    proc = oneprov("sql", LONG_QUERY[backend], "--timeout", "0.5", db=target, check=False)
    assert_clean_error(proc, "stopped after 0.5 s")
    assert time.monotonic() - started < 20
    child = subprocess.Popen(with_sigint(["-m", "oneprov", "sql", LONG_QUERY[backend], "--db", str(target)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PGAPPNAME": CTRL_C_APP})
    _wait_until_running(child, backend, target)
    stop = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130 and err.strip() == "interrupted", err
    assert time.monotonic() - stop < 5


CTRL_C_APP = "oneprov-ctrl-c-test"   # (libpq names the child's connections so: PGAPPNAME)


def _wait_until_running(child: subprocess.Popen, backend: str, target) -> None:
    """Until ``child`` runs its query (not merely starting Python): it has the SQLite file open, or
    the PostgreSQL server shows its statement running on one of its own connections."""
    import time

    import sqlalchemy as sa

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        if backend == "sqlite":
            fds = f"/proc/{child.pid}/fd"
            try:
                running = any(os.path.realpath(os.path.join(fds, fd)) == os.path.realpath(target)
                              for fd in os.listdir(fds))
            except OSError:
                running = False
        else:
            engine = sa.create_engine(target)
            with engine.connect() as conn:
                running = bool(conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app AND state = 'active' "
                    "AND query LIKE 'SELECT pg_sleep%'"), {"app": CTRL_C_APP}).scalar())
            engine.dispose()
        if running:
            time.sleep(0.3)                         # (from open to the statement: a few milliseconds)
            return
        time.sleep(0.05)
    raise AssertionError("the query did not start within 60 s")


def test_sql_result_too_large_for_memory_is_one_line(db):
    """Under an address-space limit 600 MB above what the CLI takes to start, a 20-million-row
    result (2 GB and more): one line, not a traceback."""
    import resource

    # (the process reserves ~1.5 GB of address space at start, pyarrow's and numpy's included: a fixed
    # limit near that fails at import on one machine and in the query on another)
    started = subprocess.run([sys.executable, "-c", "import oneprov.cli; print(open('/proc/self/statm').read())"],
                             capture_output=True, text=True, check=True)
    size = int(started.stdout.split()[0]) * resource.getpagesize() + 600_000_000

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    query = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000000) "
             "SELECT x, printf('%0100d', x) AS t FROM c")
    proc = subprocess.run([sys.executable, "-m", "oneprov", "sql", query, "--db", str(db), "--format", "csv"],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert_clean_error(proc, "out of memory")


@pytest.mark.parametrize("code, memory", [(7, True), (3082, True), (5386, True), (6154, True), (4618, False), (266, False)])
def test_sqlite_errors_of_memory_are_named_as_such(code, memory):
    """SQLite reports memory it could not map as a "disk I/O error" with an extended code: those codes
    (and only those) become "out of memory"."""
    from oneprov import DatabaseError
    from oneprov.store.engine import mapped_errors

    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = code
    with pytest.raises(DatabaseError) as raised:
        with mapped_errors("test.sqlite"):
            raise error
    assert ("out of memory" in str(raised.value)) is memory


def test_an_io_error_near_the_address_space_limit_is_out_of_memory():
    """SQLite's "disk I/O error" while the process has used nearly all its address-space limit is
    named as memory; without a limit it stays an I/O error."""
    code = textwrap.dedent("""
        import resource, sqlite3
        from oneprov import DatabaseError
        from oneprov.store.engine import mapped_errors, near_memory_limit
        def mapped():
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = 778   # IOERR_WRITE: not a code of memory by itself
            try:
                with mapped_errors("test.sqlite"):
                    raise error
            except DatabaseError as exc:
                return "out of memory" in str(exc)
        print(near_memory_limit(), mapped())
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (int(size * 1.05), resource.RLIM_INFINITY))
        print(near_memory_limit(), mapped())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False", "True", "True"], out.stderr
