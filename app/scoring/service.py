"""Reading persisted scores (written by dataset builds, see datasets.snapshot)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.scoring.models import TrajectoryScore


async def list_scores(
    session: AsyncSession,
    *,
    window_id: str | None = None,
    agent_id: str | None = None,
    trajectory_id: str | None = None,
    scorer: str | None = None,
    after: int | None = None,
    limit: int = 20,
) -> tuple[list[TrajectoryScore], bool]:
    """Scores matching every given filter, oldest first; `after` is the last id of the previous page."""
    query = sa.select(TrajectoryScore)
    if window_id is not None:
        query = query.where(TrajectoryScore.window_id == window_id)
    if agent_id is not None:
        query = query.where(TrajectoryScore.agent_id == agent_id)
    if trajectory_id is not None:
        query = query.where(TrajectoryScore.trajectory_id == trajectory_id)
    if scorer is not None:
        query = query.where(TrajectoryScore.scorer == scorer)
    if after is not None:
        query = query.where(TrajectoryScore.id > after)
    rows = list((await session.scalars(query.order_by(TrajectoryScore.id).limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit
