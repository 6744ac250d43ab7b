"""Dataset builds as work items: what a worker runs for a `dataset_build` item, and how a
request waits for one (POST /v1/datasets `wait_s`)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.metrics import DatasetMetrics
from app.datasets.models import Dataset, DatasetStatus
from app.datasets.service import build_dataset, get_dataset, give_up
from app.errors import NotFound

logger = logging.getLogger(__name__)
WAIT_POLL_S = 0.05


async def run_build_item(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    dataset_id: str,
    attempt: int,
    metrics: DatasetMetrics | None,
) -> None:
    """Build the dataset (started over when an earlier worker died mid-way), or give up after
    `WORKER__ITEM_MAX_ATTEMPTS` claims."""
    try:
        if attempt > settings.worker.item_max_attempts:
            dataset = await give_up(sessionmaker, dataset_id, attempt - 1)
        else:
            dataset = await build_dataset(sessionmaker, settings, dataset_id)
    except NotFound:  # deleted meanwhile (its file was deleted): nothing to build
        logger.info("datasets.build_skipped dataset_id=%s reason=deleted", dataset_id)
        return
    if metrics is not None:
        metrics.observe(dataset)


async def wait_for_build(
    sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str, wait_s: float
) -> Dataset:
    """The dataset once its build ended, or as it is after `wait_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        async with sessionmaker() as session:
            dataset = await get_dataset(session, dataset_id)
        if dataset.status not in (DatasetStatus.QUEUED, DatasetStatus.BUILDING) or loop.time() >= deadline:
            return dataset
        await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - loop.time())))
