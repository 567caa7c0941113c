"""History is append-only: the database itself refuses to change or delete a recorded row.

- ``access_events``, ``dataset_history``, ``query_sessions``, ``query_datasets``, ``run_marks`` and
  ``exports``: no UPDATE, no DELETE (and no TRUNCATE on PostgreSQL).
- ``queries``: no DELETE. The totals that an import fills in when it is done (``n_sessions``,
  ``n_datasets``, ``duration_s``, ``error``; see ``Store.import_cache``) can be set once, while
  they are NULL; no other column ever changes.
- ``runs``, ``sessions``, ``datasets`` are current state: updated in place, never deleted.

SQLite: ``BEFORE UPDATE`` / ``BEFORE DELETE`` triggers that ``RAISE(ABORT, ...)``, and ``BEFORE
INSERT`` triggers that refuse a row whose key exists: SQLite's ``INSERT OR REPLACE`` deletes the old
row without firing DELETE triggers (unless ``PRAGMA recursive_triggers``), so it would otherwise
overwrite history. (A plain duplicate INSERT fails either way; ``INSERT OR IGNORE`` of a duplicate
into these tables fails too, instead of doing nothing.)

PostgreSQL: trigger functions that raise SQLSTATE 23001 (``restrict_violation``), so that a refused
statement is an ``IntegrityError`` on both back ends. On a shared PostgreSQL the privileges of
``oneprov db grant`` keep clients from UPDATE and DELETE on the history in the first place; the
triggers also hold for the owner (who can drop them: they guard against mistakes, not the owner).

A later migration that rebuilds one of these tables on SQLite (a batch "move and copy") drops its
triggers with the old table and must create them again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Only ever appended to: no UPDATE, no DELETE.
APPEND_ONLY = ["access_events", "dataset_history", "query_sessions", "query_datasets", "run_marks", "exports"]
#: Updated in place, never deleted (``queries`` has its own UPDATE rule besides).
NO_DELETE = ["runs", "sessions", "datasets", "queries"]
#: SQLite: the primary key of every table whose rows never change, to refuse INSERT OR REPLACE.
KEYS = {
    "access_events": ["id"],
    "dataset_history": ["id"],
    "query_sessions": ["query_id", "session_id"],
    "query_datasets": ["query_id", "dataset_id"],
    "run_marks": ["id"],
    "exports": ["id"],
    "queries": ["id"],
}


# -- SQLite -------------------------------------------------------------------------------------

# The same rule as on PostgreSQL: compare values, so that ``SET rowid = ...`` (which an ``UPDATE OF
# id`` trigger would not see) is caught too.
SQLITE_QUERIES_UPDATE = """
    CREATE TRIGGER oneprov_queries_update BEFORE UPDATE ON queries
    WHEN NEW.id IS NOT OLD.id OR NEW.run_id IS NOT OLD.run_id OR NEW.method IS NOT OLD.method
      OR NEW.params IS NOT OLD.params OR NEW.source IS NOT OLD.source OR NEW.checksum IS NOT OLD.checksum
      OR NEW.mode IS NOT OLD.mode OR NEW.revision_cutoff IS NOT OLD.revision_cutoff
      OR NEW.scope IS NOT OLD.scope OR NEW.started_at IS NOT OLD.started_at
      OR (OLD.n_sessions IS NOT NULL AND NEW.n_sessions IS NOT OLD.n_sessions)
      OR (OLD.n_datasets IS NOT NULL AND NEW.n_datasets IS NOT OLD.n_datasets)
      OR (OLD.duration_s IS NOT NULL AND NEW.duration_s IS NOT OLD.duration_s)
      OR (OLD.error IS NOT NULL AND NEW.error IS NOT OLD.error)
    BEGIN
        SELECT RAISE(ABORT, 'oneprov: queries is append-only (only n_sessions, n_datasets, duration_s and error can be filled in, once)');
    END"""


def sqlite_upgrade() -> None:
    for table in APPEND_ONLY:
        op.execute(f"""CREATE TRIGGER oneprov_{table}_no_update BEFORE UPDATE ON {table}
                       BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
        op.execute(f"""CREATE TRIGGER oneprov_{table}_no_delete BEFORE DELETE ON {table}
                       BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    for table in NO_DELETE:
        op.execute(f"""CREATE TRIGGER oneprov_{table}_no_delete BEFORE DELETE ON {table}
                       BEGIN SELECT RAISE(ABORT, 'oneprov: {table} rows are never deleted'); END""")
    op.execute(SQLITE_QUERIES_UPDATE)
    for table, key in KEYS.items():
        same_key = " AND ".join(f"{column} = NEW.{column}" for column in key)
        op.execute(f"""CREATE TRIGGER oneprov_{table}_no_replace BEFORE INSERT ON {table}
                       WHEN EXISTS (SELECT 1 FROM {table} WHERE {same_key})
                       BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only (a row with this key exists)'); END""")


def sqlite_downgrade() -> None:
    for table in KEYS:
        op.execute(f"DROP TRIGGER oneprov_{table}_no_replace")
    op.execute("DROP TRIGGER oneprov_queries_update")
    for table in NO_DELETE:
        op.execute(f"DROP TRIGGER oneprov_{table}_no_delete")
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER oneprov_{table}_no_delete")
        op.execute(f"DROP TRIGGER oneprov_{table}_no_update")


# -- PostgreSQL ---------------------------------------------------------------------------------

PG_FUNCTIONS = [
    """CREATE FUNCTION oneprov_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           RAISE EXCEPTION 'oneprov: % is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
       END $$""",
    """CREATE FUNCTION oneprov_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           RAISE EXCEPTION 'oneprov: % rows are never deleted', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
       END $$""",
    """CREATE FUNCTION oneprov_queries_update() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           IF (NEW.id, NEW.run_id, NEW.method, NEW.params, NEW.source, NEW.checksum, NEW.mode,
               NEW.revision_cutoff, NEW.scope, NEW.started_at)
              IS DISTINCT FROM
              (OLD.id, OLD.run_id, OLD.method, OLD.params, OLD.source, OLD.checksum, OLD.mode,
               OLD.revision_cutoff, OLD.scope, OLD.started_at)
              OR (OLD.n_sessions IS NOT NULL AND NEW.n_sessions IS DISTINCT FROM OLD.n_sessions)
              OR (OLD.n_datasets IS NOT NULL AND NEW.n_datasets IS DISTINCT FROM OLD.n_datasets)
              OR (OLD.duration_s IS NOT NULL AND NEW.duration_s IS DISTINCT FROM OLD.duration_s)
              OR (OLD.error IS NOT NULL AND NEW.error IS DISTINCT FROM OLD.error)
           THEN
               RAISE EXCEPTION 'oneprov: queries is append-only (only n_sessions, n_datasets, duration_s and error can be filled in, once)'
                   USING ERRCODE = 'restrict_violation';
           END IF;
           RETURN NEW;
       END $$""",
]


def pg_upgrade() -> None:
    for statement in PG_FUNCTIONS:
        op.execute(statement)
    # Statement-level: they fire for TRUNCATE too, even when no row matches, and for every
    # INSERT ... ON CONFLICT DO UPDATE (so no upsert into the history, conflict or not).
    for table in APPEND_ONLY:
        op.execute(f"""CREATE TRIGGER oneprov_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
                       FOR EACH STATEMENT EXECUTE FUNCTION oneprov_append_only()""")
    for table in NO_DELETE:
        op.execute(f"""CREATE TRIGGER oneprov_no_delete BEFORE DELETE OR TRUNCATE ON {table}
                       FOR EACH STATEMENT EXECUTE FUNCTION oneprov_no_delete()""")
    op.execute("""CREATE TRIGGER oneprov_queries_update BEFORE UPDATE ON queries
                  FOR EACH ROW EXECUTE FUNCTION oneprov_queries_update()""")


def pg_downgrade() -> None:
    op.execute("DROP TRIGGER oneprov_queries_update ON queries")
    for table in NO_DELETE:
        op.execute(f"DROP TRIGGER oneprov_no_delete ON {table}")
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER oneprov_append_only ON {table}")
    op.execute("DROP FUNCTION oneprov_queries_update()")
    op.execute("DROP FUNCTION oneprov_no_delete()")
    op.execute("DROP FUNCTION oneprov_append_only()")


# -- the migration ------------------------------------------------------------------------------


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        pg_upgrade()
    else:
        sqlite_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        pg_downgrade()
    else:
        sqlite_downgrade()
