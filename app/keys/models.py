import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin, UTCDateTime

# Keys made before scopes existed keep the access they had (app/keys/scopes.py).
FULL_ACCESS = "admin,inference,training"


class ApiKey(TimestampMixin, Base):
    """A client key made with `training-control keys create`; only its SHA-256 is stored.

    `scopes` is the comma-joined scope names (app/keys/scopes.py); `models` the glob patterns of
    the models it may call (NULL: all); `rpm`/`tpm` its limits per minute (NULL: none)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    prefix: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scopes: Mapped[str] = mapped_column(
        sa.String(100), nullable=False, default=FULL_ACCESS, server_default=FULL_ACCESS
    )
    models: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    rpm: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RateWindow(Base):
    """How much of one key's per-minute budget the replicas have leased in one minute.

    `window` is the Unix minute (`int(time // 60)`). Each replica leases chunks with one atomic
    UPDATE … RETURNING (app/keys/ratelimit.py): `*_granted` never exceeds the key's limit, and
    `last_*_grant` is what that very statement granted (read back by RETURNING)."""

    __tablename__ = "api_key_rate_windows"

    key_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    window: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    requests_granted: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    tokens_granted: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    last_requests_grant: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    last_tokens_grant: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
