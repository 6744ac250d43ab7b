"""Trained model lines, their checkpoints, and aliases (latest, best, production, …).

A *model line* is one W&B Serverless RL model (ART `TrainableModel` name); training continues
from its latest checkpoint. Each checkpoint is served under its exact W&B name
`wandb-artifact:///<entity>/<project>/<name>:step<N>`.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin, UTCDateTime, utcnow


class ServedModel(TimestampMixin, Base):
    __tablename__ = "served_models"
    __table_args__ = (sa.UniqueConstraint("entity", "project", "name"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # mdl-…
    name: Mapped[str] = mapped_column(sa.String(200), nullable=False, index=True)  # W&B model name
    entity: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    project: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    base_model: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    remote_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)  # W&B model UUID
    # serve the base model when a requested checkpoint is gone upstream (off by default)
    fallback_to_base: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)


class CheckpointOrigin(StrEnum):
    """Where a checkpoint came from. Only `step` checkpoints become `latest`, `best` or a job's
    model; the others are listed and kept (retention never deletes them) but never aliased."""

    STEP = "step"  # the checkpoint of a step the service followed to its end
    # W&B finished a step after the service had cancelled or abandoned it (job_id/job_step say which)
    LATE = "late"
    EXTERNAL = "external"  # found on the model line, produced by nothing this service sent


class Checkpoint(TimestampMixin, Base):
    __tablename__ = "checkpoints"
    __table_args__ = (sa.UniqueConstraint("model_id", "step"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # ftckpt-…
    model_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("served_models.id", ondelete="CASCADE"), nullable=False
    )
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True, index=True)
    job_step: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)  # 1-based step of that job
    step: Mapped[int] = mapped_column(sa.Integer, nullable=False)  # the W&B checkpoint step
    artifact_name: Mapped[str] = mapped_column(sa.String(500), nullable=False, unique=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    origin: Mapped[str] = mapped_column(
        sa.String(16),
        nullable=False,
        default=CheckpointOrigin.STEP,
        server_default=CheckpointOrigin.STEP.value,
    )


class ModelAlias(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (sa.UniqueConstraint("model_id", "alias"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("served_models.id", ondelete="CASCADE"), nullable=False
    )
    alias: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    checkpoint_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"), nullable=False
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow
    )


class AliasEvent(Base):
    """One alias move (or creation): what it pointed at before and after, and who moved it.

    `actor` is the API key id of an operator's move (the API or the dashboard), None for the
    registry's own policy (`latest`/`best` after each step)."""

    __tablename__ = "model_alias_events"
    __table_args__ = (sa.Index("ix_model_alias_events_model_id_id", "model_id", "id"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    model_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("served_models.id", ondelete="CASCADE"), nullable=False
    )
    alias: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    # plain ids, not foreign keys: the history outlives checkpoints that retention removes
    checkpoint_id: Mapped[str] = mapped_column(sa.String(40), nullable=False)
    previous_checkpoint_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    actor: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class RolloutState(StrEnum):
    """`rollouts.state`: one `running` rollout per alias; the others are final."""

    RUNNING = "running"
    PROMOTED = "promoted"  # the alias moved to the candidate
    ROLLED_BACK = "rolled_back"  # the alias stays; the candidate lost
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # max_duration passed without a decision


class Rollout(TimestampMixin, Base):
    """A candidate checkpoint earning `share` of an alias's traffic until its rewards decide.

    While `running`, name resolution splits the alias (app/registry/resolution.py); the
    evaluation (app/rollouts/) keeps `stats` and moves `state`.
    """

    __tablename__ = "rollouts"
    __table_args__ = (
        sa.Index(None, "model_id", "created_at"),
        # at most one running rollout per alias, enforced by the database on both backends
        sa.Index(
            "ix_rollouts_running_alias",
            "model_id",
            "alias",
            unique=True,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # rollout-…
    model_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("served_models.id", ondelete="CASCADE"), nullable=False
    )
    alias: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    candidate_checkpoint_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"), nullable=False
    )
    baseline_checkpoint_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"), nullable=False
    )
    share: Mapped[float] = mapped_column(sa.Float, nullable=False)
    metric: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    min_trajectories: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    confidence: Mapped[float] = mapped_column(sa.Float, nullable=False)
    max_duration_s: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False, index=True)
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    salt: Mapped[str] = mapped_column(sa.String(64), nullable=False)  # keys the sticky hash
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)  # the job that started it
    webhook_urls: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)  # the last evaluation
    # a scorer metric with a game installed: the last dataset build asked to score its trajectories
    score_dataset_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    evaluated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RolloutEvent(Base):
    """What happened to a rollout (started, each decision), oldest first."""

    __tablename__ = "rollout_events"
    __table_args__ = (sa.Index(None, "rollout_id", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # rolloutevt-…
    rollout_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    type: Mapped[str] = mapped_column(sa.String(32), nullable=False)  # rollout.started, rollout.promoted…
    message: Mapped[str] = mapped_column(sa.Text, nullable=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
