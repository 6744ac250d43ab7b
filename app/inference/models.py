"""Completions captured by the gateway: how trainable data (Choices with logprobs) is born."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin


class CapturedCompletion(TimestampMixin, Base):
    """A sampled completion tied to a game trajectory by `metadata.trajectory_id`.

    `choice` is the upstream `choices[0]` JSON with its logprobs, as ART's `Choice` expects;
    `messages` are the request messages that produced it.
    """

    __tablename__ = "captured_completions"
    __table_args__ = (sa.Index(None, "trajectory_id", "step", "created_at"),)

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
