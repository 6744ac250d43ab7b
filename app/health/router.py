"""Liveness, readiness, the Babylon-shaped /health, and Prometheus /metrics."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.auth import require_scope
from app.errors import error_responses
from app.health.schema import SchemaState, read_schema_state
from app.keys.scopes import Scope
from app.queue import workers as registry
from app.state import NotStarted, app_state

if TYPE_CHECKING:  # the key check lives with the training client (app/training/keycheck.py)
    from app.training.keycheck import KeyCheck

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


async def _database_and_schema(request: Request) -> tuple[bool, SchemaState | None]:
    try:
        return True, await read_schema_state(app_state(request.app).engine)
    except Exception as exc:
        logger.warning("health.database_unreachable error=%s", type(exc).__name__)
        return False, None


async def _workers(request: Request) -> dict[str, Any] | None:
    """The worker registry's live workers, or None when the database cannot say."""
    try:
        state = app_state(request.app)
        async with state.sessionmaker() as session:
            return registry.describe(await registry.live_workers(session, state.settings))
    except Exception as exc:
        logger.warning("health.workers_unknown error=%s", type(exc).__name__)
        return None


async def _wandb_key(request: Request) -> KeyCheck:
    checker = app_state(request.app).wandb_key
    if checker is None:
        raise NotStarted("the W&B key check exists only while the app's lifespan runs")
    return await checker.current()


@router.get(
    "/health",
    summary="Babylon health check",
    responses={
        503: {
            "description": "The database is unreachable, or its schema is not at the newest migration "
            "(same shape, status `unhealthy`; `reason` says what to do)"
        }
    },
)
async def health(request: Request) -> JSONResponse:
    """The shape the game's old Python worker answered; 503 when the database is unreachable or
    its schema is not the one this version needs (`reason` names the command to run). Plus
    `wandb_key` (whether W&B accepts this process's key: a cached, cheap authenticated read,
    app/training/keycheck.py) and `workers` (live workers from the worker registry)."""
    connected, schema = await _database_and_schema(request)
    ok = connected and schema is not None and schema.at_head
    workers = await _workers(request) if ok else None
    body: dict[str, Any] = {
        "status": "healthy" if ok else "unhealthy",
        "database": "connected" if connected else "disconnected",
        "wandb": "configured" if app_state(request.app).settings.wandb_configured else "not_configured",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "wandb_key": (await _wandb_key(request)).status.value,
        "workers": (
            {k: workers[k] for k in ("live", "can_train", "jobs_running")} if workers is not None else None
        ),
    }
    if schema is not None and not schema.at_head:
        body["schema"] = "not_at_head"
        body["reason"] = schema.describe()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP. Touches no dependency."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"description": "Database unreachable or migrations not at head (`checks` says which)"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and its schema is at the newest migration. Also reports,
    without gating readiness on them, the live workers and whether W&B accepts the key."""
    checks: dict[str, str] = {}
    connected, schema = await _database_and_schema(request)
    checks["database"] = "ok" if connected else "unreachable"
    checks["migrations"] = "unknown" if schema is None else "ok" if schema.at_head else schema.describe()
    ready = all(v == "ok" for v in checks.values())
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "workers": await _workers(request) if checks["database"] == "ok" else None,
        "wandb_key": (await _wandb_key(request)).public(),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[require_scope(Scope.admin)],
    responses=error_responses(401, 403),
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    """Request counts and latency by route template and status, DB pool, jobs (by status, queue
    depth, oldest queued age, steps, W&B calls, leases, webhooks), live workers, and feature metrics."""
    metrics = app_state(request.app).metrics
    await metrics.refresh()
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
