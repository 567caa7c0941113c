"""Connecting to the provenance database and keeping its schema at the right version.

A database is named by a file path (SQLite, the default) or a SQLAlchemy URL such as
``postgresql+psycopg://user@host/db``. SQLite connections are set up for many processes at once
(see SQLITE-NOTES.md): WAL journal, foreign keys on, a busy timeout, and write transactions that
start with ``BEGIN IMMEDIATE`` so that a transaction never fails half-way on a lock upgrade.

>>> engine = create_engine(":memory:")
>>> status = upgrade(engine)
>>> schema_status(engine).current == head_revision()
True
"""
from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.engine.url import make_url

from .errors import DatabaseError, ReadOnlyError, SchemaVersionError

#: Seconds a writer waits for another process's write transaction before giving up.
BUSY_TIMEOUT_S = 60
#: Any 63-bit number shared by every oneprov process: the PostgreSQL advisory lock of first-time setup.
PG_SETUP_LOCK = 0x6F6E6570726F76

NO_DATABASE = "no database given: pass --db PATH_OR_URL (or db=...) or set ONEPROV_DB"


def database_url(db: str | os.PathLike | URL | None = None, *, readonly: bool = False) -> URL:
    """The SQLAlchemy URL for ``db``: a path, a URL, or ``None`` for ``$ONEPROV_DB``.

    A plain path becomes a SQLite URL; ``readonly`` opens SQLite files with ``mode=ro``.
    """
    if db is None or db == "":
        db = os.environ.get("ONEPROV_DB") or None
        if db is None:
            raise DatabaseError(NO_DATABASE)
    if isinstance(db, URL):
        url = db
    elif isinstance(db, os.PathLike) or "://" not in str(db):
        path = str(db)
        if path != ":memory:":
            path = str(Path(path).expanduser().absolute())
        url = URL.create("sqlite", database=path)
    else:
        try:
            url = make_url(str(db))
        except sa.exc.ArgumentError as exc:
            raise DatabaseError(f"invalid database URL {redact(str(db))!r}: {exc}") from None
    if readonly and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=f"file:{url.database}", query={"mode": "ro", "uri": "true"})
    return url


def redact(url: str | URL) -> str:
    """How a database is named in messages and logs: a SQLite file's path, or a URL without password."""
    if not isinstance(url, URL) and "://" not in str(url):
        return str(url)
    try:
        url = url if isinstance(url, URL) else make_url(str(url))
    except sa.exc.ArgumentError:
        return "<unparsable URL>"
    if url.get_backend_name() == "sqlite":
        return (url.database or ":memory:").removeprefix("file:")
    return url.render_as_string(hide_password=True)


def create_engine(db: str | os.PathLike | URL | None = None, *, readonly: bool = False) -> Engine:
    """An engine for ``db`` (see :func:`database_url`), set up for concurrent, durable writes.

    On SQLite every transaction opened with ``engine.begin()`` starts with ``BEGIN IMMEDIATE``
    (``BEGIN`` for a read-only engine). A read-only engine refuses every write on both back ends.
    """
    url = database_url(db, readonly=readonly)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = url.database or ""
        if path.startswith("file:"):
            path = path[5:]
        if path not in ("", ":memory:"):
            parent = Path(path).parent
            if not readonly and not parent.is_dir():
                raise DatabaseError(f"cannot create database {path!r}: folder {str(parent)!r} does not exist")
            warn_if_network(Path(path))
        engine = sa.create_engine(url, poolclass=sa.pool.StaticPool if path in ("", ":memory:") else None)
        _setup_sqlite(engine, readonly)
    elif backend == "postgresql":
        options = "-c default_transaction_read_only=on" if readonly else None
        engine = sa.create_engine(url, connect_args={"options": options} if options else {},
                                  pool_pre_ping=True)
    else:
        raise DatabaseError(f"unsupported database {redact(url)!r}: use a SQLite path or a postgresql+psycopg:// URL")
    return engine


