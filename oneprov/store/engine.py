"""Connecting to the provenance database: URLs, engines, the read and write transactions, and the
one place where database errors become oneprov's one-line messages.

A database is named by a file path (SQLite, the default) or a SQLAlchemy URL such as
``postgresql+psycopg://user@host/db``. How each back end's connections are set up is its dialect's
business (:mod:`oneprov.store.dialects`); here is what every caller shares: a :class:`Database`
gives write transactions (``BEGIN IMMEDIATE`` on SQLite) and read transactions (never waiting
for the write lock), and every driver error raised inside either becomes a
:class:`~oneprov.errors.DatabaseError` naming the database.

>>> db = Database(create_engine(":memory:"))
>>> with db.reading() as conn:
...     conn.exec_driver_sql("SELECT 1").scalar()
1
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.engine.url import make_url

from .. import settings
from ..errors import DatabaseError
from . import dialects, driver

T = TypeVar("T")

NO_DATABASE = f"no database given: pass --db PATH_OR_URL (or db=...) or set {settings.DB_ENV}"

_log = logging.getLogger("oneprov.store")

#: Driver errors that :func:`mapped_errors` turns into a :class:`DatabaseError`.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (sa.exc.DBAPIError, sqlite3.Error)


def database_url(db: str | os.PathLike | URL | None = None, *, readonly: bool = False) -> URL:
    """The SQLAlchemy URL for ``db``: a path, a URL, or ``None`` for ``$ONEPROV_DB``.

    A plain path becomes a SQLite URL; ``readonly`` opens SQLite files with ``mode=ro``.
    """
    if db is None or db == "":
        db = settings.database()
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


def sqlite_path(url: URL) -> str | None:
    """The file of a SQLite URL (None for an in-memory database or another back end)."""
    if url.get_backend_name() != "sqlite":
        return None
    path = (url.database or "").removeprefix("file:")
    return None if path in ("", ":memory:") else path


def create_engine(db: str | os.PathLike | URL | None = None, *, readonly: bool = False) -> Engine:
    """An engine for ``db`` (see :func:`database_url`), set up for concurrent, durable writes.

    On SQLite every transaction opened with ``engine.begin()`` starts with ``BEGIN IMMEDIATE``
    (``BEGIN`` for a read-only engine). A read-only engine refuses every write on both back ends.
    """
    url = database_url(db, readonly=readonly)
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database {redact(url)!r}: use a SQLite path or a postgresql+psycopg:// URL")
    dialect = dialects.of(backend)
    path = sqlite_path(url)
    if path is not None:
        parent = Path(path).parent
        if readonly and not Path(path).exists():
            raise DatabaseError(no_database(path))
        if not readonly and not parent.is_dir():
            raise DatabaseError(f"cannot create database {path!r}: folder {str(parent)!r} does not exist")
        warn_if_network(Path(path))
    engine = sa.create_engine(url, **dialect.engine_options(url, readonly))
    dialect.configure(engine, readonly)
    return engine


def no_database(path: str) -> str:
    """The message for a SQLite file that does not exist where a command only reads (it creates none)."""
    return (f"no database at {path!r}: nothing was created (a typo? `oneprov import-cache` or "
            "`oneprov db upgrade` makes one)")


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


# -- errors ---------------------------------------------------------------------------------

def first_line(exc: BaseException) -> str:
    """The first line of a driver error's message (of its original DBAPI error), or its type's name."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the database or its driver (SQLAlchemy, sqlite3 or psycopg)."""
    return isinstance(exc, _DRIVER_ERRORS) or type(exc).__module__.startswith("psycopg")


#: SQLite's result codes for memory it could not get: NOMEM (7), IOERR_NOMEM (3082), IOERR_SHMMAP
#: (5386: the WAL index could not be mapped) and IOERR_MMAP (6154). (IOERR_SHMOPEN, 4618, is not one:
#: the WAL index file could not be prepared.)
_SQLITE_NO_MEMORY = {7, 3082, 5386, 6154}
_SQLITE_IOERR = 10


def near_memory_limit(margin: float = 0.9) -> bool:
    """Whether this process has taken more than ``margin`` of the address space its limit
    (``RLIMIT_AS``) allows: an I/O error of SQLite's then is memory it could not map.

    Returns
    -------
    bool
        False without a limit, or where the process's size cannot be read (not Linux).
    """
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return False
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return False
    return size > margin * soft


