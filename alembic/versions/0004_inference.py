"""inference: gateway request log

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_requests",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("created_at", app.db.UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("route", sa.String(length=32), nullable=False),
        sa.Column("model_requested", sa.String(length=500), nullable=True),
        sa.Column("model_served", sa.String(length=500), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("overhead_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("trajectory_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("gateway_requests_pkey")),
    )
    # "this key's requests over time" (the query that hurt LiteLLM's spend log without it)
    op.create_index(
        op.f("ix_gateway_requests_key_id_gateway_requests_created_at"),
        "gateway_requests",
        ["key_id", "created_at"],
        unique=False,
    )
    # the retention sweep deletes the oldest rows by created_at
    op.create_index(op.f("ix_gateway_requests_created_at"), "gateway_requests", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_gateway_requests_created_at"), table_name="gateway_requests")
    op.drop_index(
        op.f("ix_gateway_requests_key_id_gateway_requests_created_at"), table_name="gateway_requests"
    )
    op.drop_table("gateway_requests")