#: File systems on which SQLite's WAL mode is unsafe (it needs shared memory on one host).
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs", "ceph",
                       "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "beegfs", "fuse.gcsfuse", "fuse.s3fs"}


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path``, from ``/proc/mounts`` (None if unknown)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = path.absolute().as_posix()
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def warn_if_network(path: Path, mounts: str | None = None) -> bool:
    """Warn (and return True) when a SQLite file is on a network file system, where WAL is unsafe."""
    kind = filesystem_type(path, mounts)
    if kind in NETWORK_FILESYSTEMS:
        warnings.warn(f"database {str(path)!r} is on a network file system ({kind}): SQLite's WAL mode needs every "
                      "process on one host, so concurrent writers from other machines can corrupt it. Share a "
                      "PostgreSQL database between machines instead.", RuntimeWarning, stacklevel=3)
        return True
    return False


def _setup_sqlite(engine: Engine, readonly: bool) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):
        # Take transaction control from the driver so that BEGIN is ours (SQLAlchemy docs,
        # "Enabling Non-Legacy SQLite Transactional Modes"), and set PRAGMAs outside any transaction.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        if readonly:
            cursor.execute("PRAGMA query_only = ON")
        else:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode not in ("wal", "memory"):
                raise DatabaseError(f"could not switch {engine.url.database!r} to WAL journal mode (got {mode!r})")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn):
        if readonly or conn.get_execution_options().get("oneprov_read", False):
            conn.exec_driver_sql("BEGIN")
        else:
            _begin_immediate(conn.connection.dbapi_connection)


def _begin_immediate(dbapi_conn) -> None:
    """``BEGIN IMMEDIATE``, waiting in SQLite's busy handler while another process writes.

    The handler (the connection's ``busy_timeout``, :data:`BUSY_TIMEOUT_S`) sleeps 1, 2, 5, 10 ...
    100 ms between tries, in C. With 8 processes each committing one load event per transaction
    on 2 cores it recorded ~12k events/s at ~80 µs CPU each; a Python loop polling every 0.1-5 ms
    recorded ~8.6k/s at ~115 µs each (every poll takes CPU from the process holding the lock), and
    one short poll before the handler ~9.9k/s. The price: at full contention a writer now waits
    up to ~1.5 s in the worst case (~0.6 s with the loop), though 99% of commits wait less (~13 ms
    against ~25 ms).
    """
    dbapi_conn.execute("BEGIN IMMEDIATE")


@contextmanager
def sqlite_write(engine: Engine) -> Iterator[sqlite3.Cursor]:
    """A write transaction on a bare ``sqlite3`` cursor: committed on success, else rolled back.

    The same transaction as ``engine.begin()`` (``BEGIN IMMEDIATE``, waiting as there) without
    SQLAlchemy's execution machinery, which costs several times what SQLite needs to commit one
    small row. Driver errors become a :class:`DatabaseError` naming the database, as with
    :class:`connect_errors`.
    """
    with connect_errors(engine):
        fairy = engine.raw_connection()
    try:
        dbapi_conn = fairy.dbapi_connection
        _begin_immediate(dbapi_conn)
        cursor = dbapi_conn.cursor()
        try:
            yield cursor
            dbapi_conn.commit()
        except BaseException:
            dbapi_conn.rollback()
            raise
        finally:
            cursor.close()
    except sqlite3.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot use database {redact(engine.url)}: {message}") from None
    finally:
        fairy.close()


def reader(engine: Engine) -> Engine:
    """The same engine for read-only work: on SQLite its transactions begin deferred, not IMMEDIATE,
    so that readers never wait for the write lock."""
    return engine.execution_options(oneprov_read=True)


def lock_for_setup(conn: Connection) -> None:
    """Serialise first-time setup and migrations between processes, inside ``conn``'s transaction.

    SQLite's ``BEGIN IMMEDIATE`` already holds the write lock; PostgreSQL takes an advisory lock
    that is released when the transaction ends.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SETUP_LOCK})


def migrations_dir() -> Path:
    """The Alembic script folder: inside the installed package, else the repository's ``migrations/``."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "migrations"


