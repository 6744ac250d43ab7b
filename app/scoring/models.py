"""Heuristic scores, one row per (trajectory, scorer, version), with the formula's components."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin, UTCDateTime, utcnow


class TrajectoryScore(TimestampMixin, Base):
    __tablename__ = "trajectory_scores"
    __table_args__ = (
        sa.UniqueConstraint("trajectory_id", "scorer", "scorer_version"),
        sa.Index(None, "window_id", "agent_id"),
        sa.Index(None, "agent_id"),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    trajectory_id: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    source: Mapped[str] = mapped_column(sa.String(16), nullable=False)  # babylon | pushed
    window_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    agent_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    scorer: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    scorer_version: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    score: Mapped[float] = mapped_column(sa.Float, nullable=False)
    components: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    reasoning: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # the dataset build that last computed it
    dataset_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
