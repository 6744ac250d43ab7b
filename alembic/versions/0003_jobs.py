"""jobs: fine-tuning jobs, steps, events, webhook deliveries; model lines, checkpoints, aliases

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "served_models",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("entity", sa.String(length=200), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("remote_id", sa.String(length=100), nullable=True),
        sa.Column("fallback_to_base", sa.Boolean(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("served_models_pkey")),
        sa.UniqueConstraint("entity", "project", "name", name=op.f("served_models_entity_project_name_key")),
    )
    op.create_index(op.f("ix_served_models_name"), "served_models", ["name"], unique=False)

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("job_step", sa.Integer(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("artifact_name", sa.String(length=500), nullable=False),
        sa.Column("metrics", app.db.JSONType, nullable=False),
        sa.Column("deleted_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["served_models.id"], name=op.f("checkpoints_model_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("checkpoints_pkey")),
        sa.UniqueConstraint("artifact_name", name=op.f("checkpoints_artifact_name_key")),
        sa.UniqueConstraint("model_id", "step", name=op.f("checkpoints_model_id_step_key")),
    )
    op.create_index(op.f("ix_checkpoints_job_id"), "checkpoints", ["job_id"], unique=False)

    op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=40), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name=op.f("model_aliases_checkpoint_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["served_models.id"], name=op.f("model_aliases_model_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("model_aliases_pkey")),
        sa.UniqueConstraint("model_id", "alias", name=op.f("model_aliases_model_id_alias_key")),
    )

    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("training_file", sa.String(length=64), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("metadata", app.db.JSONType, nullable=True),
        sa.Column("hyperparameters", app.db.JSONType, nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("entity", sa.String(length=200), nullable=True),
        sa.Column("served_model_id", sa.String(length=40), nullable=True),
        sa.Column("fine_tuned_model", sa.String(length=500), nullable=True),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("completed_steps", sa.Integer(), nullable=False),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=True),
        sa.Column("error", app.db.JSONType, nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("webhook_urls", app.db.JSONType, nullable=False),
        sa.Column("babylon_batch_id", sa.String(length=200), nullable=True),
        sa.Column("handoff_status", sa.String(length=16), nullable=True),
        sa.Column("cancel_requested_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("worker_id", sa.String(length=100), nullable=True),
        sa.Column("lease_expires_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("finished_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("updated_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["served_model_id"],
            ["served_models.id"],
            name=op.f("fine_tuning_jobs_served_model_id_fkey"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("fine_tuning_jobs_pkey")),
        sa.UniqueConstraint("babylon_batch_id", name=op.f("fine_tuning_jobs_babylon_batch_id_key")),
        sa.UniqueConstraint("idempotency_key", name=op.f("fine_tuning_jobs_idempotency_key_key")),
    )
    op.create_index(
        op.f("ix_fine_tuning_jobs_created_at_id"), "fine_tuning_jobs", ["created_at", "id"], unique=False
    )
    op.create_index(op.f("ix_fine_tuning_jobs_dataset_id"), "fine_tuning_jobs", ["dataset_id"], unique=False)
    op.create_index(
        op.f("ix_fine_tuning_jobs_status_created_at"),
        "fine_tuning_jobs",
        ["status", "created_at"],
        unique=False,
    )

    op.create_table(
        "fine_tuning_job_events",
        sa.Column("seq", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", app.db.JSONType, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["fine_tuning_jobs.id"],
            name=op.f("fine_tuning_job_events_job_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("fine_tuning_job_events_pkey")),
        sa.UniqueConstraint("id", name=op.f("fine_tuning_job_events_id_key")),
    )
    op.create_index(
        op.f("ix_fine_tuning_job_events_job_id_seq"),
        "fine_tuning_job_events",
        ["job_id", "seq"],
        unique=False,
    )

    op.create_table(
        "fine_tuning_job_steps",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("group_positions", app.db.JSONType, nullable=False),
        sa.Column("base_step", sa.Integer(), nullable=True),
        sa.Column("remote_job_id", sa.String(length=100), nullable=True),
        sa.Column("last_event_id", sa.String(length=100), nullable=True),
        sa.Column("num_sequences", sa.Integer(), nullable=True),
        sa.Column("gradient_steps", sa.Integer(), nullable=False),
        sa.Column("metric_sums", app.db.JSONType, nullable=False),
        sa.Column("checkpoint_step", sa.Integer(), nullable=True),
        sa.Column("error", app.db.JSONType, nullable=True),
        sa.Column("submit_started_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("submitted_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("last_event_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("finished_at", app.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["fine_tuning_jobs.id"],
            name=op.f("fine_tuning_job_steps_job_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("fine_tuning_job_steps_pkey")),
        sa.UniqueConstraint("job_id", "number", name=op.f("fine_tuning_job_steps_job_id_number_key")),
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("payload", app.db.JSONType, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", app.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["fine_tuning_jobs.id"],
            name=op.f("webhook_deliveries_job_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("webhook_deliveries_pkey")),
    )
    op.create_index(op.f("ix_webhook_deliveries_job_id"), "webhook_deliveries", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_webhook_deliveries_status_next_attempt_at"),
        "webhook_deliveries",
        ["status", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("fine_tuning_job_steps")
    op.drop_table("fine_tuning_job_events")
    op.drop_table("fine_tuning_jobs")
    op.drop_table("model_aliases")
    op.drop_table("checkpoints")
    op.drop_table("served_models")
