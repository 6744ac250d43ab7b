"""The worker registry and the work items that workers claim besides jobs.

`workers`: every worker process (standalone or inside the API) upserts its row at start and on
every heartbeat, so the API knows which workers are alive and whether any of them can train
(has a W&B key that W&B did not refuse). A graceful stop marks the row stopped.

`work_items`: background work other than jobs (today: dataset builds), claimed by the same
loop and with the same leases as jobs (app/worker/claims.py). A work item whose worker died is
claimed again once its lease expires, and its handler starts the work over.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, utcnow


class WandbKeyStatus(StrEnum):
    """What W&B said about a process's key the last time it was checked."""

    NOT_CONFIGURED = "not_configured"
    UNCHECKED = "unchecked"
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # 401/403: the key cannot train
    UNREACHABLE = "unreachable"  # timeout, connection error or 5xx: unknown


class WorkerRecord(Base):
    __tablename__ = "workers"
    __table_args__ = (sa.Index("ix_workers_heartbeat_at", "heartbeat_at"),)

    id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)  # host:pid:random
    host: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    pid: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    version: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    in_api: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)  # RUN_WORKER=true
    has_wandb_key: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    wandb_key_status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    jobs_running: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    items_running: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    max_jobs: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    metrics_port: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WorkKind(StrEnum):
    DATASET_BUILD = "dataset_build"


class WorkStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"  # claimed (a lease may have expired: then it is claimable again)
    DONE = "done"
    FAILED = "failed"  # gave up (the subject records why)


class WorkItem(Base):
    __tablename__ = "work_items"
    __table_args__ = (
        sa.UniqueConstraint("kind", "subject_id"),
        sa.Index("ix_work_items_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # wi-…
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    subject_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)  # e.g. the dataset id
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    worker_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow
    )
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
