"""Schema v1: projects, runs, sessions, datasets, revisions, history, queries, access events, exports.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UUID = sa.String(36)

VIEWS = {
    # One row per load attempt.
    "access_log": """
        SELECT e.id AS event_id, e.event_time, p.name AS project, e.run_id, e.method, e.outcome,
               e.dataset_id AS dataset_uuid, COALESCE(d.session_id, e.session_id) AS session_uuid,
               COALESCE(e.rel_path, d.rel_path) AS rel_path, d.collection, d.revision,
               e.requested_revision
        FROM access_events e
        JOIN runs r ON r.id = e.run_id
        JOIN projects p ON p.id = r.project_id
        LEFT JOIN datasets d ON d.id = e.dataset_id
    """,
    # One row per dataset successfully loaded in a run.
    "loaded_datasets": """
        SELECT p.name AS project, e.run_id, e.dataset_id AS dataset_uuid,
               MIN(COALESCE(d.session_id, e.session_id)) AS session_uuid,
               MIN(COALESCE(d.rel_path, e.rel_path)) AS rel_path, MIN(d.revision) AS revision,
               MIN(e.event_time) AS first_loaded_at
        FROM access_events e
        JOIN runs r ON r.id = e.run_id
        JOIN projects p ON p.id = r.project_id
        LEFT JOIN datasets d ON d.id = e.dataset_id
        WHERE e.outcome IN ('loaded', 'download_only') AND e.dataset_id IS NOT NULL
        GROUP BY p.name, e.run_id, e.dataset_id
    """,
    "loaded_sessions": """
        SELECT DISTINCT project, run_id, session_uuid FROM loaded_datasets
    """,
}


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.UniqueConstraint("name", name="uq_projects_name"),
    )
    op.create_table(
        "runs",
        sa.Column("id", UUID, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("user_name", sa.String(200)),
        sa.Column("host", sa.String(200)),
        sa.Column("pid", sa.Integer()),
        sa.Column("command", sa.Text()),
        sa.Column("versions", sa.Text()),
        sa.Column("cache_dir", sa.Text()),
        sa.Column("base_url", sa.Text()),
        sa.Column("revision_cutoff", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name="fk_runs_project_id_projects"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_project_id", "runs", ["project_id"])
    op.create_index("ix_runs_label", "runs", ["label"])
    op.create_table(
        "sessions",
        sa.Column("id", UUID, nullable=False),
        sa.Column("lab", sa.String(200)),
        sa.Column("subject", sa.String(200)),
        sa.Column("date", sa.Date()),
        sa.Column("number", sa.Integer()),
        sa.Column("task_protocol", sa.Text()),
        sa.Column("projects", sa.Text()),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_subject", "sessions", ["subject"])
    op.create_table(
        "datasets",
        sa.Column("id", UUID, nullable=False),
        sa.Column("session_id", UUID, nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("collection", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(200), nullable=False),
        sa.Column("name", sa.String(400), nullable=False),
        sa.Column("file_size", sa.BigInteger()),
        sa.Column("hash", sa.String(128)),
        sa.Column("exists", sa.Boolean(), nullable=False),
        sa.Column("qc", sa.String(8), nullable=False),
        sa.Column("default_revision", sa.Boolean()),
        sa.Column("state_id", sa.Integer()),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_index("ix_datasets_name", "datasets", ["name"])
    op.create_index("ix_datasets_session_id_collection_name", "datasets",
                    ["session_id", "collection", "name"])
    op.create_table(
        "revisions",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_revisions"),
    )
    op.create_table(
        "queries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", UUID),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("params", sa.Text()),
        sa.Column("source", sa.Text()),
        sa.Column("checksum", sa.String(64)),
        sa.Column("mode", sa.String(16)),
        sa.Column("revision_cutoff", sa.String(64)),
        sa.Column("scope", sa.String(200)),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("duration_s", sa.Float()),
        sa.Column("n_sessions", sa.Integer()),
        sa.Column("n_datasets", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_queries_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_queries"),
    )
    op.create_index("ix_queries_run_id", "queries", ["run_id"])
    op.create_index("ix_queries_source_checksum", "queries", ["source", "checksum"])
    op.create_table(
        "dataset_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", UUID, nullable=False),
        sa.Column("query_id", sa.Integer()),
        sa.Column("observed_at", sa.DateTime(), nullable=False),
        sa.Column("qc", sa.String(8), nullable=False),
        sa.Column("default_revision", sa.Boolean()),
        sa.Column("exists", sa.Boolean(), nullable=False),
        sa.Column("hash", sa.String(128)),
        sa.Column("file_size", sa.BigInteger()),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name="fk_dataset_history_dataset_id_datasets"),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"],
                                name="fk_dataset_history_query_id_queries"),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_history"),
    )
    op.create_index("ix_dataset_history_dataset_id", "dataset_history", ["dataset_id"])
    op.create_table(
        "query_sessions",
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("session_id", UUID, nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"],
                                name="fk_query_sessions_query_id_queries"),
        sa.PrimaryKeyConstraint("query_id", "session_id", name="pk_query_sessions"),
    )
    op.create_table(
        "query_datasets",
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", UUID, nullable=False),
        sa.Column("state_id", sa.Integer()),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"],
                                name="fk_query_datasets_query_id_queries"),
        sa.PrimaryKeyConstraint("query_id", "dataset_id", name="pk_query_datasets"),
    )
    op.create_table(
        "access_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", UUID, nullable=False),
        sa.Column("event_time", sa.DateTime(), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("dataset_id", UUID),
        sa.Column("session_id", UUID),
        sa.Column("rel_path", sa.Text()),
        sa.Column("requested_revision", sa.String(200)),
        sa.Column("revision_cutoff", sa.String(64)),
        sa.Column("scope", sa.String(200)),
        sa.Column("state_id", sa.Integer()),
        sa.Column("path", sa.Text()),
        sa.Column("bytes", sa.BigInteger()),
        sa.Column("detail", sa.Text()),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_access_events_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_access_events"),
    )
    op.create_index("ix_access_events_run_id", "access_events", ["run_id"])
    op.create_index("ix_access_events_dataset_id", "access_events", ["dataset_id"])
    op.create_table(
        "run_marks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", UUID, nullable=False),
        sa.Column("marked_at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(200)),
        sa.Column("detail", sa.Text()),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_marks_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_run_marks"),
    )
    op.create_index("ix_run_marks_run_id", "run_marks", ["run_id"])
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", UUID),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("params", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_exports_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_exports"),
    )
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    for table in ("exports", "run_marks", "access_events", "query_datasets", "query_sessions",
                  "dataset_history", "queries", "revisions", "datasets", "sessions", "runs",
                  "projects"):
        op.drop_table(table)
