"""Every statement that differs between SQLite and PostgreSQL: one small class per back end.

The rest of the store writes SQL once, for both, and asks ``db.dialect`` (picked once, when a
:class:`~oneprov.store.engine.Database` is made) for what differs: how a connection is set up, how
rows are inserted in bulk, how the revision choice is grouped, how text is compared. Outside this module no code tests a dialect's name, except the
PostgreSQL-only roles (``roles.py``); ``tests/test_layout.py`` checks it. (Alembic's ``DefaultImpl``
/ ``SQLiteImpl`` / ``PostgresqlImpl`` are the model.)

>>> of("sqlite").name, of("postgresql").flag_type
('sqlite', DataType(bool))
"""
from __future__ import annotations

import datetime
import io
import sqlite3
from contextlib import contextmanager
from functools import cache
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL

from ..errors import DatabaseError, ReadOnlyError
from .schema import access_events, dataset_records

#: Seconds a SQLite writer waits for another process's write transaction before giving up.
BUSY_TIMEOUT_S = 60
#: Any 63-bit number shared by every oneprov process: the PostgreSQL advisory lock of first-time setup.
PG_SETUP_LOCK = 0x6F6E6570726F76
#: The first key of the PostgreSQL advisory locks under which ids are drawn (the second: the table's
#: name hashed), so that each writer's ids of a table are one range (see :meth:`PostgreSQL.reserve_ids`).
PG_IDS_LOCK = 0x6F70
#: SQLite page cache of an import's connection, in MiB (see :meth:`SQLite.import_session`).
IMPORT_CACHE_MIB = 256
#: The same for a first import, which appends to tables without secondary indexes and then sorts
#: to build them: a larger cache only holds more memory (and SQLite's sorter takes as much again
#: while it builds an index). 3M rows: peak RSS 1,077 MiB with 256, 659 MiB with 64, in 70 and 67 s.
BULK_IMPORT_CACHE_MIB = 64
#: Pages of SQLite's write-ahead log past which an import's own commit checkpoints (1,000 elsewhere):
#: the store's checkpointer thread copies the pages meanwhile (see :meth:`SQLite.import_session`), and
#: the log stays ~64 MiB plus a transaction (with none at all it grew to the database's size).
IMPORT_AUTOCHECKPOINT_PAGES = 16_384

#: An access event's fields, in the order of the rows :meth:`Dialect.insert_events` takes.
EVENT_COLUMNS = ("event_time", "method", "outcome", "dataset_id", "session_id", "rel_path", "requested_revision",
                 "revision_cutoff", "scope", "record_id", "path", "bytes", "detail", "listed")

