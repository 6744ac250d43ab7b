"""Fine-tuning jobs, their steps, events and webhook deliveries.

The database is the system of record for training (W&B's API has no job list, status or
idempotency): a job's state, each step's remote id and its last seen event id are written
before and after every remote call, so a restarted worker resumes instead of re-posting.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, TimestampMixin, UTCDateTime, utcnow


class JobStatus(StrEnum):
    """A job's status (OpenAI's names). Stored as strings, not a native enum: adding one needs
    no ALTER TYPE."""

    VALIDATING = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class StepStatus(StrEnum):
    """A training step's stored state; app/training/steps.py holds the transitions between them."""

    PENDING = "pending"  # planned, nothing sent
    # stored with the base checkpoint step *before* the POST: a worker that finds a step here
    # after a crash cannot know whether W&B accepted it (→ unknown)
    SUBMITTING = "submitting"
    UNKNOWN = "unknown"  # the POST's answer was lost; decided from the model's checkpoints
    SUBMITTED = "submitted"  # W&B's training job id stored; its events are followed
    ENDED = "ended"  # `training_ended` seen; the step's checkpoint is being looked up
    SUCCEEDED = "succeeded"  # its checkpoint is recorded
    FAILED = "failed"  # W&B refused or failed it: no checkpoint will come
    # the service stopped following it (cancel, stall, unresolved outcome) while W&B may still
    # finish it: a checkpoint W&B produces later is recorded as this step's, marked late
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"  # cancelled before anything was sent


STEP_FINAL_STATUSES = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.ABANDONED, StepStatus.CANCELLED)


class FineTuningJob(TimestampMixin, Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        sa.Index("ix_fine_tuning_jobs_status_created_at", "status", "created_at"),
        sa.Index("ix_fine_tuning_jobs_created_at_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # ftjob-…
    status: Mapped[str] = mapped_column(sa.String(20), nullable=False)
    base_model: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    training_file: Mapped[str] = mapped_column(sa.String(64), nullable=False)  # as given: file or dataset id
    dataset_id: Mapped[str] = mapped_column(sa.String(40), nullable=False, index=True)
    suffix: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    seed: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONType, nullable=True)
    # the resolved hyperparameters (every field, defaults filled in)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    # the W&B model line (ART TrainableModel) this job trains
    model_name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    project: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    entity: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)  # known after register
    served_model_id: Mapped[str | None] = mapped_column(
        sa.String(40), sa.ForeignKey("served_models.id", ondelete="SET NULL"), nullable=True
    )
    fine_tuned_model: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    total_steps: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    completed_steps: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    trained_tokens: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)  # {code, message, param}
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), nullable=True, unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    webhook_urls: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    # the game's training_batches row this job trains (POST /train, watch mode); one job per batch
    babylon_batch_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, unique=True)
    # `method.reinforcement.rollout`: on success, roll the final checkpoint out on this alias
    # (app/registry/rollouts.py options) instead of handing it to the game at once
    rollout: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # null | pending | done | failed: the write-back to the game after the last step
    handoff_status: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # claiming: the worker holding the job and until when (renewed by heartbeats)
    worker_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow
    )


class JobStep(Base):
    """One training step: one batch of groups, one POST /preview/training-jobs, one checkpoint."""

    __tablename__ = "fine_tuning_job_steps"
    __table_args__ = (sa.UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(sa.Integer, nullable=False)  # 1-based
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    epoch: Mapped[int] = mapped_column(sa.Integer, nullable=False)  # 1-based
    group_positions: Mapped[list[int]] = mapped_column(JSONType, nullable=False)  # dataset group positions
    # the model's newest checkpoint step before the POST: a checkpoint beyond it means the step ran
    base_step: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    remote_job_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    last_event_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    num_sequences: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    gradient_steps: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    # running sums of gradient_step metrics, so a resumed step keeps what it already saw
    metric_sums: Mapped[dict[str, float]] = mapped_column(JSONType, nullable=False, default=dict)
    checkpoint_step: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    submit_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_event_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # when `training_ended` was stored (the step's checkpoint is looked up from then on)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # when the step began (before the base checkpoint is read): the step's wall time starts here
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobEvent(Base):
    """`fine_tuning.job.event`: a transition (type message) or a gradient step (type metrics)."""

    __tablename__ = "fine_tuning_job_events"
    __table_args__ = (sa.Index("ix_fine_tuning_job_events_job_id_seq", "job_id", "seq"),)

    # insertion order; the cursor of list_events
    seq: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(sa.String(40), nullable=False, unique=True)  # ftevent-…
    job_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    level: Mapped[str] = mapped_column(sa.String(8), nullable=False)  # info | warn | error
    type: Mapped[str] = mapped_column(sa.String(16), nullable=False)  # message | metrics
    message: Mapped[str] = mapped_column(sa.Text, nullable=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class WebhookDelivery(TimestampMixin, Base):
    """One notification to one URL; retried with backoff until delivered or out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # whd-…
    # Standard Webhooks `webhook-id`: the same for every retry, so receivers can deduplicate
    message_id: Mapped[str] = mapped_column(sa.String(40), nullable=False)
    # what it is about: a job, or a rollout (`rollout.promoted`, …; job_id is then its job, if any)
    job_id: Mapped[str | None] = mapped_column(
        sa.String(40), sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=True, index=True
    )
    rollout_id: Mapped[str | None] = mapped_column(
        sa.String(40), sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=True, index=True
    )
    event_type: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    url: Mapped[str] = mapped_column(sa.String(2000), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
