"""Completions captured by the gateway: how trainable data (Choices with logprobs) is born."""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin, UTCDateTime


class CapturedCompletion(TimestampMixin, Base):
    """A sampled completion tied to a game trajectory by `metadata.trajectory_id`.

    `choice` is the upstream `choices[0]` JSON with its logprobs, as ART's `Choice` expects;
    `messages` are the request messages that produced it.
    """

    __tablename__ = "captured_completions"
    __table_args__ = (
        sa.Index(None, "trajectory_id", "step", "created_at"),
        # a rollout's evaluation reads the captures its two checkpoints served since it started
        sa.Index("ix_captured_completions_served_created", "upstream_model", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # cap-…
    trajectory_id: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    agent_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    step: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    model: Mapped[str] = mapped_column(sa.String(500), nullable=False)  # the name the caller asked for
    upstream_model: Mapped[str] = mapped_column(sa.String(500), nullable=False)  # the concrete name served
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    tools: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    choice: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float, nullable=True)


_LOG_ID_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_LOG_ID_PROCESS = secrets.randbits(8)
_log_id_counter = itertools.count(secrets.randbits(14))


def new_request_log_id() -> int:
    """A request-log id assigned before the row is spooled, so a replay inserts it once.

    Milliseconds since 2024 (41 bits, until 2093) | a random process tag (8) | a counter (14):
    ordered by time, positive in a signed 64-bit column, and two rows share an id only if two
    processes with the same tag hit the same counter value in the same millisecond."""
    ms = time.time_ns() // 1_000_000 - _LOG_ID_EPOCH_MS
    return (ms << 22) | (_LOG_ID_PROCESS << 14) | (next(_log_id_counter) & 0x3FFF)


class GatewayRequest(Base):
    """One compact row per gateway request: who, which model, outcome, cost. Never the prompt.

    Written in batches off the response path; indexed for "this key's requests over time" and
    for the retention sweep (`created_at`).
    """

    __tablename__ = "gateway_requests"
    __table_args__ = (sa.Index(None, "key_id", "created_at"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    key_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)  # None: rejected before auth
    route: Mapped[str] = mapped_column(sa.String(32), nullable=False)  # chat.completions | models
    model_requested: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    model_served: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    stream: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    status_code: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    error_code: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    latency_ms: Mapped[float] = mapped_column(sa.Float, nullable=False)
    overhead_ms: Mapped[float] = mapped_column(sa.Float, nullable=False)
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    trajectory_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
