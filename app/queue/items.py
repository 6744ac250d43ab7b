"""Work items: background work other than jobs, claimed with the same leases (claims.py).

Today there is one kind, `dataset_build`: every dataset (from POST /v1/datasets, a file
upload, or a game batch's job) is built by whichever worker claims its item. A build whose
worker died is claimed again when its lease expires and started over (its partial snapshot is
discarded first); after `WORKER__ITEM_MAX_ATTEMPTS` claims the dataset fails instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.ids import new_id
from app.queue.models import WorkItem, WorkKind, WorkStatus

logger = logging.getLogger(__name__)

# kind → handler(sessionmaker, subject id, attempt): runs the work to its end
Handler = Callable[[async_sessionmaker[AsyncSession], str, int], Awaitable[None]]


def enqueue(session: AsyncSession, kind: WorkKind, subject_id: str) -> WorkItem:
    """Stage a work item in the caller's transaction (it is claimable once that commits)."""
    item = WorkItem(
        id=new_id("wi"),
        kind=kind,
        subject_id=subject_id,
        status=WorkStatus.QUEUED,
        attempts=0,
        created_at=utcnow(),
    )
    session.add(item)
    return item


async def finish(
    sessionmaker: async_sessionmaker[AsyncSession], item_id: str, worker_id: str, status: WorkStatus
) -> None:
    async with sessionmaker() as session:
        await session.execute(
            sa.update(WorkItem)
            .where(WorkItem.id == item_id, WorkItem.worker_id == worker_id)
            .values(status=status, finished_at=utcnow(), worker_id=None, lease_expires_at=None)
        )
        await session.commit()
