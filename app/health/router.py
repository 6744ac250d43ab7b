"""Liveness, readiness, the Babylon-shaped /health, and Prometheus /metrics."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.auth import require_api_key
from app.errors import error_responses
from app.health.schema import SchemaState, read_schema_state
from app.state import app_state

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


async def _database_and_schema(request: Request) -> tuple[bool, SchemaState | None]:
    try:
        return True, await read_schema_state(app_state(request.app).engine)
    except Exception as exc:
        logger.warning("health.database_unreachable error=%s", type(exc).__name__)
        return False, None


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
    its schema is not the one this version needs (`reason` names the command to run)."""
    connected, schema = await _database_and_schema(request)
    ok = connected and schema is not None and schema.at_head
    body: dict[str, Any] = {
        "status": "healthy" if ok else "unhealthy",
        "database": "connected" if connected else "disconnected",
        "wandb": "configured" if app_state(request.app).settings.wandb_configured else "not_configured",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
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
    """Ready when the database answers and its schema is at the newest migration."""
    checks: dict[str, str] = {}
    connected, schema = await _database_and_schema(request)
    checks["database"] = "ok" if connected else "unreachable"
    checks["migrations"] = "unknown" if schema is None else "ok" if schema.at_head else schema.describe()
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401),
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    """Request counts and latency by route template and status, DB pool, and feature metrics."""
    return Response(app_state(request.app).metrics.render(), media_type=CONTENT_TYPE_LATEST)
