"""Datasets: frozen snapshots of GRPO groups, so a job trains exactly what was built."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin, UTCDateTime
from app.errors import StoredError


class DatasetStatus(StrEnum):
    """A build's progress. Stored as a string column: a new status needs no ALTER TYPE."""

    QUEUED = "queued"
    BUILDING = "building"
    READY = "ready"  # the only status whose groups jobs read
    FAILED = "failed"  # `error` says why


class Dataset(TimestampMixin, Base):
    __tablename__ = "datasets"
    __table_args__ = (sa.Index(None, "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # ds-…
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, index=True)  # DatasetStatus
    # a trajectory source's name (app/datasets/sources.py: pushed, a game's) or file (an upload)
    source: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    # what was asked: window ids or time range, scorer, group limits
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # rows read/used/ignored/rejected by reason, groups kept/dropped by reason, reward stats, …
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # {code, message, param} when status = failed
    error: Mapped[StoredError | None] = mapped_column(JSONType, nullable=True)
    group_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    trajectory_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    # assistant turns that are Choice objects with logprobs: what ART can actually train
    trainable_turns: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # refreshed by the builder while it works: a build whose heartbeat is stale was interrupted
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DatasetGroup(Base):
    """One GRPO group: trajectories that share a scenario (a Babylon window), ready for ART."""

    __tablename__ = "dataset_groups"
    __table_args__ = (sa.UniqueConstraint("dataset_id", "position"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
    )
    position: Mapped[int] = mapped_column(sa.Integer, nullable=False)  # 0-based order within the dataset
    scenario_id: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    rewards: Mapped[list[float]] = mapped_column(JSONType, nullable=False)
    # [art.Trajectory.model_dump(mode="json"), …]: exactly what ART sends
    trajectories: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    trainable_turns: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)


class DatasetRejection(Base):
    """A game row the builder could not use, with its reason code (listed on request)."""

    __tablename__ = "dataset_rejections"
    __table_args__ = (sa.Index(None, "dataset_id", "reason", "id"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False
    )
    trajectory_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    window_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    agent_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    reason: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    detail: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
