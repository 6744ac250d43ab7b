"""Start and stop the in-process job worker with the API (RUN_WORKER)."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import Settings
from app.state import app_state
from app.worker.loop import Worker


async def startup(app: FastAPI) -> None:
    settings: Settings = app_state(app).settings
    app_state(app).worker = None
    if not settings.run_worker:
        return
    worker = Worker(settings, app_state(app).sessionmaker)
    await worker.start()
    app_state(app).worker = worker


async def shutdown(app: FastAPI) -> None:
    worker: Worker | None = app_state(app).worker
    if worker is not None:
        await worker.stop()
        app_state(app).worker = None
