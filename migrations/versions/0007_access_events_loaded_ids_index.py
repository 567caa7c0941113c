"""access_events: one index answers a run's loaded-ids list by itself.

``ix_access_events_run_id_dataset_id_outcome_listed_event_time`` replaces ``ix_access_events_run_id``
(its first column is the same, so every lookup by run still uses it). A run's loaded ids
(``Store.loaded_ids``, ONE's ``save_loaded_ids``) are then read from the index alone, already in
dataset order: no table row is read and nothing is sorted. Each event still updates two indexes.

Only indexes change: the table, its append-only triggers (0003) and the views that read it stay.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEX = "ix_access_events_run_id_dataset_id_outcome_listed_event_time"
COLUMNS = ["run_id", "dataset_id", "outcome", "listed", "event_time"]


def upgrade() -> None:
    op.create_index(INDEX, "access_events", COLUMNS)
    op.drop_index("ix_access_events_run_id", table_name="access_events")


def downgrade() -> None:
    op.create_index("ix_access_events_run_id", "access_events", ["run_id"])
    op.drop_index(INDEX, table_name="access_events")
