"""Claiming jobs with leases (api-conventions.md §3).

Postgres: `FOR UPDATE SKIP LOCKED`, inside a transaction that first takes a transaction-level
advisory lock, so that the "one running job per model line" check sees every earlier claim
(two jobs training one W&B model at once would interleave its checkpoints). SQLite: every
write transaction starts with BEGIN IMMEDIATE (app/db.py), which serialises claims the same way.

A claim lasts `lease_s`; the job's worker renews it with heartbeats. A job whose lease expired
(its worker died) is claimable again, and the new worker resumes from the stored step state.
Every state write of a worker checks that it still holds the lease (`assert_owner`), so a
worker that lost its lease cannot overwrite the new owner's progress.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.db import utcnow
from app.jobs.models import ACTIVE_STATUSES, FineTuningJob

CLAIM_LOCK_KEY = 0x7472_6169_6E6A  # "trainj"


class LeaseLost(Exception):
    """Another worker holds the job now (or it ended); stop working on it without writing."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    status: str
    attempts: int


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
        .where(
            FineTuningJob.status.in_(ACTIVE_STATUSES),
            sa.or_(FineTuningJob.lease_expires_at.is_(None), FineTuningJob.lease_expires_at < now),
            ~line_busy,
        )
        .order_by(FineTuningJob.created_at, FineTuningJob.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=FineTuningJob)
    )
    if job is None:
        await session.rollback()
        return None
    job.worker_id = worker_id
    job.lease_expires_at = now + dt.timedelta(seconds=lease_s)
    job.heartbeat_at = now
    job.attempts += 1
    claim = Claim(job_id=job.id, status=job.status, attempts=job.attempts)
    await session.commit()
    return claim


async def renew_lease(session: AsyncSession, job_id: str, worker_id: str, lease_s: float) -> bool:
    """Extend the lease if this worker still holds it; False means it was lost."""
    now = utcnow()
    result = await session.execute(
        sa.update(FineTuningJob)
        .where(
            FineTuningJob.id == job_id,
            FineTuningJob.worker_id == worker_id,
            FineTuningJob.status.in_(ACTIVE_STATUSES),
        )
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_s), heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return bool(getattr(result, "rowcount", 0))


async def release(session: AsyncSession, job_id: str, worker_id: str) -> None:
    """Give the job back (graceful shutdown): any worker may resume it at once."""
    await session.execute(
        sa.update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.worker_id == worker_id)
        .values(worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def assert_owner(session: AsyncSession, job_id: str, worker_id: str) -> FineTuningJob:
    """Lock the job row for this transaction and check this worker still holds it."""
    job = await session.scalar(
        sa.select(FineTuningJob)
        .where(FineTuningJob.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if job is None or job.worker_id != worker_id or job.status not in ACTIVE_STATUSES:
        raise LeaseLost(job_id)
    return job
