"""Dashboard logins: one row per browser session, found by the SHA-256 of its cookie's token.

Neither the token nor the API key is stored: the row keeps the token's hash and the key's hash
(as `api_keys` does), so every replica sharing the database recognises the session, and a key
revoked (or removed from API_KEYS) ends its sessions at their next request.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class DashboardSession(Base):
    __tablename__ = "dashboard_sessions"

    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.String(40), nullable=False)  # the Principal's id
    key_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)  # re-verified per request
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
