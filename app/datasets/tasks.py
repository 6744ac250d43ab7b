"""Dataset builds running in the background of the API process.

Each build is an asyncio task holding only a dataset id; it opens its own sessions
(`build_dataset`). Tasks are kept on `app.state` so they are not garbage-collected and can
be cancelled at shutdown (`cancel_builds`); a build cut short by a crash is found later by
its stale heartbeat (`service.fail_stale_builds`).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from app.datasets.metrics import dataset_metrics
from app.datasets.models import Dataset
from app.datasets.service import build_dataset
from app.state import app_state

logger = logging.getLogger(__name__)


def _tasks(app: FastAPI) -> set[asyncio.Task[object]]:
    return app_state(app).dataset_builds


async def _build_and_observe(app: FastAPI, dataset_id: str) -> Dataset:
    state = app_state(app)
    dataset = await build_dataset(state.sessionmaker, state.settings, dataset_id)
    dataset_metrics(app).observe(dataset)
    return dataset


def start_build(app: FastAPI, dataset_id: str) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(
        _build_and_observe(app, dataset_id), name=f"dataset-build-{dataset_id}"
    )
    tasks = _tasks(app)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def cancel_builds(app: FastAPI, timeout_s: float = 10.0) -> None:
    """Cancel running builds (each records itself as failed with `build_cancelled`)."""
    tasks = list(_tasks(app))
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
