"""Start and stop the in-process job worker with the API (RUN_WORKER)."""

from __future__ import annotations

from fastapi import FastAPI

from app.config import Settings
from app.health.schema import WhileSchemaAtHead
from app.worker.loop import Worker


async def startup(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    app.state.worker = None
    if not settings.run_worker:
        return
    # Paused (one log line) while the database schema is not at head (app/health/schema.py).
    worker = WhileSchemaAtHead(app.state.engine, lambda: Worker(settings, app.state.sessionmaker))
    await worker.start()
    app.state.worker = worker


async def shutdown(app: FastAPI) -> None:
    worker: WhileSchemaAtHead | None = getattr(app.state, "worker", None)
    if worker is not None:
        await worker.stop()
        app.state.worker = None