class Dialect:
    """What the back ends share; each subclass says what is its own."""

    name: str = ""
    #: The arrow type of a boolean column's values as the driver returns them.
    flag_type: pa.DataType = pa.bool_()
    #: The arrow type of a date column's values as the driver returns them.
    date_type: pa.DataType = pa.date32()
    #: Whether a first import drops the dataset records' foreign keys with their secondary indexes and
    #: adds them back after the rows: where the back end checks them row by row, at a price.
    bulk_drops_foreign_keys: bool = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} dialect>"

    # -- engines and transactions -----------------------------------------------------------

    def engine_options(self, url: URL, readonly: bool) -> dict[str, Any]:
        """Keyword arguments of ``sqlalchemy.create_engine`` for this back end."""
        return {}

    def configure(self, engine: Engine, readonly: bool) -> None:
        """Set up a new engine's connections (event listeners)."""

    def begin_write(self, dbapi_conn: Any) -> None:
        """Start a write transaction on a bare driver connection."""

    def begin_read(self, cursor: Any) -> None:
        """Start a read transaction on a bare driver cursor: one snapshot for all its statements."""

    def connection_lost(self, dbapi_conn: Any) -> bool:
        """Whether a driver connection that just failed is gone (the server closed it): a write that
        failed before its commit can then run again on another connection."""
        return False

    #: How long a long run of write transactions (an import) pauses, while other connections write
    #: too, so that their writers get the lock (0: writers do not queue behind one another).
    give_way_s = 0.0

    def commits_by_others(self, conn: Connection) -> int:
        """A number that changes when another connection commits (outside a transaction of ``conn``)."""
        return 0

    def lock_for_setup(self, conn: Connection) -> None:
        """Serialise first-time setup and migrations between processes, inside ``conn``'s transaction."""

    def check_migration_rights(self, conn: Connection, current: str | None, head: str, where: str) -> None:
        """Refuse, saying what to do, a migration that this connection's role may not run."""

    def integrity_problems(self, conn: Connection) -> list[str]:
        """What the back end's own integrity checks find wrong (read-only)."""
        return []

    def snapshot(self, conn: Connection) -> None:
        """Make ``conn``'s read transaction see one state of the database for all its statements."""

    def stream_cursor(self, conn: Connection) -> Any:
        """A driver cursor over ``conn`` that fetches rows as they are asked for."""
        return conn.connection.driver_connection.cursor()

    def run_one_statement(self, conn: Connection, query: str, params: dict,
                          timeout: float | None = None) -> tuple[list[str] | None, list]:
        """``(columns, rows)`` of exactly one statement of an audit (``oneprov sql``), in ``conn``'s
        read-only transaction; ``columns`` is None when it returns no rows. A statement running
        longer than ``timeout`` seconds is stopped (:class:`QueryStopped`), and Ctrl-C stops it."""
        result = conn.execute(sa.text(query), params)
        return (list(result.keys()), [tuple(r) for r in result.fetchall()]) if result.returns_rows else (None, [])

    # -- expressions ------------------------------------------------------------------------

    def insert(self, table: sa.Table) -> Any:
        """An INSERT of ``table`` that takes ``on_conflict_do_update/nothing``."""
        raise NotImplementedError

    def contains(self, column: sa.ColumnElement, text: Any) -> sa.ColumnElement[bool]:
        """A case-sensitive substring test (SQLite's LIKE ignores case, ONE's search does not)."""
        raise NotImplementedError

    def byte_order(self, column: sa.ColumnElement) -> sa.ColumnElement:
        """``column`` compared and sorted byte-wise, as Python compares strings."""
        return column

    def descending(self, column: sa.ColumnElement) -> sa.ColumnElement:
        """A descending sort key with NULLs last, as pandas sorts."""
        return column.desc().nulls_last()

    def join_lines(self, column: sa.ColumnElement) -> sa.ColumnElement:
        """The aggregate joining ``column``'s values (in the subquery's order) with newlines."""
        raise NotImplementedError

    # -- searching: what SQLite can skip ----------------------------------------------------

    def unless_whole(self, flag: str, lookup: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        """A catalog membership test, skipped (on SQLite) when bound ``flag`` says the catalog holds
        the whole table."""
        return lookup

    def coverage(self, conn: Connection, query_id: int | None) -> dict[str, bool]:
        """The bound flags of :meth:`unless_whole` for a catalog (an import's query id)."""
        return {}

    def substring_filter(self, stmt: sa.Select, table: sa.Table, column: str, n: int) -> sa.Select:
        """``stmt`` keeping the rows whose ``column`` contains any of the bound ``<column>_<i>``, i < n."""
        return stmt.where(sa.or_(*(self.contains(table.c[column], sa.bindparam(f"{column}_{i}")) for i in range(n))))

    # -- the revision choice ----------------------------------------------------------------

    def revision_choice(self, revision: Any, conditions: list, strict: bool,
                        output: Callable[[sa.FromClause], list[sa.ColumnElement]]) -> sa.Select:
        """The SELECT choosing one revision per dataset (see :mod:`oneprov.store.revisions`).

        ``output`` gives the result columns of a dataset row; the result adds ``n_default``.
        """
        return _window_choice(self, revision, conditions, strict, output)

    # -- writing in bulk --------------------------------------------------------------------

    def current_role(self, conn: Connection) -> str | None:
        """The database role of this connection (None where the back end has no roles)."""
        return None

    def may_alter(self, conn: Connection, table: sa.Table) -> bool:
        """Whether this connection may drop and create ``table``'s indexes."""
        return True

    def fill(self, conn: Connection, table: sa.Table, columns: list[str], rows: list[tuple],
             constants: dict[str, Any] | None = None) -> None:
        """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in bulk, through the driver;
        ``constants`` give the same value to other columns of every row."""
        raise NotImplementedError

    #: Whether bulk rows are given to :meth:`fill_arrow` as arrow columns (else to :meth:`fill` as
    #: Python values).
    fills_arrow: bool = False

    def fill_arrow(self, conn: Connection, table: sa.Table, rows: pa.Table, constants: dict[str, Any]) -> None:
        """:meth:`fill` of rows given as arrow columns, named as ``table``'s."""
        raise NotImplementedError

    #: The driver's mark of a parameter.
    mark = "?"

    def driver_time(self, db: Any) -> Callable[[datetime.datetime], Any]:
        """How a datetime is bound through the driver, as SQLAlchemy would store it."""
        return lambda value: value

    def insert_query(self, db: Any, values: dict[str, Any], spans: dict[sa.Table, list[tuple[int, int]]]) -> int:
        """Insert a complete ``queries`` row (``values``: its columns) and the records it returned
        (``spans``: spans table -> ``(first_id, last_id)`` spans) in one transaction of ``db``; return its id.

        Through the driver, on the writing thread's kept connection, as a load event is: a search or
        a list records one query each (on PostgreSQL, SQLAlchemy's transaction with a COPY for each
        spans table took ~15 round trips: ``list_datasets`` 3.0 ms a call, 1.7 ms this way)."""
        to_driver = self.driver_time(db)
        names, m = list(values), self.mark
        params = [to_driver(v) if isinstance(v, datetime.datetime) else v for v in values.values()]
        statement = f"INSERT INTO queries ({', '.join(names)}) VALUES ({', '.join([m] * len(names))}) RETURNING id"

        def write(cursor: Any) -> int:
            qid = cursor.execute(statement, params).fetchone()[0]
            for table, ranges in spans.items():
                if ranges:
                    self.insert_spans(cursor, table, qid, ranges)
            return qid
        return db.driver_write(write)

    def insert_spans(self, cursor: Any, table: sa.Table, query: int, spans: list[tuple[int, int]]) -> None:
        """Insert ``query``'s ``spans`` into the spans ``table``, on a driver cursor."""
        m = self.mark
        cursor.executemany(f"INSERT INTO {table.name} (query_id, first_id, last_id) VALUES ({m}, {m}, {m})",
                           [(query, *span) for span in spans])

    def insert_events(self, db: Any, run_id: str, rows: list[tuple],
                      complete: Callable[[list[tuple]], list[tuple]]) -> list[int]:
        """Insert access events (tuples in :data:`EVENT_COLUMNS` order) in one transaction of ``db``;
        return their ids, in order. ``complete`` gives events of a dataset without its ``record_id``
        (or ``session_id``) their dataset's current record (and its session), for a dialect that
        does not do it in the INSERT itself."""
        raise NotImplementedError

    @contextmanager
    def import_session(self, conn: Connection, bulk: bool) -> Iterator[None]:
        """Connection settings for the length of a large import (``bulk``: a first import, which
        builds the secondary indexes after the rows)."""
        yield

    def checkpoints(self, engine: Engine) -> bool:
        """Whether what an import commits is copied into the database file apart from its commits
        (by :meth:`checkpoint`, in a thread of the store's: :meth:`Database.checkpoint_soon`)."""
        return False

    def checkpoint(self, dbapi_conn: Any) -> None:
        """Copy what is committed into the database file, without waiting for any writer or reader."""

    def reserve_ids(self, conn: Connection, table: sa.Table, n: int) -> Sequence[int]:
        """``n`` new ids of ``table`` (an integer primary key ``id``), ascending, no other writer's,
        inside ``conn``'s write transaction. Every writer of records draws its ids here."""
        raise NotImplementedError


class SQLite(Dialect):
    """SQLite through Python's ``sqlite3``: WAL, ``BEGIN IMMEDIATE`` writers, the driver for hot paths."""

    name = "sqlite"
    flag_type = pa.int8()      # booleans come back as 0/1
    date_type = pa.string()    # dates as 'YYYY-MM-DD' text

    def engine_options(self, url: URL, readonly: bool) -> dict[str, Any]:
        memory = (url.database or "").removeprefix("file:") in ("", ":memory:")
        return {"poolclass": sa.pool.StaticPool} if memory else {}

    def configure(self, engine: Engine, readonly: bool) -> None:
        """WAL journal, foreign keys on, a busy timeout, and write transactions that start with
        ``BEGIN IMMEDIATE``, so that a transaction never fails half-way on a lock upgrade
        (``BEGIN`` for a read-only engine, or a connection with the ``oneprov_read`` option)."""
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
                self.begin_write(conn.connection.dbapi_connection)

    def begin_write(self, dbapi_conn: Any) -> None:
        """``BEGIN IMMEDIATE``, waiting in SQLite's busy handler while another process writes.

        The handler (the connection's ``busy_timeout``, :data:`BUSY_TIMEOUT_S`) sleeps 1, 2, 5, 10 ...
        100 ms between tries, in C. With 8 processes each committing one load event per transaction
        on 2 cores it recorded ~12k events/s at ~80 µs CPU each; a Python loop polling every 0.1-5 ms
        recorded ~8.6k/s at ~115 µs each (every poll takes CPU from the process holding the lock), and
        one short poll before the handler ~9.9k/s. The price: at full contention a writer now waits
        up to ~1.5 s in the worst case (~0.6 s with the loop), though 99% of commits wait less (~13 ms
        against ~25 ms).

        Back-to-back transactions of one connection (an import's) would starve a waiting writer, whose
        tries miss the microseconds between them: the import pauses for :attr:`give_way_s` instead.
        """
        dbapi_conn.execute("BEGIN IMMEDIATE")

    def begin_read(self, cursor: Any) -> None:
        cursor.execute("BEGIN")

    #: A waiting writer's busy handler sleeps up to 100 ms between tries: a pause this long lets
    #: every waiting writer try at least once.
    give_way_s = 0.12

    def commits_by_others(self, conn: Connection) -> int:
        # (through the driver, outside any transaction, as the import's PRAGMAs)
        return conn.connection.dbapi_connection.execute("PRAGMA data_version").fetchone()[0]

    def integrity_problems(self, conn: Connection) -> list[str]:
        result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
        problems = [] if result == ["ok"] else [f"integrity: {r}" for r in result]
        problems.extend(f"foreign key: {tuple(r)}" for r in conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall())
        return problems

    #: The PRAGMAs an audit may run: they read. Any other, and ATTACH/DETACH (also VACUUM INTO), which
    #: create files even on a read-only connection, are refused before they run.
    READ_PRAGMAS = frozenset({
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
        "foreign_key_check", "integrity_check", "quick_check", "schema_version", "user_version", "page_count",
        "page_size", "freelist_count", "compile_options", "collation_list", "function_list", "pragma_list",
        "database_list", "module_list", "data_version", "encoding", "application_id",
    })

    def run_one_statement(self, conn: Connection, query: str, params: dict,
                          timeout: float | None = None) -> tuple[list[str] | None, list]:
        driver = conn.connection.driver_connection
        refused: list[str] = []

        def authorize(action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None) -> int:
            if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
                refused.append("ATTACH, DETACH and VACUUM INTO are not allowed (they create files)")
                return sqlite3.SQLITE_DENY
            if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in self.READ_PRAGMAS:
                refused.append(f"PRAGMA {arg1} is not allowed (only PRAGMAs that read)")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        driver.set_authorizer(authorize)
        try:
            with _stoppable(driver, timeout) as stopped:
                try:
                    return super().run_one_statement(conn, query, params)
                except sa.exc.DBAPIError:
                    if refused:
                        raise ReadOnlyError(f"refused: {refused[0]}") from None
                    stopped()   # raises if Ctrl-C or the timeout stopped it
                    raise
        finally:
            driver.set_authorizer(None)

    def insert(self, table: sa.Table) -> Any:
        return sqlite_dialect.insert(table)

    def contains(self, column: sa.ColumnElement, text: Any) -> sa.ColumnElement[bool]:
        return sa.func.instr(column, text) > 0

    def descending(self, column: sa.ColumnElement) -> sa.ColumnElement:
        return column.desc()   # SQLite puts NULLs last in descending order already

    def join_lines(self, column: sa.ColumnElement) -> sa.ColumnElement:
        # SQLite keeps a FROM subquery's ORDER BY when it has a LIMIT or feeds an aggregate other
        # than count/min/max: group_concat sees the values in order.
        return sa.func.group_concat(column, sa.literal("\n"))

    def unless_whole(self, flag: str, lookup: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        # Not on PostgreSQL, which turns a plain EXISTS into a (hash) semi-join, and an OR'ed one into
        # a lookup per row.
        return sa.or_(sa.bindparam(flag, type_=sa.Boolean), lookup)

    def coverage(self, conn: Connection, query_id: int | None) -> dict[str, bool]:
        covered = conn.execute(_COVERAGE, {"query_id": query_id}).first() if query_id is not None else None
        return dict(zip(("all_sessions", "all_datasets"), (bool(c) for c in covered or (False, False))))

    def substring_filter(self, stmt: sa.Select, table: sa.Table, column: str, n: int) -> sa.Select:
        if column != "subject":
            return super().substring_filter(stmt, table, column, n)
        # The subject index holds each subject with its rowid: scanning it for the matches is ~3x
        # cheaper than scanning the table (a substring test cannot seek in an index).
        inner = table.alias("subject_match")
        matches = [self.contains(inner.c.subject, sa.bindparam(f"subject_{i}")) for i in range(n)]
        rowids = sa.select(sa.literal_column("subject_match.rowid")).where(sa.or_(*matches))
        return stmt.where(sa.literal_column(f"{table.name}.rowid").in_(rowids))

    def revision_choice(self, revision: Any, conditions: list, strict: bool,
                        output: Callable[[sa.FromClause], list[sa.ColumnElement]]) -> sa.Select:
        """One GROUP BY pass over the covering index picks each dataset's row, by rowid.

        With exactly one ``max()`` in a grouped SELECT, SQLite takes the bare ``rowid`` from the row
        that holds the maximum: the greatest revision. With no revision asked, the flagged row is the
        sum of the flagged rows' rowids when exactly one is flagged. The chosen rowids are sorted, so
        that the table is then read in its own order rather than at random.
        """
        d = dataset_records.c
        rowid = sa.literal_column(f"{dataset_records.name}.rowid")
        if revision is not None:
            conditions = [*conditions, d.revision <= revision]
            chosen, n_default = rowid, sa.literal_column("0")
        else:
            flagged = d.default_revision == sa.true()
            n_default = sa.func.sum(sa.case((flagged, 1), else_=0))
            chosen = sa.case((n_default == 1, sa.func.sum(sa.case((flagged, rowid)))), else_=rowid)
        choice = (sa.select(chosen.label("chosen"), n_default.label("n_default"), sa.func.max(d.revision).label("top"))
                  .where(*conditions)
                  .group_by(d.session_uuid, d.collection, d.name)
                  .order_by(sa.literal_column("chosen"))
                  .subquery("choice"))
        row = dataset_records.alias("chosen_row")
        return (sa.select(*output(row), choice.c.n_default)
                .select_from(choice.join(row, sa.literal_column("chosen_row.rowid") == choice.c.chosen)))

    def fill(self, conn: Connection, table: sa.Table, columns: list[str], rows: list[tuple],
             constants: dict[str, Any] | None = None) -> None:
        # SQLAlchemy's own executemany spends more time per row than SQLite needs to store it; the
        # constants are SQL literals, bound once (a datetime parameter costs a conversion per row).
        if rows:
            quote = conn.dialect.identifier_preparer.quote
            literals = [str(sa.literal(v, table.c[c].type).compile(dialect=conn.dialect,
                                                                  compile_kwargs={"literal_binds": True}))
                        for c, v in (constants or {}).items()]
            names = ", ".join(quote(c) for c in [*columns, *(constants or {})])
            conn.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({names}) "
                                 f"VALUES ({', '.join(['?'] * len(columns) + literals)})", rows)

    def driver_time(self, db: Any) -> Callable[[datetime.datetime], Any]:
        return _sqlite_time(db.engine.dialect)   # (text, as SQLAlchemy stores a DateTime in SQLite)

    def insert_events(self, db: Any, run_id: str, rows: list[tuple],
                      complete: Callable[[list[tuple]], list[tuple]]) -> list[int]:
        # Through the driver: SQLAlchemy's execution costs several times SQLite's commit.
        to_text = self.driver_time(db)
        if len(rows) == 1:  # the common case, the client's: one load, one transaction
            row = rows[0]
            # (everything prepared before the write lock is taken: others wait while it is held)
            if row[_DATASET] is not None and (row[_RECORD] is None or row[_SESSION] is None):
                # the dataset's current record, found in the INSERT (the same transaction)
                statement, params = _SQLITE_INSERT_EVENT_OF_CURRENT, (run_id, to_text(row[0]), *row[1:], row[_DATASET])
            else:
                statement, params = _SQLITE_INSERT_EVENT, (run_id, to_text(row[0]), *row[1:])
            return [db.driver_write(lambda cursor: cursor.execute(statement, params).lastrowid)]
        if any(r[_DATASET] is not None and (r[_RECORD] is None or r[_SESSION] is None) for r in rows):
            rows = complete(rows)
        def write(cursor: Any) -> list[int]:
            # BEGIN IMMEDIATE holds the write lock: the ids after the largest one are ours. (Most of
            # a large batch's time goes to inserting its random dataset ids into their index.)
            base = cursor.execute("SELECT coalesce(max(id), 0) FROM access_events").fetchone()[0]
            cursor.executemany(_SQLITE_INSERT_EVENT_ID, [(base + k, run_id, to_text(row[0]), *row[1:])
                                                        for k, row in enumerate(rows, 1)])
            return list(range(base + 1, base + len(rows) + 1))
        return db.driver_write(write)

    @contextmanager
    def import_session(self, conn: Connection, bulk: bool) -> Iterator[None]:
        """A page cache of :data:`IMPORT_CACHE_MIB` for this connection during an import
        (:data:`BULK_IMPORT_CACHE_MIB` for a first import), and commits that leave checkpoints to
        the store's checkpointer thread.

        SQLite's default cache (2 MiB) holds a small part of the indexes an import writes to, so a
        large import rereads and rewrites index pages over and over. A commit that finds more than
        1,000 pages in the write-ahead log copies them into the database file and syncs both files
        (a checkpoint), while the import holds the write lock. Here the import's commits do so only
        past :data:`IMPORT_AUTOCHECKPOINT_PAGES`, and wake the store's checkpointer thread instead
        (:meth:`checkpoint`), which copies the pages on the other core while the import goes on: a
        re-import of 1M rows with 1% changed took 3.3-3.8 s, 2.2-2.7 s so. Other connections keep
        their settings; this one gets its old ones back at the end.
        """
        # (through the driver: a PRAGMA would otherwise begin a transaction)
        driver = conn.connection.dbapi_connection
        before = [driver.execute(f"PRAGMA {name}").fetchone()[0] for name in ("main.cache_size", "wal_autocheckpoint")]
        driver.execute(f"PRAGMA main.cache_size = -{(BULK_IMPORT_CACHE_MIB if bulk else IMPORT_CACHE_MIB) * 1024}")
        driver.execute(f"PRAGMA wal_autocheckpoint = {IMPORT_AUTOCHECKPOINT_PAGES}")
        try:
            yield
        finally:
            try:
                for name, value in zip(("main.cache_size", "wal_autocheckpoint"), before):
                    driver.execute(f"PRAGMA {name} = {int(value)}")
            except Exception:   # the connection is gone (Ctrl-C, a failure) and will not be reused
                pass

    def checkpoints(self, engine: Engine) -> bool:
        return (engine.url.database or "").removeprefix("file:") not in ("", ":memory:")   # (a file: WAL)

    def checkpoint(self, dbapi_conn: Any) -> None:
        # PASSIVE: copies the pages no reader still needs, takes no lock that a writer or reader waits for
        dbapi_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def reserve_ids(self, conn: Connection, table: sa.Table, n: int) -> Sequence[int]:
        # BEGIN IMMEDIATE holds the write lock: the ids after the largest are free.
        base = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0))).scalar_one()
        return range(base + 1, base + n + 1)


