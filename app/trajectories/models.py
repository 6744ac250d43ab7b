"""Trajectories pushed over HTTP by any game (`POST /v1/trajectories`), stored in ART's shape."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin


class PushedTrajectory(TimestampMixin, Base):
    __tablename__ = "pushed_trajectories"
    __table_args__ = (sa.Index(None, "scenario_id", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # traj-…
    # the caller's metadata.trajectory_id (what chat requests carry), else the id itself
    trajectory_id: Mapped[str] = mapped_column(sa.String(200), nullable=False, unique=True)
    scenario_id: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    agent_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    reward: Mapped[float] = mapped_column(sa.Float, nullable=False)
    # art.Trajectory(...).model_dump(mode="json")
    trajectory: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    trainable_turns: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
