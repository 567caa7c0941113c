"""Spans: the records a query returned as runs of record ids, and the digests of an import's rows.

Before, ``query_sessions`` and ``query_datasets`` held a row per record a query returned: an import
of a million dataset rows wrote a million link rows (a third of its B-trees' bytes after the records
themselves), and an import of the same tables with 1% of the rows changed wrote them all again.
Records are numbered as they are written, so the records of one query mostly follow one another:

- ``query_session_spans`` and ``query_dataset_spans`` hold ``(query_id, first_id, last_id)``: the
  query returned the records ``first_id`` to ``last_id``, each of which is a record. A whole table
  imported is one span, or a few; a refreshed table, a span per run of unchanged rows.
- ``query_sessions`` and ``query_datasets`` become views with their former columns, a row per
  record, for audit queries.
- ``query_digests``: a digest of each row an import recorded, with its record, so that the
  next import of the same tables finds the rows that changed without reading the records.

Existing links become spans (each run of consecutive linked ids of a query is one span); the way
back makes a link row of each record of each span. Digests are dropped on the way back, and an
import made before this version has none (the next import of its tables compares row by row).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: link table (a view from now on) -> its spans table, and the record table both point into
LINKS = {"query_sessions": ("query_session_spans", "session_records"),
         "query_datasets": ("query_dataset_spans", "dataset_records")}


def _append_only(table: str, key: list[str], pg: bool) -> None:
    """History: no UPDATE, no DELETE (and on SQLite no INSERT OR REPLACE), as in migration 0008."""
    if pg:   # (the function is migration 0003's)
        op.execute(f"""CREATE TRIGGER oneprov_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
                       FOR EACH STATEMENT EXECUTE FUNCTION oneprov_append_only()""")
        return
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_update BEFORE UPDATE ON {table}
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_delete BEFORE DELETE ON {table}
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    same_key = " AND ".join(f"{column} = NEW.{column}" for column in key)
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_replace BEFORE INSERT ON {table}
                   WHEN EXISTS (SELECT 1 FROM {table} WHERE {same_key})
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only (a row with this key exists)'); END""")


def _view(spans: str, records: str) -> str:
    return (f"SELECT s.query_id, r.id AS record_id FROM {spans} s "
            f"JOIN {records} r ON r.id BETWEEN s.first_id AND s.last_id")


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for link, (spans, records) in LINKS.items():
        op.create_table(
            spans,
            sa.Column("query_id", sa.Integer(), nullable=False),
            sa.Column("first_id", sa.Integer(), nullable=False),
            sa.Column("last_id", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name=f"fk_{spans}_query_id_queries"),
            sa.PrimaryKeyConstraint("query_id", "first_id", name=f"pk_{spans}"),
            sqlite_with_rowid=False,
        )
        # Each run of consecutive record ids a query links is one span ("gaps and islands": within
        # a run, the id minus its rank in the query is the same).
        op.execute(f"""INSERT INTO {spans} (query_id, first_id, last_id)
                       SELECT query_id, min(record_id), max(record_id)
                       FROM (SELECT query_id, record_id,
                                    record_id - row_number() OVER (PARTITION BY query_id ORDER BY record_id) AS island
                             FROM {link}) AS numbered
                       GROUP BY query_id, island""")
        op.drop_table(link)
        op.execute(f"CREATE VIEW {link} AS {_view(spans, records)}")
        _append_only(spans, ["query_id", "first_id"], pg)
    op.create_table(
        "query_digests",
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("records", sa.String(32), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("scheme", sa.String(32), nullable=False),
        sa.Column("record_ids", sa.LargeBinary(), nullable=False),
        sa.Column("digests", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name="fk_query_digests_query_id_queries"),
        sa.PrimaryKeyConstraint("query_id", "records", "part", name="pk_query_digests"),
    )
    _append_only("query_digests", ["query_id", "records", "part"], pg)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    op.drop_table("query_digests")
    for link, (spans, records) in LINKS.items():
        op.execute(f"DROP VIEW {link}")
        op.create_table(
            link,
            sa.Column("query_id", sa.Integer(), nullable=False),
            sa.Column("record_id", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name=f"fk_{link}_query_id_queries"),
            sa.ForeignKeyConstraint(["record_id"], [f"{records}.id"], name=f"fk_{link}_record_id_{records}"),
            sa.PrimaryKeyConstraint("query_id", "record_id", name=f"pk_{link}"),
            sqlite_with_rowid=False,
        )
        op.execute(f"INSERT INTO {link} (query_id, record_id) {_view(spans, records)} ORDER BY 1, 2")
        op.drop_table(spans)
        _append_only(link, ["query_id", "record_id"], pg)
