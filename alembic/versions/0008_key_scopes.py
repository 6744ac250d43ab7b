"""key scopes: scopes, model patterns, limits and expiry on api_keys; per-minute rate windows

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        # existing keys keep the full access they had
        batch.add_column(
            sa.Column(
                "scopes", sa.String(length=100), server_default="admin,inference,training", nullable=False
            )
        )
        batch.add_column(
            sa.Column("models", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("expires_at", app.db.UTCDateTime(), nullable=True))
    op.create_table(
        "api_key_rate_windows",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("window", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("requests_granted", sa.BigInteger(), nullable=False),
        sa.Column("tokens_granted", sa.BigInteger(), nullable=False),
        sa.Column("last_requests_grant", sa.BigInteger(), nullable=False),
        sa.Column("last_tokens_grant", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("api_key_rate_windows_key_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", "window", name=op.f("api_key_rate_windows_pkey")),
    )


def downgrade() -> None:
    op.drop_table("api_key_rate_windows")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("tpm")
        batch.drop_column("rpm")
        batch.drop_column("models")
        batch.drop_column("scopes")
