"""datasets: a covering index for searches by dataset name.

``search(datasets=NAME)`` keeps the sessions that have a dataset of that name, present, passing
QC, in the client's catalog. The index on ``(name, session_id, id, exists, qc)`` answers this with
one seek per session, without reading the datasets table (whose rows are wide); ``id`` comes before
``exists`` and ``qc`` so that the seek stops at ``(name, session_id)`` and the rest is read from the
index entry. It replaces the index on ``name`` alone, which it serves as well.

Only indexes change: no table is rebuilt (SQLite cannot rebuild a table that views depend on).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ["name", "session_id", "id", "exists", "qc"]


def upgrade() -> None:
    op.create_index("ix_datasets_name_session_id_id_exists_qc", "datasets", COLUMNS)
    op.drop_index("ix_datasets_name", table_name="datasets")


def downgrade() -> None:
    op.create_index("ix_datasets_name", "datasets", ["name"])
    op.drop_index("ix_datasets_name_session_id_id_exists_qc", table_name="datasets")
