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
            on_alias_moved=lambda: _forget_resolutions(app),
        ),
    )
    await worker.start()
    state.worker = worker


def _forget_resolutions(app: FastAPI) -> None:
    gateway = app_state(app).gateway
    if gateway is not None:
        gateway.resolver.invalidate()


async def shutdown(app: FastAPI) -> None:
    state = app_state(app)
    worker = state.worker
    if worker is not None:
        await worker.stop()
        state.worker = None
