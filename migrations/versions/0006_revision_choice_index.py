"""datasets: one index for the revision choice, replacing ix_datasets_session_id_collection_name.

``ix_datasets_revision_choice`` on ``(session_id, collection, name, revision, qc, default_revision)``
holds everything the revision choice reads (``oneprov.revisions``): SQLite groups each dataset's
revisions along it and picks the chosen row without reading the table, for one session or all of
them. Its first columns are the old index's, so lookups by session (and collection, name) use it
as they used the old one, which it replaces.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NEW = ("ix_datasets_revision_choice", ["session_id", "collection", "name", "revision", "qc", "default_revision"])
OLD = ("ix_datasets_session_id_collection_name", ["session_id", "collection", "name"])


# Plain CREATE / DROP INDEX on both back ends: no table rebuild (which would drop the triggers of 0003).
def upgrade() -> None:
    op.create_index(NEW[0], "datasets", NEW[1])
    op.drop_index(OLD[0], table_name="datasets")


def downgrade() -> None:
    op.create_index(OLD[0], "datasets", OLD[1])
    op.drop_index(NEW[0], table_name="datasets")
