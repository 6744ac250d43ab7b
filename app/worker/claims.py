"""Claiming jobs with leases (the lease mechanism itself, shared with work items, is
app/queue/leases.py).

Postgres: `FOR UPDATE SKIP LOCKED`; a job claim first takes a transaction-level advisory lock,
so that the "one running job per model line" check sees every earlier claim (two jobs training
one W&B model at once would interleave its checkpoints). SQLite: every write transaction starts
with BEGIN IMMEDIATE (app/db.py), which serialises claims the same way.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.db import utcnow
from app.jobs.models import ACTIVE_STATUSES, FineTuningJob
from app.queue.leases import Claim, claimable

CLAIM_LOCK_KEY = 0x7472_6169_6E6A  # "trainj"


async def claim_next_job(session: AsyncSession, worker_id: str, lease_s: float) -> Claim | None:
    """Take the oldest claimable job and commit the claim; None when there is none."""
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK_KEY})
    other = aliased(FineTuningJob)
    line_busy = (
        sa.select(other.id)
        .where(
            other.project == FineTuningJob.project,
            other.model_name == FineTuningJob.model_name,
            other.id != FineTuningJob.id,
            other.status.in_(ACTIVE_STATUSES),
            other.lease_expires_at.is_not(None),
            other.lease_expires_at >= now,
        )
        .exists()
    )
    job = await session.scalar(
        sa.select(FineTuningJob)
        .where(FineTuningJob.status.in_(ACTIVE_STATUSES), claimable(FineTuningJob, now), ~line_busy)
        .order_by(FineTuningJob.created_at, FineTuningJob.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=FineTuningJob)
    )
    if job is None:
        await session.rollback()
        return None
    claim = Claim(job.id, job.status, job.attempts + 1, took_over=job.worker_id is not None)
    job.worker_id = worker_id
    job.lease_expires_at = now + dt.timedelta(seconds=lease_s)
    job.heartbeat_at = now
    job.attempts += 1
    await session.commit()
    return claim


def job_held() -> sa.ColumnElement[bool]:
    """A job's lease is held while the job runs (queued to running, not ended)."""
    return FineTuningJob.status.in_(ACTIVE_STATUSES)
