"""Start and stop the in-process worker with the API (RUN_WORKER)."""

from __future__ import annotations

from fastapi import FastAPI

from app.health.schema import WhileSchemaAtHead
from app.state import app_state
from app.worker.loop import Worker


async def startup(app: FastAPI) -> None:
    state = app_state(app)
    settings = state.settings
    state.worker = None
    if not settings.run_worker:
        return
    # Paused (one log line) while the database schema is not at head (app/health/schema.py).
    worker = WhileSchemaAtHead(
        state.engine,
        lambda: Worker(
            settings,
            state.sessionmaker,
            metrics=state.job_metrics,
            in_api=True,
            key_checker=state.wandb_key,
        ),
    )
    await worker.start()
    state.worker = worker


async def shutdown(app: FastAPI) -> None:
    state = app_state(app)
    worker = state.worker
    if worker is not None:
        await worker.stop()
        state.worker = None