class PostgreSQL(Dialect):
    """PostgreSQL through psycopg 3: COPY for bulk rows, arrays for linked rows, sequences for ids."""

    name = "postgresql"
    mark = "%s"
    # A trigger per row checks a foreign key: COPY of 100,000 records took 0.69 s with it, 0.25 s
    # without; adding it back checks them all in one join (~30 ms). (SQLite's check costs nothing.)
    bulk_drops_foreign_keys = True

    def engine_options(self, url: URL, readonly: bool) -> dict[str, Any]:
        options = {"options": "-c default_transaction_read_only=on"} if readonly else {}
        return {"connect_args": options, "pool_pre_ping": True}

    def lock_for_setup(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SETUP_LOCK})

    def check_migration_rights(self, conn: Connection, current: str | None, head: str, where: str) -> None:
        """On a shared PostgreSQL only the owner of the tables migrates (see ``roles.py``): a client
        or auditor that finds the schema out of date is told to have the owner upgrade it, instead of
        failing half-way on a missing privilege."""
        if current is None:
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
                f"database {where} is at schema version {current} and this oneprov needs {head}, but "
                f"role {row.me!r} cannot migrate it (the tables belong to {row.owner!r}): the owner must run "
                f"`oneprov db upgrade` as {row.owner!r}. Nothing was changed.")

    def snapshot(self, conn: Connection) -> None:
        # The default (READ COMMITTED) gives each statement its own snapshot.
        conn.execution_options(isolation_level="REPEATABLE READ")

    def connection_lost(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.closed or dbapi_conn.broken)

    def begin_read(self, cursor: Any) -> None:
        # (psycopg has begun the transaction: this is its first statement)
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def stream_cursor(self, conn: Connection) -> Any:
        return conn.connection.driver_connection.cursor(name="oneprov_export")  # server-side: one batch in memory

    def run_one_statement(self, conn: Connection, query: str, params: dict,
                          timeout: float | None = None) -> tuple[list[str] | None, list]:
        # A prepared statement is exactly one statement: ``COMMIT; SET ...; INSERT ...`` cannot escape
        # the read-only transaction. (Ctrl-C: psycopg cancels the statement on the server.)
        compiled = sa.text(query).compile(dialect=conn.dialect)
        bound = {**compiled.params, **params}
        with conn.connection.driver_connection.cursor() as cursor:
            if timeout:
                cursor.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
            try:
                cursor.execute(compiled.string, bound, prepare=True)
            except Exception as exc:
                if timeout and type(exc).__name__ == "QueryCanceled":
                    raise QueryStopped(f"the query was stopped after {timeout:g} s (--timeout)") from None
                raise
            if cursor.description is None:
                return None, []
            return [d.name for d in cursor.description], cursor.fetchall()

    def insert(self, table: sa.Table) -> Any:
        return pg_dialect.insert(table)

    def contains(self, column: sa.ColumnElement, text: Any) -> sa.ColumnElement[bool]:
        return sa.func.strpos(column, text) > 0

    def byte_order(self, column: sa.ColumnElement) -> sa.ColumnElement:
        return column.collate("C")   # whatever the database's own collation is

    def join_lines(self, column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.func.string_agg(column, pg_dialect.aggregate_order_by(sa.literal("\n"), column))

    def fill(self, conn: Connection, table: sa.Table, columns: list[str], rows: list[tuple],
             constants: dict[str, Any] | None = None) -> None:
        # COPY is several times faster than any INSERT.
        if rows:
            quote = conn.dialect.identifier_preparer.quote
            names = ", ".join(quote(c) for c in [*columns, *(constants or {})])
            extra = tuple((constants or {}).values())
            with conn.connection.driver_connection.cursor() as cursor:
                with cursor.copy(f"COPY {quote(table.name)} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row + extra if extra else row)

    fills_arrow = True

    def fill_arrow(self, conn: Connection, table: sa.Table, rows: pa.Table, constants: dict[str, Any]) -> None:
        # Arrow writes the COPY's CSV text in C++ (~1.5 us a row, without the GIL), where psycopg
        # formatted each Python value (~2.7 us a row, with it). In CSV, an unquoted empty field is a
        # NULL and a quoted one ("") an empty text: arrow writes them so.
        if not rows.num_rows:
            return
        for column, value in constants.items():   # (repeated in arrow: no Python list of the rows' length)
            scalar = pa.scalar(value, pa.timestamp("us")) if isinstance(value, datetime.datetime) else pa.scalar(value)
            rows = rows.append_column(column, pa.repeat(scalar, rows.num_rows))
        text = io.BytesIO()
        pa_csv.write_csv(rows, text, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
        quote = conn.dialect.identifier_preparer.quote
        names = ", ".join(quote(c) for c in rows.column_names)
        with conn.connection.driver_connection.cursor() as cursor:
            with cursor.copy(f"COPY {quote(table.name)} ({names}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(text.getbuffer())

    def insert_spans(self, cursor: Any, table: sa.Table, query: int, spans: list[tuple[int, int]]) -> None:
        # (one statement from arrays: psycopg's executemany took a few round trips more)
        firsts, lasts = (list(column) for column in zip(*spans))
        cursor.execute(f"INSERT INTO {table.name} (query_id, first_id, last_id) SELECT %s, f, l "
                       "FROM unnest(%s::bigint[], %s::bigint[]) AS s (f, l)", (query, firsts, lasts))

    def insert_events(self, db: Any, run_id: str, rows: list[tuple],
                      complete: Callable[[list[tuple]], list[tuple]]) -> list[int]:
        if len(rows) == 1:  # the common case, the client's: one load, one transaction, on the driver
            # (a load event given its record: 759 -> 473 us, raw psycopg 466 us; only its dataset,
            # its current record found in the INSERT: 1.8 ms -> 472 us)
            row = rows[0]
            if row[_DATASET] is not None and (row[_RECORD] is None or row[_SESSION] is None):
                statement, params = _PG_INSERT_EVENT_OF_CURRENT, (run_id, *row, row[_DATASET])
            else:
                statement, params = _PG_INSERT_EVENT, (run_id, *row)
            return [db.driver_write(lambda cursor: cursor.execute(statement, params).fetchone()[0])]
        if any(r[_DATASET] is not None and (r[_RECORD] is None or r[_SESSION] is None) for r in rows):
            rows = complete(rows)
        names = ", ".join(EVENT_COLUMNS)
        with db.writing() as conn:
            # Ids drawn from the sequence first (concurrent writers never get the same one), so
            # that they follow the events' order; then every row in one statement, from arrays.
            ids = sorted(conn.exec_driver_sql(
                "SELECT nextval(pg_get_serial_sequence('access_events', 'id')) FROM generate_series(1, %(n)s)",
                {"n": len(rows)}).scalars().all())
            arrays = ", ".join(f"%({c})s::{t}[]" for c, t in zip(["id", *EVENT_COLUMNS], _PG_TYPES))
            values = ", ".join(f"v.{c}" for c in EVENT_COLUMNS)
            conn.exec_driver_sql(
                f"INSERT INTO access_events (id, run_id, {names}) "
                f"SELECT v.id, %(run_id)s, {values} FROM unnest({arrays}) AS v (id, {names})",
                {"run_id": run_id, "id": ids, **dict(zip(EVENT_COLUMNS, map(list, zip(*rows))))})
            return ids

    def current_role(self, conn: Connection) -> str | None:
        return conn.exec_driver_sql("SELECT current_user").scalar_one()

    def may_alter(self, conn: Connection, table: sa.Table) -> bool:
        # only the tables' owner (see roles.py): a client imports with the indexes in place
        return bool(conn.execute(sa.text(
            "SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename = :t"), {"t": table.name}).scalar())

    def reserve_ids(self, conn: Connection, table: sa.Table, n: int) -> Sequence[int]:
        """Under a lock of ``table``'s ids held until the transaction ends (every oneprov writer of
        records draws its ids here), one call moves the sequence on by ``n``: 100,000 ids in ~1 ms,
        where drawing them one by one takes ~0.3 s of the server's time. A role that may not move
        the sequence (a client: ``USAGE`` only, see ``roles.py``) draws them one by one, under the
        same lock, so they are one range too."""
        if n <= 0:
            return range(0)
        # (on the driver's cursor, in binary: SQLAlchemy's rows would cost more than drawing the ids)
        with conn.connection.driver_connection.cursor(binary=True) as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s)), "
                           "has_sequence_privilege(pg_get_serial_sequence(%s, 'id'), 'UPDATE')",
                           (PG_IDS_LOCK, table.name, table.name))
            if cursor.fetchone()[1]:
                cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                               "nextval(pg_get_serial_sequence(%s, 'id')) + %s - 1)", (table.name, table.name, n))
                last = cursor.fetchone()[0]
                return range(last - n + 1, last + 1)
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                           (table.name, n))
            return sorted(r[0] for r in cursor.fetchall())


_DIALECTS: dict[str, Dialect] = {d.name: d for d in (SQLite(), PostgreSQL())}


def of(engine_or_name: Engine | Connection | str) -> Dialect:
    """The dialect of an engine, a connection or a back-end name."""
    name = engine_or_name if isinstance(engine_or_name, str) else engine_or_name.dialect.name
    try:
        return _DIALECTS[name]
    except KeyError:
        raise DatabaseError(f"unsupported database back end {name!r}: use a SQLite path or a "
                            "postgresql+psycopg:// URL") from None


def _window_choice(dialect: Dialect, revision: Any, conditions: list, strict: bool,
                   output: Callable[[sa.FromClause], list[sa.ColumnElement]]) -> sa.Select:
    """Window functions over each dataset's rows (PostgreSQL; any back end with window functions)."""
    d = dataset_records
    rev = dialect.byte_order(d.c.revision)
    group = (d.c.session_uuid, d.c.collection, d.c.name)
    if revision is not None:
        conditions = [*conditions, rev <= revision]
        n_default = sa.literal_column("0")
    else:
        n_default = sa.func.sum(sa.case((d.c.default_revision == sa.true(), 1), else_=0)).over(partition_by=group)
    ranked = (
        sa.select(*output(d), n_default.label("n_default"),
                  sa.func.row_number().over(partition_by=group, order_by=rev.desc()).label("newest"))
        .where(*conditions)
        .subquery("ranked")
    )
    r = ranked.c
    if revision is None and strict:
        chosen = sa.or_(sa.and_(r.n_default >= 1, r.default_revision == sa.true()),
                        sa.and_(r.n_default == 0, r.newest == 1))
    elif revision is None:
        chosen = sa.or_(sa.and_(r.n_default == 1, r.default_revision == sa.true()),
                        sa.and_(r.n_default != 1, r.newest == 1))
    else:
        chosen = r.newest == 1
    names = [c.key for c in output(d)]
    return sa.select(*(r[c] for c in names), r.n_default).where(chosen)


