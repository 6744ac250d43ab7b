"""files: the groups, trajectories and trainable turns of an uploaded file

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("group_count", "trajectory_count", "trainable_turns")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("files", sa.Column(name, sa.Integer(), server_default="0", nullable=False))
    # Files uploaded before this revision: their counts are their dataset's.
    for name in COLUMNS:
        op.execute(
            f"UPDATE files SET {name} = "
            f"(SELECT datasets.{name} FROM datasets WHERE datasets.id = files.dataset_id) "
            "WHERE dataset_id IS NOT NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
