"""Job events (`fine_tuning.job.event`): every transition and every gradient step is one row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.ids import new_id
from app.jobs.models import JobEvent

Level = Literal["info", "warn", "error"]
Kind = Literal["message", "metrics"]


@dataclass(frozen=True)
class Event:
    message: str
    level: Level = "info"
    type: Kind = "message"
    data: dict[str, Any] | None = None


async def add_events(session: AsyncSession, job_id: str, events: Sequence[Event]) -> None:
    """Insert events in the caller's transaction (they commit with the state change they
    describe), in order, as one statement: a plain INSERT rather than ORM objects, because a
    job's worker writes several per step and the unit of work would cost more than the rows."""
    if not events:
        return
    now = utcnow()
    await session.execute(
        sa.insert(JobEvent),
        [
            {
                "id": new_id("ftevent"),
                "job_id": job_id,
                "created_at": now,
                "level": e.level,
                "type": e.type,
                "message": e.message,
                "data": e.data,
            }
            for e in events
        ],
    )


async def add_event(
    session: AsyncSession,
    job_id: str,
    message: str,
    *,
    level: Level = "info",
    type_: Kind = "message",
    data: dict[str, Any] | None = None,
) -> None:
    await add_events(session, job_id, [Event(message, level, type_, data)])
