"""access_events.listed: whether a load counts in the run's loaded-ids list (ONE's record_loaded).

Every load attempt is recorded whatever ``record_loaded`` says; ``listed`` keeps ONE's meaning of
the switch for ``save_loaded_ids``. Rows written before this column existed count as listed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, not a batch copy: SQLite cannot rebuild a table that views depend on, and
# ADD COLUMN with a constant default / DROP COLUMN (SQLite >= 3.35) need no rebuild.
def upgrade() -> None:
    op.add_column("access_events", sa.Column("listed", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    op.drop_column("access_events", "listed")
