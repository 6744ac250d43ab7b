"""Start-up and shutdown hooks of the dataset builder (to be called from app.main's lifespan)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app.datasets.service import fail_stale_builds
from app.datasets.tasks import cancel_builds

logger = logging.getLogger(__name__)


async def startup(app: FastAPI) -> None:
    """Fail builds whose process died mid-way (their heartbeat is stale); replicas' live builds
    keep a fresh heartbeat and are left alone."""
    async with app.state.sessionmaker() as session:
        count = await fail_stale_builds(session)
        await session.commit()
    if count:
        logger.warning("datasets.stale_builds_failed count=%s", count)


async def shutdown(app: FastAPI) -> None:
    await cancel_builds(app)
