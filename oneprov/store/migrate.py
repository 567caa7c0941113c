"""Keeping a database's schema at this oneprov's version, with Alembic.

The schema history is the files of ``migrations/versions`` (inside the wheel: ``oneprov/migrations``).
Every upgrade runs in one transaction under a setup lock, so that a migration failing half-way
leaves the previous version and several processes opening a new database at once make the schema
once. A schema made by a newer oneprov, or a database holding someone else's tables, is refused
without being touched.

>>> from oneprov.store.engine import create_engine
>>> engine = create_engine(":memory:")
>>> status = upgrade(engine)
>>> schema_status(engine).current == head_revision()
True
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine

from ..errors import DatabaseError, SchemaVersionError
from . import dialects
from .engine import Database, create_engine, database_url, redact, sqlite_path
from .records import span_problems
from .schema import dataset_records

_log = logging.getLogger("oneprov.store")


def migrations_dir() -> Path:
    """The Alembic script folder: inside the installed package, else the repository's ``migrations/``."""
    package = Path(__file__).parent.parent
    packaged = package / "migrations"
    return packaged if packaged.is_dir() else package.parent / "migrations"


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
    migrated_from: str | None = None   # set by upgrade() when this process migrated: the version before

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
    with Database(engine).reading() as conn:
        return _status(conn)


def _refuse_unknown(status: SchemaStatus, where: str) -> None:
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
    path = sqlite_path(url)
    if path is not None and Path(path).is_file():
        probe = create_engine(url, readonly=True)
        try:
            _refuse_unknown(schema_status(probe), redact(probe.url))
        finally:
            probe.dispose()


def upgrade(engine: Engine, target: str = "head", *, script_location: str | os.PathLike | None = None) -> SchemaStatus:
    """Migrate the database to ``target`` in one transaction; refuse a newer or foreign schema.

    Cheap when nothing is to do (one read). Several processes may call it at once on a new
    database: the first does the work under the setup lock, the others then find it done.
    A migration that fails half-way leaves the database at its previous version.
    (``script_location`` replaces oneprov's migrations; the tests use it.)
    """
    db = Database(engine)
    status = schema_status(engine)
    _refuse_unknown(status, db.where)
    if target == "head" and status.up_to_date and script_location is None:
        return status
    with db.writing() as conn:
        db.dialect.lock_for_setup(conn)
        status = _status(conn)  # again, under the lock: another process may have done it
        _refuse_unknown(status, db.where)
        if target == "head" and status.up_to_date and script_location is None:
            return status      # another process migrated it meanwhile
        db.dialect.check_migration_rights(conn, status.current, status.head, db.where)
        command.upgrade(alembic_config(conn, script_location), target)
        before = status.current or "empty"
    after = dataclasses.replace(schema_status(engine), migrated_from=before)
    _log.info("%s: schema upgraded from %s to %s", db.where, before, after.current)
    return after


def downgrade(engine: Engine, target: str) -> SchemaStatus:
    """Migrate the database down to ``target`` ('base' empties it) in one transaction."""
    db = Database(engine)
    with db.writing() as conn:
        db.dialect.lock_for_setup(conn)
        _refuse_unknown(_status(conn), db.where)
        command.downgrade(alembic_config(conn), target)
    return schema_status(engine)


def check(db: str | os.PathLike | URL | None) -> list[str]:
    """Problems with a database, read-only: schema version, integrity and foreign keys (SQLite), the
    spans of the records each query returned."""
    database = Database(create_engine(db, readonly=True))
    problems = []
    try:
        try:
            status = schema_status(database.engine)
        except DatabaseError as exc:
            if "damaged" not in str(exc):
                raise
            return [str(exc)]
        if not status.known:
            problems.append(f"schema {status.current} is newer than this oneprov ({status.head})")
        elif not status.up_to_date:
            problems.append(f"schema {status.current or 'empty'} is behind {status.head}: run `oneprov db upgrade`")
        with database.reading() as conn:
            problems.extend(database.dialect.integrity_problems(conn))
            if status.up_to_date:
                problems.extend(span_problems(conn))
                problems.extend(f"{kind} {name} is missing: a first import is running, or was stopped (the next "
                                "import adds it)" for kind, names in (("index", missing_indexes(conn)),
                                                                      ("foreign key", missing_foreign_keys(conn)))
                                for name in names)
    finally:
        database.close()
    return problems


#: The dataset records' secondary indexes, which a first import builds after the rows (see ``ingest.py``) ...
BULK_INDEXES = sorted(dataset_records.indexes, key=lambda index: index.name)
#: ... and their foreign keys, which it adds after the rows where the dialect says so.
BULK_FOREIGN_KEYS = sorted(dataset_records.foreign_key_constraints, key=lambda key: str(key.name))


def missing_indexes(conn: Connection) -> list[str]:
    """The dataset records' secondary indexes that are missing: while a first import runs, or after
    one was killed (the next import builds them)."""
    present = {i["name"] for i in sa.inspect(conn).get_indexes(dataset_records.name)}
    return [index.name for index in BULK_INDEXES if index.name not in present]


def missing_foreign_keys(conn: Connection) -> list[str]:
    """The same for the dataset records' foreign keys (on a back end whose first import drops them)."""
    if not dialects.of(conn).bulk_drops_foreign_keys:
        return []
    present = {key["name"] for key in sa.inspect(conn).get_foreign_keys(dataset_records.name)}
    return [str(key.name) for key in BULK_FOREIGN_KEYS if key.name not in present]


def lock_for_setup(conn: Connection) -> None:
    """Serialise first-time setup and migrations between processes, inside ``conn``'s transaction
    (``migrations/env.py`` calls it when Alembic runs from the command line)."""
    dialects.of(conn).lock_for_setup(conn)
