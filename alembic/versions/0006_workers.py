"""workers: worker registry, work items (dataset builds), upload chunks, step and checkpoint states

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("in_api", sa.Boolean(), nullable=False),
        sa.Column("has_wandb_key", sa.Boolean(), nullable=False),
        sa.Column("wandb_key_status", sa.String(length=16), nullable=False),
        sa.Column("jobs_running", sa.Integer(), nullable=False),
        sa.Column("items_running", sa.Integer(), nullable=False),
        sa.Column("max_jobs", sa.Integer(), nullable=False),
        sa.Column("metrics_port", sa.Integer(), nullable=True),
        sa.Column("started_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("stopped_at", app.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("workers_pkey")),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"], unique=False)
    op.create_table(
        "work_items",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker_id", sa.String(length=100), nullable=True),
        sa.Column("lease_expires_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", app.db.JSONType, nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", app.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("work_items_pkey")),
        sa.UniqueConstraint("kind", "subject_id", name=op.f("work_items_kind_subject_id_key")),
    )
    op.create_index("ix_work_items_status_created_at", "work_items", ["status", "created_at"], unique=False)
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"], ["files.id"], name=op.f("file_chunks_file_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("file_id", "seq", name=op.f("file_chunks_pkey")),
    )
    with op.batch_alter_table("fine_tuning_job_steps") as batch:
        batch.add_column(sa.Column("ended_at", app.db.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("started_at", app.db.UTCDateTime(), nullable=True))
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("origin", sa.String(length=16), server_default="step", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("fine_tuning_job_steps") as batch:
        batch.drop_column("started_at")
        batch.drop_column("ended_at")
    op.drop_table("file_chunks")
    op.drop_index("ix_work_items_status_created_at", table_name="work_items")
    op.drop_table("work_items")
    op.drop_index("ix_workers_heartbeat_at", table_name="workers")
    op.drop_table("workers")