#: SQLite: whether the catalog (an import) holds every session record, and every dataset record, of
#: the database, as when one cache has its own database: then a search needs no membership lookup per
#: row (the lookups of 50,000 sessions and their datasets are most of a search's time). Records are
#: never deleted and have distinct positive rowids, so a table has at most max(rowid) rows; a complete
#: import links n_sessions (n_datasets) distinct records: if that is max(rowid), it links them all.
_COVERAGE = sa.text(
    "SELECT q.n_sessions = (SELECT max(rowid) FROM session_records) AND (SELECT min(rowid) FROM session_records) >= 1, "
    "q.n_datasets = (SELECT max(rowid) FROM dataset_records) AND (SELECT min(rowid) FROM dataset_records) >= 1 "
    "FROM queries AS q WHERE q.id = :query_id AND q.completed_at IS NOT NULL AND q.method = 'import_cache'")

_DATASET, _SESSION, _RECORD = (EVENT_COLUMNS.index(c) for c in ("dataset_id", "session_id", "record_id"))
#: The PostgreSQL type of the id and each of :data:`EVENT_COLUMNS`.
_PG_TYPES = ("bigint", "timestamp", "text", "text", "text", "text", "text", "text", "text", "text", "bigint",
             "text", "bigint", "text", "boolean")