def alembic_config(connection: Connection | None = None, script_location: str | os.PathLike | None = None) -> Config:
    """An Alembic configuration for oneprov's migrations, bound to ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(script_location or migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The schema version this oneprov writes (the single Alembic head)."""
    return _script().get_current_head()


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands relative to this oneprov."""

    current: str | None   # None: empty database
    head: str
    known: bool           # current is one of this oneprov's revisions (or None)
    has_tables: bool

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _status(conn: Connection) -> SchemaStatus:
    # Tables first, then the version: on PostgreSQL (read committed) each statement sees the latest
    # commit, and another process's migration commits its tables and its version row together. In
    # the other order a migration committed between the two reads looked like a foreign database.
    has_tables = bool(set(sa.inspect(conn).get_table_names()) - {"alembic_version"})
    current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or _known(current)
    return SchemaStatus(current, head_revision(), known, has_tables)


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def schema_status(engine: Engine) -> SchemaStatus:
    """Read the schema version without changing anything."""
    with connect_errors(engine), reader(engine).connect() as conn:
        status = _status(conn)
        conn.rollback()
    return status


def _refuse_unknown(status: SchemaStatus, engine: Engine) -> None:
    where = redact(engine.url)
    if not status.known:
        raise SchemaVersionError(
            f"database {where} has schema version {status.current}, newer than this oneprov knows "
            f"(its newest is {status.head}); upgrade oneprov to use it. Nothing was changed.")
    if status.current is None and status.has_tables:
        raise DatabaseError(f"database {where} already holds tables but no oneprov schema version; "
                            "refusing to write into it. Nothing was changed.")


def preflight(db: str | os.PathLike | URL | None) -> None:
    """Refuse an existing SQLite file with a foreign or newer schema before a writer opens it.

    Opening for writing switches the file to WAL mode, which changes its header: a file that
    oneprov must not touch is inspected read-only first.
    """
    url = database_url(db)
    path = url.database or ""
    if url.get_backend_name() == "sqlite" and path not in ("", ":memory:") and Path(path).is_file():
        probe = create_engine(url, readonly=True)
        try:
            _refuse_unknown(schema_status(probe), probe)
        finally:
            probe.dispose()


def upgrade(engine: Engine, target: str = "head", *, script_location: str | os.PathLike | None = None) -> SchemaStatus:
    """Migrate the database to ``target`` in one transaction; refuse a newer or foreign schema.

    Cheap when nothing is to do (one read). Several processes may call it at once on a new
    database: the first does the work under the setup lock, the others then find it done.
    A migration that fails half-way leaves the database at its previous version.
    (``script_location`` replaces oneprov's migrations; the tests use it.)
    """
    status = schema_status(engine)
    _refuse_unknown(status, engine)
    if target == "head" and status.up_to_date and script_location is None:
        return status
    with connect_errors(engine), engine.begin() as conn:
        lock_for_setup(conn)
        status = _status(conn)  # again, under the lock: another process may have done it
        _refuse_unknown(status, engine)
        if not (target == "head" and status.up_to_date) or script_location is not None:
            require_migration_rights(conn, status, engine)
            command.upgrade(alembic_config(conn, script_location), target)
    return schema_status(engine)


def downgrade(engine: Engine, target: str) -> SchemaStatus:
    """Migrate the database down to ``target`` ('base' empties it) in one transaction."""
    with connect_errors(engine), engine.begin() as conn:
        lock_for_setup(conn)
        _refuse_unknown(_status(conn), engine)
        command.downgrade(alembic_config(conn), target)
    return schema_status(engine)


class connect_errors:
    """Turn driver errors on connecting into a :class:`DatabaseError` that names the database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, (sa.exc.OperationalError, sa.exc.DatabaseError, sa.exc.InterfaceError)):
            return False
        where = redact(self.engine.url)
        message = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else type(exc).__name__
        raise DatabaseError(f"cannot use database {where}: {message}") from None


