"""Start and stop the in-process worker with the API (RUN_WORKER), and wake it from routes."""

from __future__ import annotations

from fastapi import FastAPI, Request

from app.config import Settings
from app.worker.loop import Worker


async def startup(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    app.state.worker = None
    if not settings.run_worker:
        return
    worker = Worker(
        settings,
        app.state.sessionmaker,
        metrics=app.state.job_metrics,
        in_api=True,
        key_checker=app.state.wandb_key,
    )
    await worker.start()
    app.state.worker = worker


async def shutdown(app: FastAPI) -> None:
    worker: Worker | None = getattr(app.state, "worker", None)
    if worker is not None:
        await worker.stop()
        app.state.worker = None


def wake_worker(request: Request) -> None:
    """Something to do was just committed (a job, a build, a cancel): the in-process worker
    looks now rather than at its next poll."""
    worker: Worker | None = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()