def _insert_event(marks: list[str]) -> str:
    """The INSERT of one event (``run_id``, then :data:`EVENT_COLUMNS`), each value's parameter
    written as ``marks`` says."""
    return f"INSERT INTO access_events (run_id, {', '.join(EVENT_COLUMNS)}) VALUES ({', '.join(marks)})"


def _insert_event_of_current(marks: list[str]) -> str:
    """The INSERT of one event whose record (and session), not given, are its dataset's current record
    (and that record's session): the latest record of the UUID among complete queries, as
    :func:`oneprov.store.records.current` says. Parameters: ``run_id``, :data:`EVENT_COLUMNS`, and the
    dataset's UUID again (``marks``: how each is written)."""
    found = {"session_id": "coalesce(e.session_id, r.session_uuid)", "record_id": "coalesce(e.record_id, r.id)"}
    return (f"INSERT INTO access_events (run_id, {', '.join(EVENT_COLUMNS)}) "
            f"SELECT {marks[0]}, {', '.join(found.get(c, 'e.' + c) for c in EVENT_COLUMNS)} "
            f"FROM (SELECT {', '.join(f'{m} AS {c}' for m, c in zip(marks[1:], EVENT_COLUMNS))}) AS e "
            "LEFT JOIN dataset_records AS r ON r.id = coalesce(e.record_id, (SELECT max(n.id) FROM dataset_records AS n "
            f"JOIN queries AS q ON q.id = n.query_id WHERE n.uuid = {marks[-1]} AND q.completed_at IS NOT NULL))")


