"""Claiming jobs and work items with leases (api-conventions.md §3): one mechanism for both.

Postgres: `FOR UPDATE SKIP LOCKED`; a job claim first takes a transaction-level advisory lock,
so that the "one running job per model line" check sees every earlier claim (two jobs training
one W&B model at once would interleave its checkpoints). SQLite: every write transaction starts
with BEGIN IMMEDIATE (app/db.py), which serialises claims the same way.

A claim lasts `lease_s`; the worker renews the leases of everything it runs on each heartbeat
(one statement per table). Something whose lease expired (its worker died) is claimable again,
and the new worker resumes it (a job from its stored step state; a work item by starting it
over). Every state write of a job's worker checks that it still holds the lease
(`app/training/store.py`), so a worker that lost it cannot overwrite the new owner's progress.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.db import utcnow
from app.jobs.models import ACTIVE_STATUSES, FineTuningJob
from app.worker.models import WorkItem, WorkStatus

CLAIM_LOCK_KEY = 0x7472_6169_6E6A  # "trainj"
LeasedModel = type[FineTuningJob] | type[WorkItem]


class LeaseLost(Exception):
    """Another worker holds the job now (or it ended); stop working on it without writing."""


@dataclass(frozen=True)
class Claim:
    id: str
    status: str
    attempts: int
    took_over: bool  # the previous holder's lease had expired (it died or hung)


def _claimable(model: LeasedModel, now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)


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
        .where(FineTuningJob.status.in_(ACTIVE_STATUSES), _claimable(FineTuningJob, now), ~line_busy)
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


async def claim_next_item(
    session: AsyncSession, worker_id: str, lease_s: float
) -> tuple[Claim, str, str] | None:
    """Take the oldest claimable work item: (claim, kind, subject id); None when there is none."""
    now = utcnow()
    item = await session.scalar(
        sa.select(WorkItem)
        .where(WorkItem.status.in_((WorkStatus.QUEUED, WorkStatus.RUNNING)), _claimable(WorkItem, now))
        .order_by(WorkItem.created_at, WorkItem.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if item is None:
        await session.rollback()
        return None
    claim = Claim(item.id, item.status, item.attempts + 1, took_over=item.worker_id is not None)
    kind, subject = item.kind, item.subject_id
    item.status = WorkStatus.RUNNING
    item.worker_id = worker_id
    item.lease_expires_at = now + dt.timedelta(seconds=lease_s)
    item.heartbeat_at = now
    item.attempts += 1
    await session.commit()
    return claim, kind, subject


def _held(model: LeasedModel) -> sa.ColumnElement[bool]:
    if model is FineTuningJob:
        return FineTuningJob.status.in_(ACTIVE_STATUSES)
    return WorkItem.status == WorkStatus.RUNNING


async def renew_leases(
    session: AsyncSession, model: LeasedModel, ids: list[str], worker_id: str, lease_s: float
) -> set[str]:
    """Extend the leases this worker still holds among `ids`; returns those (the rest were lost)."""
    if not ids:
        return set()
    now = utcnow()
    result = await session.execute(
        sa.update(model)
        .where(model.id.in_(ids), model.worker_id == worker_id, _held(model))
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_s), heartbeat_at=now)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )
    held = set(result.scalars().all())
    await session.commit()
    return held


async def release(session: AsyncSession, model: LeasedModel, item_id: str, worker_id: str) -> None:
    """Give a claim back (graceful shutdown): any worker may resume it at once."""
    await session.execute(
        sa.update(model)
        .where(model.id == item_id, model.worker_id == worker_id)
        .values(worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
