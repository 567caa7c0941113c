"""Roles on a shared PostgreSQL database: the owner, clients and auditors.

- The **owner** owns the tables: it runs the migrations (``oneprov db upgrade``) and
  :func:`grant`. Nothing else needs its password.
- A **client** (an analysis, ``oneprov.ONE``, ``oneprov import-cache``) reads everything, inserts
  into every table, updates a run it started while it runs (``status``, ``finished_at``, ``error``)
  and the totals an import fills in on ``queries``, and creates temporary tables (imports stage
  their rows in them). No DDL, no DELETE, no TRUNCATE, no other UPDATE: session and dataset
  records, query links, events, marks and exports are history. (The database's triggers add
  that a finished run never changes and that only the role that started a run records into it.)
- An **auditor** only reads: SELECT on the tables and the views.

Both kinds read ``alembic_version`` (to check the schema version when they connect) and nothing
lets them change it: a database at an older schema must be upgraded by the owner.

Creating roles (``CREATE ROLE alice LOGIN PASSWORD ...``) is the database administrator's job;
:func:`grant` only gives an existing role its privileges, replacing whatever it had on oneprov's
tables, so running it again (after an upgrade that added a table, or to change a role's kind) is
safe. Every name is quoted as an identifier; nothing the user types is formatted into SQL.

>>> sorted(CLIENT_UPDATE)
['queries', 'runs']
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from ..errors import BadInputError, DatabaseError
from .engine import create_engine, database_url, mapped_errors, redact
from .migrate import schema_status
from .schema import CURRENT_VIEWS, LINK_VIEWS, PUBLIC_VIEWS, metadata

KINDS = ("client", "auditor")

#: Tables a client may UPDATE, and which columns (``None``: the whole row; current state).
#: Every other table is append-only for clients: SELECT and INSERT.
CLIENT_UPDATE: dict[str, list[str] | None] = {
    "runs": ["status", "finished_at", "error"],                                        # Store.finish_run
    "queries": ["n_sessions", "n_datasets", "duration_s", "error", "completed_at"],    # Store.import_cache
}

#: The error on SQLite (``{where}``: the file).
NOT_POSTGRESQL = ("roles are a PostgreSQL feature; {where} is a SQLite file, whose readers and writers are whoever "
                  "the file system lets open it (`oneprov sql` opens it read-only)")

#: Table privileges that no client or auditor ever holds, checked after granting.
NEVER = ("DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@dataclass
class GrantResult:
    """What :func:`grant` did: the statements it ran (or would run), and any warnings."""

    role: str
    kind: str
    statements: list[str]
    warnings: list[str] = field(default_factory=list)
    where: str = ""             # the database, as messages name it


def grant(db: Engine | str | os.PathLike | URL | None, role: str, kind: str, *, dry_run: bool = False) -> GrantResult:
    """Give the existing PostgreSQL ``role`` exactly the privileges of a ``kind`` ('client' or 'auditor').

    ``db`` is an engine, or a URL (default ``$ONEPROV_DB``) for which an engine is made and
    disposed of; a SQLite path is refused before anything could create a file.

    Run as the owner of the tables, on a database at this oneprov's schema version. Revokes the
    role's privileges on oneprov's tables, views and sequences first, then grants, in one
    transaction; finally checks the role's effective rights and returns as warnings what differs
    from its kind: more (through PUBLIC or another role's membership) or less (CONNECT or TEMPORARY
    on the database, USAGE on the schema, when their owner is not the tables' owner). With
    ``dry_run`` everything is checked but nothing is changed.
    """
    if kind not in KINDS:
        raise BadInputError(f"unknown role kind {kind!r}: expected 'client' or 'auditor'")
    if isinstance(db, Engine):
        return _grant(db, role, kind, dry_run)
    url = database_url(db)
    if url.get_backend_name() != "postgresql":
        raise DatabaseError(NOT_POSTGRESQL.format(where=redact(url)))
    engine = create_engine(url)
    try:
        return _grant(engine, role, kind, dry_run)
    finally:
        engine.dispose()


def _grant(engine: Engine, role: str, kind: str, dry_run: bool) -> GrantResult:
    if engine.dialect.name != "postgresql":
        raise DatabaseError(NOT_POSTGRESQL.format(where=redact(engine.url)))
    if not role:
        raise BadInputError("no role given")
    status = schema_status(engine)
    if not status.known:
        raise DatabaseError(f"database {redact(engine.url)} has schema version {status.current}, newer "
                            f"than this oneprov knows ({status.head}): grant with the newer oneprov")
    if not status.up_to_date:
        raise DatabaseError(f"database {redact(engine.url)} is at schema version {status.current or 'empty'}, "
                            f"not {status.head}: run `oneprov db upgrade` (as the owner) before granting")
    where = redact(engine.url)
    with mapped_errors(where), engine.connect() as conn:
        schema, dbname = _check_roles(conn, role, engine)
        statements = _statements(conn, role, kind, schema, dbname)
        driver = conn.connection.driver_connection    # psycopg, inside this connection's transaction
        warnings = []
        if dry_run:
            conn.rollback()
        else:
            with mapped_errors(where, "grant on"), driver.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)     # no parameters: sent exactly as composed
            warnings = _effective(conn, role, kind, schema, dbname)
            conn.commit()
        text = [statement.as_string(driver) + ";" for statement in statements]
    return GrantResult(role, kind, text, warnings, where)


def _check_roles(conn: Connection, role: str, engine: Engine) -> tuple[str, str]:
    """The schema and database names; refuse when :func:`grant` cannot do its job."""
    where = redact(engine.url)
    here = conn.execute(sa.text(
        "SELECT current_schema() AS schema, current_database() AS dbname, current_user AS me, t.tableowner AS owner, "
        "pg_has_role(current_user, t.tableowner, 'USAGE') AS am_owner "
        "FROM pg_tables t WHERE t.schemaname = current_schema() AND t.tablename = 'alembic_version'")).first()
    if here is None:
        raise DatabaseError(f"oneprov's tables are not in the first schema of the search path of {where}")
    if not here.am_owner:
        raise DatabaseError(f"oneprov's tables in {where} belong to role {here.owner!r}: run `oneprov db grant` "
                            f"as that role (this connection is role {here.me!r})")
    target = conn.execute(sa.text(
        "SELECT r.rolsuper, pg_has_role(r.oid, CAST(:owner AS name), 'USAGE') AS has_owner_rights "
        "FROM pg_roles r WHERE r.rolname = :role"), {"role": role, "owner": here.owner}).first()
    if target is None:
        raise DatabaseError(f"role {role!r} does not exist on the server of {where}: creating roles is the database "
                            f"administrator's job (CREATE ROLE ... LOGIN PASSWORD '...'); "
                            "then run `oneprov db grant` again")
    if target.rolsuper or target.has_owner_rights:
        what = "a superuser" if target.rolsuper else f"the owner {here.owner!r} or a member of it"
        raise DatabaseError(f"role {role!r} is {what}: privileges cannot limit it. Use a role of its own "
                            "for each client or auditor")
    return here.schema, here.dbname


def _statements(conn: Connection, role: str, kind: str, schema: str, dbname: str) -> list:
    """The REVOKE and GRANT statements, as psycopg ``sql.Composed``: every name an ``Identifier``."""
    from psycopg.sql import SQL, Identifier

    def names(items):
        return SQL(", ").join(items)

    r = Identifier(role)
    tables = [Identifier(schema, t) for t in sorted(metadata.tables)]
    readable = [*tables, *(Identifier(schema, v) for v in [*PUBLIC_VIEWS, *CURRENT_VIEWS, *LINK_VIEWS]),
                Identifier(schema, "alembic_version")]
    sequences = [Identifier(s, n) for s, n in _sequences(conn, schema)]
    statements = [SQL("REVOKE ALL ON TABLE {} FROM {}").format(names(readable), r)]
    if sequences:
        statements.append(SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(names(sequences), r))
    if kind == "client":
        statements.append(SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(Identifier(dbname), r))
    else:
        statements.append(SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(Identifier(dbname), r))
        statements.append(SQL("GRANT CONNECT ON DATABASE {} TO {}").format(Identifier(dbname), r))
    statements.append(SQL("GRANT USAGE ON SCHEMA {} TO {}").format(Identifier(schema), r))
    statements.append(SQL("GRANT SELECT ON TABLE {} TO {}").format(names(readable), r))
    if kind == "client":
        statements.append(SQL("GRANT INSERT ON TABLE {} TO {}").format(names(tables), r))
        for table, columns in CLIENT_UPDATE.items():
            if columns is None:
                statements.append(SQL("GRANT UPDATE ON TABLE {} TO {}").format(Identifier(schema, table), r))
            else:
                statements.append(SQL("GRANT UPDATE ({}) ON TABLE {} TO {}").format(
                    names(Identifier(c) for c in columns), Identifier(schema, table), r))
        if sequences:
            statements.append(SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(names(sequences), r))
    return statements


def _sequences(conn: Connection, schema: str) -> list[tuple[str, str]]:
    """The sequences behind oneprov's SERIAL / identity columns, as (schema, name)."""
    rows = conn.execute(sa.text(
        "SELECT DISTINCT sn.nspname, s.relname "
        "FROM pg_depend d "
        "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_namespace sn ON sn.oid = s.relnamespace "
        "JOIN pg_class t ON t.oid = d.refobjid "
        "JOIN pg_namespace tn ON tn.oid = t.relnamespace "
        "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND d.deptype IN ('a', 'i') AND tn.nspname = :schema AND t.relname IN :tables "
        "ORDER BY 1, 2").bindparams(sa.bindparam("tables", expanding=True)),
        {"schema": schema, "tables": sorted(metadata.tables)}).all()
    return [(row[0], row[1]) for row in rows]


def _effective(conn: Connection, role: str, kind: str, schema: str, dbname: str) -> list[str]:
    """Warnings about what ``role`` can effectively do, once granted, that differs from its kind.

    More: rights held through PUBLIC or through roles it belongs to. Less: rights on the database
    or the schema that only their owner can grant, when that is not the owner of the tables.
    """
    warnings = []
    writable = {t: {"INSERT"} | ({"UPDATE"} if CLIENT_UPDATE.get(t, []) is None else set())
                for t in metadata.tables} if kind == "client" else {}
    held = conn.execute(sa.text(
        "SELECT c.relname, p.privilege FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN unnest(CAST(:privileges AS text[])) AS p(privilege) "
        "WHERE n.nspname = :schema AND c.relname IN :names "
        "AND has_table_privilege(CAST(:role AS name), c.oid, p.privilege) "
        "ORDER BY 1, 2").bindparams(sa.bindparam("names", expanding=True)),
        {"role": role, "schema": schema, "privileges": ["INSERT", "UPDATE", *NEVER],
         "names": [*metadata.tables, *PUBLIC_VIEWS, *CURRENT_VIEWS, *LINK_VIEWS, "alembic_version"]}).all()
    extra = [f"{privilege} on {name}" for name, privilege in held if privilege not in writable.get(name, ())]
    if extra:
        warnings.append(f"role {role!r} can also {', '.join(extra)} (granted to PUBLIC or to a role it belongs "
                        "to): revoke it there")
    can = conn.execute(sa.text(
        "SELECT has_database_privilege(CAST(:role AS name), :db, 'CONNECT') AS connect, "
        "has_database_privilege(CAST(:role AS name), :db, 'TEMPORARY') AS temporary, "
        "has_database_privilege(CAST(:role AS name), :db, 'CREATE') AS create_schema, "
        "has_schema_privilege(CAST(:role AS name), :schema, 'USAGE') AS usage, "
        "has_schema_privilege(CAST(:role AS name), :schema, 'CREATE') AS create_table"),
        {"role": role, "db": dbname, "schema": schema}).one()
    needs = ["CONNECT", "TEMPORARY"] if kind == "client" else ["CONNECT"]
    lacking = [privilege for privilege in needs if not getattr(can, privilege.lower())]
    if lacking:
        warnings.append(f"role {role!r} lacks {' and '.join(lacking)} on database {dbname!r}"
                        + (" (imports need temporary tables)" if "TEMPORARY" in lacking else "")
                        + ": only the database's owner can grant it")
    if not can.usage:
        warnings.append(f"role {role!r} lacks USAGE on schema {schema!r}: only the schema's owner can grant it")
    if can.create_table:
        warnings.append(f"role {role!r} can create tables in schema {schema!r} (PostgreSQL before 15 grants that to "
                        "PUBLIC): an administrator should revoke CREATE on the schema from PUBLIC")
    if can.create_schema:
        warnings.append(f"role {role!r} can create schemas in database {dbname!r}: an administrator should revoke "
                        "CREATE on the database from it (or from PUBLIC)")
    return warnings