_SQLITE_INSERT_EVENT = _insert_event(["?"] * (1 + len(EVENT_COLUMNS)))
_SQLITE_INSERT_EVENT_OF_CURRENT = _insert_event_of_current(["?"] * (2 + len(EVENT_COLUMNS)))
# (typed: PostgreSQL cannot tell a NULL parameter's type in a SELECT list)
_PG_MARKS = ["%s", *(f"CAST(%s AS {t})" for t in _PG_TYPES[1:]), "%s"]
_PG_INSERT_EVENT = _insert_event(_PG_MARKS[:-1]) + " RETURNING id"
_PG_INSERT_EVENT_OF_CURRENT = _insert_event_of_current(_PG_MARKS) + " RETURNING id"
_SQLITE_INSERT_EVENT_ID = (f"INSERT INTO access_events (id, run_id, {', '.join(EVENT_COLUMNS)}) "
                           f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 2))})")


@cache
def _sqlite_time(dialect: sa.Dialect) -> Callable[[Any], Any]:
    """How SQLAlchemy stores a DateTime in SQLite (text), for values bound through the driver."""
    return access_events.c.event_time.type.dialect_impl(dialect).bind_processor(dialect)


class QueryStopped(DatabaseError):
    """An audit query stopped by its time limit."""


@contextmanager
def _stoppable(driver: sqlite3.Connection, timeout: float | None) -> Iterator[Callable[[], None]]:
    """Let Ctrl-C and ``timeout`` stop a SQLite statement: SQLite runs it in C, where Python's
    SIGINT handler waits until it ends, so a progress handler asks SQLite to stop instead. The
    block gets a function that raises ``KeyboardInterrupt`` or :class:`QueryStopped` if one did.
    A process that ignores Ctrl-C (a shell's background job) goes on ignoring it, as on PostgreSQL."""
    import signal
    import threading
    import time

    deadline = time.monotonic() + timeout if timeout else None
    interrupted = []
    handler = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))

    def progress() -> int:
        return 1 if interrupted or (deadline is not None and time.monotonic() > deadline) else 0

    def stopped() -> None:
        if interrupted:
            raise KeyboardInterrupt
        if deadline is not None and time.monotonic() > deadline:
            raise QueryStopped(f"the query was stopped after {timeout:g} s (--timeout)")

    driver.set_progress_handler(progress, 20_000)
    try:
        yield stopped
    finally:
        driver.set_progress_handler(None, 0)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        if interrupted:
            raise KeyboardInterrupt
