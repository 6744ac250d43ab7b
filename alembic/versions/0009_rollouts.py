"""rollouts: reward-gated rollouts and their events; webhooks about rollouts; a job's rollout option

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("candidate_checkpoint_id", sa.String(length=40), nullable=False),
        sa.Column("baseline_checkpoint_id", sa.String(length=40), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("min_trajectories", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("max_duration_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("webhook_urls", app.db.JSONType, nullable=True),
        sa.Column("stats", app.db.JSONType, nullable=True),
        sa.Column("score_dataset_id", sa.String(length=40), nullable=True),
        sa.Column("evaluated_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("expires_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["baseline_checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("rollouts_baseline_checkpoint_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["candidate_checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("rollouts_candidate_checkpoint_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["served_models.id"], name=op.f("rollouts_model_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("rollouts_pkey")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rollouts_model_id_rollouts_created_at"), ["model_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_rollouts_state"), ["state"], unique=False)
        batch_op.create_index(
            "ix_rollouts_running_alias",
            ["model_id", "alias"],
            unique=True,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        )

    op.create_table(
        "rollout_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", app.db.JSONType, nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("rollout_events_rollout_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("rollout_events_pkey")),
    )
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rollout_events_rollout_id_rollout_events_created_at"),
            ["rollout_id", "created_at"],
            unique=False,
        )

    op.create_index(
        "ix_captured_completions_served_created",
        "captured_completions",
        ["upstream_model", "created_at"],
        unique=False,
    )
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout", app.db.JSONType, nullable=True))

    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout_id", sa.String(length=40), nullable=True))
        batch_op.alter_column("job_id", existing_type=sa.VARCHAR(length=40), nullable=True)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_rollout_id"), ["rollout_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("webhook_deliveries_rollout_id_fkey"),
            "rollouts",
            ["rollout_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    # deliveries about rollouts alone have no job: they go with the rollouts
    op.execute("DELETE FROM webhook_deliveries WHERE job_id IS NULL")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("webhook_deliveries_rollout_id_fkey"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_rollout_id"))
        batch_op.alter_column("job_id", existing_type=sa.VARCHAR(length=40), nullable=False)
        batch_op.drop_column("rollout_id")

    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("rollout")
    op.drop_index(
        "ix_captured_completions_served_created",
        table_name="captured_completions",
    )

    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_events_rollout_id_rollout_events_created_at"))

    op.drop_table("rollout_events")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_rollouts_running_alias",
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        )
        batch_op.drop_index(batch_op.f("ix_rollouts_state"))
        batch_op.drop_index(batch_op.f("ix_rollouts_model_id_rollouts_created_at"))

    op.drop_table("rollouts")