@contextmanager
def mapped_errors(where: str, doing: str = "use database") -> Iterator[None]:
    """Turn a driver error raised inside the block into ``DatabaseError("cannot <doing> <where>: ...")``.

    Errors oneprov raises on purpose (and every other exception) pass through unchanged.
    """
    try:
        yield
    except Exception as exc:
        if not is_driver_error(exc):
            raise
        cause = exc.__context__
        if cause is not None and not exc.__suppress_context__:
            # The driver failed while cleaning up after another error (a rollback or a reset on a
            # connection that Ctrl-C or a failed statement aborted): that other error is the real one.
            if not isinstance(cause, Exception) or not is_driver_error(cause):
                raise cause from None
            exc = cause
        message = first_line(exc)
        code = getattr(getattr(exc, "orig", exc), "sqlite_errorcode", None)
        # (SQLite says "disk I/O error" when it cannot map or allocate memory)
        if code in _SQLITE_NO_MEMORY or (code is not None and code & 0xFF == _SQLITE_IOERR and near_memory_limit()):
            raise DatabaseError(f"out of memory while using {where} ({message}): the machine, or this process's "
                                "limit, has no memory left for it") from None
        if "malformed" in message:     # SQLite's SQLITE_CORRUPT: refuse before writing into a damaged file
            raise DatabaseError(f"database {where} is damaged ({message}): nothing was written or read; "
                                "`oneprov db check` lists the problems; restore it from a backup") from None
        raise DatabaseError(f"cannot {doing} {where}: {message}") from None


# -- transactions ---------------------------------------------------------------------------

class _KeptConnectionLost(Exception):
    """A write on a kept driver connection failed because the connection was gone, before it committed."""


