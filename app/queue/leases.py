"""Leases (api-conventions.md §3): one mechanism for jobs and work items.

A claim lasts `lease_s`; the worker renews the leases of everything it runs on each heartbeat
(one statement per table). Something whose lease expired (its worker died) is claimable again,
and the new worker resumes it (a job from its stored step state; a work item by starting it
over). Every state write of a job's worker checks that it still holds the lease
(`app/training/store.py`), so a worker that lost it cannot overwrite the new owner's progress.
Claiming a job (app/worker/claims.py) also needs the jobs' model; claiming a work item is here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.queue.models import WorkItem, WorkStatus

# A table with id, status, worker_id, lease_expires_at and heartbeat_at columns (jobs, work items).
LeasedModel = type[Any]


class LeaseLost(Exception):
    """Another worker holds the job now (or it ended); stop working on it without writing."""


@dataclass(frozen=True)
class Claim:
    id: str
    status: str
    attempts: int
    took_over: bool  # the previous holder's lease had expired (it died or hung)


def claimable(model: LeasedModel, now: dt.datetime) -> sa.ColumnElement[bool]:
    condition: sa.ColumnElement[bool] = sa.or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)
    return condition


async def claim_next_item(
    session: AsyncSession, worker_id: str, lease_s: float
) -> tuple[Claim, str, str] | None:
    """Take the oldest claimable work item: (claim, kind, subject id); None when there is none."""
    now = utcnow()
    item = await session.scalar(
        sa.select(WorkItem)
        .where(WorkItem.status.in_((WorkStatus.QUEUED, WorkStatus.RUNNING)), claimable(WorkItem, now))
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


def item_held() -> sa.ColumnElement[bool]:
    """A work item's lease is held while it runs."""
    return WorkItem.status == WorkStatus.RUNNING


async def renew_leases(
    session: AsyncSession,
    model: LeasedModel,
    ids: list[str],
    worker_id: str,
    lease_s: float,
    *,
    held: sa.ColumnElement[bool],
) -> set[str]:
    """Extend the leases this worker still holds among `ids` (rows where `held` is true: still
    running); returns those (the rest were lost)."""
    if not ids:
        return set()
    now = utcnow()
    result = await session.execute(
        sa.update(model)
        .where(model.id.in_(ids), model.worker_id == worker_id, held)
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_s), heartbeat_at=now)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )
    still_held = set(result.scalars().all())
    await session.commit()
    return still_held


async def release(session: AsyncSession, model: LeasedModel, item_id: str, worker_id: str) -> None:
    """Give a claim back (graceful shutdown): any worker may resume it at once."""
    await session.execute(
        sa.update(model)
        .where(model.id == item_id, model.worker_id == worker_id)
        .values(worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
