"""Job events (`fine_tuning.job.event`): every transition and every gradient step is one row."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.ids import new_id
from app.jobs.models import JobEvent

Level = Literal["info", "warn", "error"]


def add_event(
    session: AsyncSession,
    job_id: str,
    message: str,
    *,
    level: Level = "info",
    type_: Literal["message", "metrics"] = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Stage an event in the caller's transaction (it commits with the state change it describes)."""
    event = JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        created_at=utcnow(),
        level=level,
        type=type_,
        message=message,
        data=data,
    )
    session.add(event)
    return event