class Database:
    """One database: its engine, its dialect (picked once), and the two kinds of transaction.

    Read and write connections are decided here and nowhere else: :meth:`writing` begins a write
    transaction (``BEGIN IMMEDIATE`` on SQLite, so a transaction never fails half-way on a lock
    upgrade), :meth:`reading` a read transaction that never waits for the write lock.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect: dialects.Dialect = dialects.of(engine)
        self.where = redact(engine.url)
        self._reader = engine.execution_options(oneprov_read=True)   # the same pool, read transactions
        # the driver connection kept by the first thread that writes through the driver, and its owner
        self._kept: tuple[tuple[int, int], Any] | None = None
        self._keeping = threading.Lock()
        # the checkpointer thread while it runs, and whether it is asked to checkpoint again
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = False
        self._checkpointing = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where!r})"

    def close(self) -> None:
        """Release the database connections.

        Returns
        -------
        None
        """
        self.wait_for_checkpoint()
        kept, self._kept = self._kept, None
        if kept is not None and kept[0][0] == os.getpid():   # (never a connection of the parent process)
            kept[1].close()
        self.engine.dispose()

    def checkpoint_soon(self) -> None:
        """Have what is committed copied into the database file by a thread of the store's, which
        runs while there is such work (a checkpoint; SQLite files only, see
        :meth:`Dialect.checkpoint`): an import's commits leave that to it, and it works on one core
        while the import goes on on another. :meth:`close` waits for it."""
        if not self.dialect.checkpoints(self.engine):
            return
        with self._checkpointing:
            self._checkpoint_due = True
            if self._checkpointer is None or not self._checkpointer.is_alive():   # (or a parent process's)
                self._checkpointer = threading.Thread(target=self._checkpoint, name="oneprov-checkpointer",
                                                      daemon=True)
                self._checkpointer.start()

    def wait_for_checkpoint(self) -> None:
        """Wait until the checkpoints asked for (:meth:`checkpoint_soon`) are done."""
        with self._checkpointing:
            thread = self._checkpointer
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _checkpoint(self) -> None:
        while True:
            connection, failed = None, False
            try:
                while self._take_checkpoint():
                    connection = connection or self.engine.raw_connection()
                    self.dialect.checkpoint(connection.driver_connection)
            except Exception as exc:   # (harmless: another connection's commit checkpoints then)
                failed = True
                _log.debug("checkpoint of %s failed: %s", self.where, first_line(exc))
            finally:
                if connection is not None:
                    connection.close()
            with self._checkpointing:   # (asked again while the connection closed: once more)
                if failed or not self._checkpoint_due:
                    self._checkpoint_due, self._checkpointer = False, None
                    return

    def _take_checkpoint(self) -> bool:
        with self._checkpointing:
            due, self._checkpoint_due = self._checkpoint_due, False
            return due

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        Yields
        ------
        sqlalchemy.engine.Connection
            The connection, inside the transaction (``BEGIN IMMEDIATE`` on SQLite).

        Raises
        ------
        DatabaseError
            A driver error inside the block (a lock not granted in time, a read-only database, a
            broken constraint...), in one line naming the database.
        """
        with mapped_errors(self.where), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read transaction that never takes the write lock (rolled back at the end).

        Yields
        ------
        sqlalchemy.engine.Connection
            The connection, inside the transaction.

        Raises
        ------
        DatabaseError
            A driver error inside the block, in one line naming the database.
        """
        with mapped_errors(self.where), self._reader.connect() as conn:
            yield conn
            conn.rollback()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """One connection for a series of write transactions, each ``with conn.begin():``.

        Yields
        ------
        sqlalchemy.engine.Connection
            The connection, outside any transaction.

        Raises
        ------
        DatabaseError
            A driver error inside the block, in one line naming the database.
        """
        with mapped_errors(self.where), self.engine.connect() as conn:
            yield conn

    def driver_write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` in a write transaction on a bare driver cursor: committed when it
        returns, rolled back if it raises; return what it returns.

        The same transaction as :meth:`writing` without SQLAlchemy's execution machinery, which
        costs several times what SQLite needs to commit one small row (a load event). The thread
        that writes first keeps its driver connection for the next writes instead of taking one
        from the pool each time: under 8 processes writing at once, the pool's bookkeeping cost
        a third of each event. (A kept connection is not pinged: if the server has closed it, the
        write, which cannot have committed, runs again once on a new connection.)

        Parameters
        ----------
        work : callable
            Given the driver's cursor (``sqlite3.Cursor`` or ``psycopg.Cursor``), inside the transaction.

        Returns
        -------
        object
            What ``work`` returned.

        Raises
        ------
        DatabaseError
            A driver error inside ``work``, in one line naming the database.
        """
        with mapped_errors(self.where):
            try:
                return self._driver_write(work)
            except _KeptConnectionLost:
                # The kept connection had died while idle (a restarted server, an idle timeout):
                # nothing was committed, so the work runs again, once, on a new connection.
                try:
                    return self._driver_write(work)
                except _KeptConnectionLost as again:
                    raise again.__cause__ from None

    def _driver_write(self, work: Callable[[Any], T]) -> T:
        kept = self._kept
        mine = kept is not None and kept[0] == (os.getpid(), threading.get_ident())
        if not mine and kept is None and not isinstance(self.engine.pool, sa.pool.StaticPool):
            with self._keeping:
                if self._kept is None:
                    self._kept = ((os.getpid(), threading.get_ident()), self.engine.raw_connection())
                    mine = True
        fairy = self._kept[1] if mine else self.engine.raw_connection()
        try:
            dbapi_conn = fairy.dbapi_connection
            cursor = dbapi_conn.cursor()
            committing = False
            try:
                self.dialect.begin_write(dbapi_conn)
                result = work(cursor)
                committing = True
                dbapi_conn.commit()
                return result
            except BaseException as exc:
                if mine:   # (a connection that failed is not kept: the next write takes another)
                    self._kept = None
                    lost = not committing and self.dialect.connection_lost(dbapi_conn)
                    fairy.invalidate()
                    if lost:
                        raise _KeptConnectionLost() from exc
                else:
                    dbapi_conn.rollback()
                raise
            finally:
                try:
                    cursor.close()
                except Exception:   # (the connection is gone)
                    pass
        finally:
            if not mine:
                fairy.close()

    @contextmanager
    def driver_reading(self) -> Iterator[driver.Reader]:
        """A read transaction on a bare driver cursor (rolled back at the end): the hot reads.

        The same transaction as :meth:`reading`, for statements run through
        :class:`~oneprov.store.driver.Reader` without SQLAlchemy's execution machinery.

        Yields
        ------
        oneprov.store.driver.Reader
            Runs SQLAlchemy statements on the driver's cursor, inside the transaction.

        Raises
        ------
        DatabaseError
            A driver error inside the block, in one line naming the database.
        """
        with mapped_errors(self.where):
            fairy = self.engine.raw_connection()
            try:
                dbapi_conn = fairy.dbapi_connection
                cursor = dbapi_conn.cursor()
                try:
                    self.dialect.begin_read(cursor)
                    yield driver.Reader(cursor, self.engine.dialect)
                finally:
                    cursor.close()
                    dbapi_conn.rollback()
            finally:
                fairy.close()

    def frame(self, stmt: sa.Executable, params: dict | None = None) -> pd.DataFrame:
        """The rows of one SELECT as a DataFrame, read in a read transaction.

        Parameters
        ----------
        stmt : sqlalchemy.sql.expression.Executable
            The statement (a SQLAlchemy SELECT, or ``sqlalchemy.text``).
        params : dict, optional
            Values of the statement's bound parameters. Default None.

        Returns
        -------
        pandas.DataFrame
            The rows, one column per selected column.

        Raises
        ------
        DatabaseError
            The statement fails, or the database cannot be read.
        """
        with self.reading() as conn:
            return result_frame(conn.execute(stmt, params or {}))


def result_frame(result: sa.CursorResult) -> pd.DataFrame:
    """A DataFrame of a result's rows.

    Rows become plain tuples first: pandas probes each SQLAlchemy Row for array attributes, and
    every probe raises inside SQLAlchemy (about 8x slower).
    """
    return pd.DataFrame([tuple(row) for row in result.fetchall()], columns=list(result.keys()))
