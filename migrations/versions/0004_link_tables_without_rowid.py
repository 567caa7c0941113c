"""SQLite: the query link tables become WITHOUT ROWID tables.

``query_sessions`` and ``query_datasets`` hold one row per session or dataset a query returned (an
import of a million datasets writes a million). As ordinary SQLite tables each row was stored twice:
once in the table, keyed by a hidden rowid, and once in the index of its primary key. Stored by
their primary key instead (``WITHOUT ROWID``), they take half the space and half the writes. Same
columns, keys and constraints; PostgreSQL has no rowid and is not changed.

SQLite cannot alter a table's storage, so each table is rebuilt (new table, copy, drop, rename);
the append-only triggers of migration 0003 go with the old table and are created again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = {
    "query_sessions": ("query_id INTEGER NOT NULL, session_id VARCHAR(36) NOT NULL", ["query_id", "session_id"]),
    "query_datasets": ("query_id INTEGER NOT NULL, dataset_id VARCHAR(36) NOT NULL, state_id INTEGER",
                       ["query_id", "dataset_id"]),
}


def _rebuild(table: str, without_rowid: bool) -> None:
    columns, key = COLUMNS[table]
    names = ", ".join(name.split()[0] for name in columns.split(", "))
    op.execute(f"""CREATE TABLE _new_{table} ({columns},
                   CONSTRAINT pk_{table} PRIMARY KEY ({", ".join(key)}),
                   CONSTRAINT fk_{table}_query_id_queries FOREIGN KEY(query_id) REFERENCES queries (id)
                   ){" WITHOUT ROWID" if without_rowid else ""}""")
    op.execute(f"INSERT INTO _new_{table} ({names}) SELECT {names} FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE _new_{table} RENAME TO {table}")
    # the triggers of migration 0003, as they were
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_update BEFORE UPDATE ON {table}
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_delete BEFORE DELETE ON {table}
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    same_key = " AND ".join(f"{column} = NEW.{column}" for column in key)
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_replace BEFORE INSERT ON {table}
                   WHEN EXISTS (SELECT 1 FROM {table} WHERE {same_key})
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only (a row with this key exists)'); END""")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in COLUMNS:
            _rebuild(table, without_rowid=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in COLUMNS:
            _rebuild(table, without_rowid=False)
