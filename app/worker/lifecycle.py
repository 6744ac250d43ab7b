"""Start and stop the in-process job worker with the API (RUN_WORKER)."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import Settings
from app.health.schema import WhileSchemaAtHead
from app.state import app_state
from app.worker.loop import Worker


async def startup(app: FastAPI) -> None:
    settings: Settings = app_state(app).settings
    app_state(app).worker = None
    if not settings.run_worker:
        return
    # Paused (one log line) while the database schema is not at head (app/health/schema.py).
    state = app_state(app)
    worker = WhileSchemaAtHead(state.engine, lambda: Worker(settings, state.sessionmaker))
    await worker.start()
    app_state(app).worker = worker


async def shutdown(app: FastAPI) -> None:
    worker: WhileSchemaAtHead | None = app_state(app).worker
    if worker is not None:
        await worker.stop()
        app_state(app).worker = None