def read_only_query(db: str | os.PathLike | URL | None, query: str, params: dict | None = None):
    """Run one SQL query on a read-only connection and return a DataFrame.

    SQLite files are opened with ``mode=ro`` and ``PRAGMA query_only``; PostgreSQL sessions with
    ``default_transaction_read_only``, and the query is sent as a prepared statement so that it is
    exactly one statement (``COMMIT; SET ...; INSERT ...`` cannot escape the read-only
    transaction). A statement that tries to write raises :class:`~oneprov.errors.ReadOnlyError`;
    parameters (``:name``) are bound, never formatted into the SQL.
    """
    import pandas as pd

    engine = create_engine(db, readonly=True)
    try:
        with connect_errors(engine), engine.connect() as conn:
            try:
                columns, rows = _run_one_statement(conn, query, params or {})
            except Exception as exc:
                message = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                if any(word in message for word in ("readonly", "read-only", "read only")):
                    raise ReadOnlyError(f"refused: the statement tries to change the database, which "
                                        f"`sql` opens read-only ({message})") from None
                if "multiple commands" in message or "one statement at a time" in message:
                    raise ReadOnlyError("refused: give one statement at a time") from None
                if isinstance(exc, (sa.exc.DBAPIError, sa.exc.StatementError)) or type(exc).__module__.startswith("psycopg"):
                    raise DatabaseError(f"query failed on {redact(engine.url)}: {message}") from None
                raise
            conn.rollback()
        if columns is None:
            raise ReadOnlyError("refused: the statement returns no rows; only queries are allowed")
        return pd.DataFrame(rows, columns=columns)
    finally:
        engine.dispose()


def _run_one_statement(conn: Connection, query: str, params: dict) -> tuple[list[str] | None, list]:
    """``(columns, rows)`` of one statement; ``columns`` is None when it returns no rows."""
    if conn.dialect.name != "postgresql":
        result = conn.execute(sa.text(query), params)   # sqlite3 itself refuses several statements
        return (list(result.keys()), [tuple(r) for r in result.fetchall()]) if result.returns_rows else (None, [])
    compiled = sa.text(query).compile(dialect=conn.dialect)
    bound = {**compiled.params, **params}
    with conn.connection.driver_connection.cursor() as cursor:
        cursor.execute(compiled.string, bound, prepare=True)
        if cursor.description is None:
            return None, []
        return [d.name for d in cursor.description], cursor.fetchall()


def check(db: str | os.PathLike | URL | None) -> list[str]:
    """Problems with a database, read-only: schema version, SQLite integrity and foreign keys."""
    engine = create_engine(db, readonly=True)
    problems = []
    try:
        status = schema_status(engine)
        if not status.known:
            problems.append(f"schema {status.current} is newer than this oneprov ({status.head})")
        elif not status.up_to_date:
            problems.append(f"schema {status.current or 'empty'} is behind {status.head}: run `oneprov db upgrade`")
        if engine.dialect.name == "sqlite":
            with connect_errors(engine), engine.connect() as conn:
                result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
                if result != ["ok"]:
                    problems.extend(f"integrity: {r}" for r in result)
                fks = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                problems.extend(f"foreign key: {tuple(r)}" for r in fks)
                conn.rollback()
    finally:
        engine.dispose()
    return problems


def require_migration_rights(conn: Connection, status: SchemaStatus, engine: Engine) -> None:
    """Refuse, saying what to do, a migration that this PostgreSQL role may not run.

    On a shared PostgreSQL only the owner of the tables migrates (see :mod:`oneprov.roles`); a
    client or auditor that finds the schema out of date is told to have the owner upgrade it,
    instead of failing half-way on a missing privilege.
    """
    if conn.dialect.name != "postgresql":
        return
    where = redact(engine.url)
    if status.current is None:
        me, can_create = conn.execute(sa.text(
            "SELECT current_user, has_schema_privilege(current_schema(), 'CREATE')")).one()
        if not can_create:
            raise DatabaseError(f"database {where} has no oneprov schema yet and role {me!r} cannot create tables "
                                "in it: the owner must run `oneprov db upgrade` first. Nothing was changed.")
        return
    row = conn.execute(sa.text(
        "SELECT current_user AS me, tableowner AS owner, pg_has_role(current_user, tableowner, 'USAGE') AS ok "
        "FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'alembic_version'")).first()
    if row is not None and not row.ok:
        raise DatabaseError(
            f"database {where} is at schema version {status.current} and this oneprov needs {status.head}, but "
            f"role {row.me!r} cannot migrate it (the tables belong to {row.owner!r}): the owner must run "
            f"`oneprov db upgrade` as {row.owner!r}. Nothing was changed.")


def grant(engine: Engine, role: str, kind: str, *, dry_run: bool = False):
    """Give an existing PostgreSQL role the privileges of a 'client' or an 'auditor' (see :mod:`oneprov.roles`)."""
    from .roles import grant as grant_role

    return grant_role(engine, role, kind, dry_run=dry_run)
