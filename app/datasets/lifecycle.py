"""Start-up and shutdown hooks of the dataset builder (to be called from app.main's lifespan)."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from app.datasets.service import fail_stale_builds
from app.datasets.tasks import cancel_builds
from app.state import app_state

logger = logging.getLogger(__name__)


async def startup(app: FastAPI) -> None:
    """Fail builds whose process died mid-way (their heartbeat is stale); replicas' live builds
    keep a fresh heartbeat and are left alone."""
    # Best effort: the service must still start (and answer /health, /readyz with 503) while its
    # database is down or behind on migrations; POST /v1/datasets fails stale builds too.
    try:
        async with app_state(app).sessionmaker() as session:
            count = await fail_stale_builds(session)
            await session.commit()
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("datasets.stale_build_check_skipped error=%s", type(exc).__name__)
        return
    if count:
        logger.warning("datasets.stale_builds_failed count=%s", count)


async def shutdown(app: FastAPI) -> None:
    await cancel_builds(app)
