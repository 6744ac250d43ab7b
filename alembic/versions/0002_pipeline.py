"""pipeline: files, pushed trajectories, scores, datasets, captured completions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "captured_completions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("trajectory_id", sa.String(length=200), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=500), nullable=False),
        sa.Column("upstream_model", sa.String(length=500), nullable=False),
        sa.Column("messages", app.db.JSONType, nullable=False),
        sa.Column("tools", app.db.JSONType, nullable=True),
        sa.Column("choice", app.db.JSONType, nullable=False),
        sa.Column("usage", app.db.JSONType, nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("captured_completions_pkey")),
    )
    op.create_index(
        op.f(
            "ix_captured_completions_trajectory_id_captured_completions_step_captured_completions_created_at"
        ),
        "captured_completions",
        ["trajectory_id", "step", "created_at"],
        unique=False,
    )

    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("params", app.db.JSONType, nullable=False),
        sa.Column("stats", app.db.JSONType, nullable=False),
        sa.Column("error", app.db.JSONType, nullable=True),
        sa.Column("group_count", sa.Integer(), nullable=False),
        sa.Column("trajectory_count", sa.Integer(), nullable=False),
        sa.Column("trainable_turns", sa.Integer(), nullable=False),
        sa.Column("finished_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("datasets_pkey")),
    )
    op.create_index(op.f("ix_datasets_created_at"), "datasets", ["created_at"], unique=False)
    op.create_index(op.f("ix_datasets_status"), "datasets", ["status"], unique=False)

    op.create_table(
        "dataset_groups",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("scenario_id", sa.String(length=200), nullable=False),
        sa.Column("rewards", app.db.JSONType, nullable=False),
        sa.Column("trajectories", app.db.JSONType, nullable=False),
        sa.Column("trainable_turns", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("dataset_groups_dataset_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("dataset_groups_pkey")),
        sa.UniqueConstraint("dataset_id", "position", name=op.f("dataset_groups_dataset_id_position_key")),
    )

    op.create_table(
        "dataset_rejections",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("trajectory_id", sa.String(length=200), nullable=True),
        sa.Column("window_id", sa.String(length=200), nullable=True),
        sa.Column("agent_id", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("dataset_rejections_dataset_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("dataset_rejections_pkey")),
    )
    op.create_index(
        op.f("ix_dataset_rejections_dataset_id_dataset_rejections_reason_dataset_rejections_id"),
        "dataset_rejections",
        ["dataset_id", "reason", "id"],
        unique=False,
    )

    op.create_table(
        "files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("files_dataset_id_fkey"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("files_pkey")),
    )
    op.create_index(op.f("ix_files_purpose"), "files", ["purpose"], unique=False)

    op.create_table(
        "pushed_trajectories",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("trajectory_id", sa.String(length=200), nullable=False),
        sa.Column("scenario_id", sa.String(length=200), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=True),
        sa.Column("reward", sa.Float(), nullable=False),
        sa.Column("trajectory", app.db.JSONType, nullable=False),
        sa.Column("trainable_turns", sa.Integer(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pushed_trajectories_pkey")),
        sa.UniqueConstraint("trajectory_id", name=op.f("pushed_trajectories_trajectory_id_key")),
    )
    op.create_index(
        op.f("ix_pushed_trajectories_scenario_id_pushed_trajectories_created_at"),
        "pushed_trajectories",
        ["scenario_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "trajectory_scores",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("trajectory_id", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("window_id", sa.String(length=200), nullable=True),
        sa.Column("agent_id", sa.String(length=200), nullable=True),
        sa.Column("scorer", sa.String(length=64), nullable=False),
        sa.Column("scorer_version", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("components", app.db.JSONType, nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=True),
        sa.Column("dataset_id", sa.String(length=40), nullable=True),
        sa.Column("updated_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("trajectory_scores_pkey")),
        sa.UniqueConstraint(
            "trajectory_id",
            "scorer",
            "scorer_version",
            name=op.f("trajectory_scores_trajectory_id_scorer_scorer_version_key"),
        ),
    )
    op.create_index(op.f("ix_trajectory_scores_agent_id"), "trajectory_scores", ["agent_id"], unique=False)
    op.create_index(
        op.f("ix_trajectory_scores_window_id_trajectory_scores_agent_id"),
        "trajectory_scores",
        ["window_id", "agent_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("trajectory_scores")
    op.drop_table("pushed_trajectories")
    op.drop_table("files")
    op.drop_table("dataset_rejections")
    op.drop_table("dataset_groups")
    op.drop_table("datasets")
    op.drop_table("captured_completions")
