"""Liveness, readiness, the Babylon-shaped /health, and Prometheus /metrics."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.auth import require_api_key
from app.errors import error_responses
from app.migrations import current_revisions, head_revisions
from app.training.keycheck import KeyCheck, WandbKeyChecker
from app.worker import registry

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


async def _database_ok(request: Request) -> bool:
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return True
    except Exception as exc:
        logger.warning("health.database_unreachable error=%s", type(exc).__name__)
        return False


async def _workers(request: Request) -> dict[str, Any] | None:
    """The worker registry's live workers, or None when the database cannot say."""
    try:
        async with request.app.state.sessionmaker() as session:
            return registry.describe(await registry.live_workers(session, request.app.state.settings))
    except Exception as exc:
        logger.warning("health.workers_unknown error=%s", type(exc).__name__)
        return None


async def _wandb_key(request: Request) -> KeyCheck:
    checker: WandbKeyChecker = request.app.state.wandb_key
    return await checker.current()


@router.get(
    "/health",
    summary="Babylon health check",
    responses={503: {"description": "The database is unreachable (same shape, status `unhealthy`)"}},
)
async def health(request: Request) -> JSONResponse:
    """The shape the game's old Python worker answered (503 when the database is unreachable),
    plus `wandb_key` (whether W&B accepts this process's key: a cached, cheap authenticated
    read, app/training/keycheck.py) and `workers` (live workers from the worker registry)."""
    ok = await _database_ok(request)
    workers = await _workers(request) if ok else None
    body: dict[str, Any] = {
        "status": "healthy" if ok else "unhealthy",
        "database": "connected" if ok else "disconnected",
        "wandb": "configured" if request.app.state.settings.wandb_configured else "not_configured",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "wandb_key": (await _wandb_key(request)).status.value,
        "workers": (
            {k: workers[k] for k in ("live", "can_train", "jobs_running")} if workers is not None else None
        ),
    }
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
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            current = await conn.run_sync(current_revisions)
        checks["database"] = "ok"
        heads = head_revisions()
        checks["migrations"] = (
            "ok" if current == heads else f"at {sorted(current) or 'none'}, head is {sorted(heads)}"
        )
    except Exception as exc:
        logger.warning("ready.database_unreachable error=%s", type(exc).__name__)
        checks["database"] = "unreachable"
        checks["migrations"] = "unknown"
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
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401),
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    """Request counts and latency by route template and status, DB pool, jobs (by status, queue
    depth, oldest queued age, steps, W&B calls, leases, webhooks), live workers, and feature metrics."""
    await request.app.state.metrics.refresh()
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
