"""Start and stop the gateway: upstream connection pool, model resolver, background writers,
and the request-log retention sweep. Called from the app's lifespan (app/main.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI

from app.config import Settings
from app.gateway.metrics import GatewayMetrics
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.gateway.proxy import Gateway
from app.gateway.spool import Spool, database_tag
from app.gateway.upstream import UpstreamClient
from app.gateway.writer import BatchWriter, sweep_request_log
from app.keys.ratelimit import RateLimiter
from app.outbound import Outbound
from app.registry.resolution import ModelResolver
from app.state import app_state

logger = logging.getLogger(__name__)

_FIRST_SWEEP_DELAY_S = 60.0


def _metrics(app: FastAPI) -> GatewayMetrics:
    # One set of collectors per app registry, even if the lifespan runs twice.
    existing: GatewayMetrics | None = app_state(app).gateway_metrics
    if existing is None:
        existing = GatewayMetrics(app_state(app).metrics.registry)
        app_state(app).gateway_metrics = existing
    return existing


async def startup(app: FastAPI) -> None:
    settings: Settings = app_state(app).settings
    cfg = settings.inference
    metrics = _metrics(app)
    outbound = Outbound.for_url(settings.wandb_base_url, settings.outbound)
    resolver = ModelResolver.from_settings(app_state(app).sessionmaker, settings)
    engine = app_state(app).engine

    def writer(table: sa.Table) -> BatchWriter:
        spool = None
        if cfg.spool_dir:
            spool = Spool(
                Path(cfg.spool_dir),
                table.name,
                database=database_tag(settings.database_url),
                rotate_rows=cfg.spool_rotate_rows,
                rotate_s=cfg.spool_rotate_s,
            )
            try:
                spool.open()
            except OSError as exc:
                # durability was asked for: refuse to start rather than run without it
                raise RuntimeError(
                    f"INFERENCE__SPOOL_DIR={cfg.spool_dir!r} cannot hold the gateway's spool ({exc}); "
                    "point it at a writable local directory, or set it empty to disable the spool"
                ) from exc
        return BatchWriter(
            table,
            engine,
            metrics.writer,
            capacity=cfg.capture_buffer_size,
            batch_size=cfg.flush_batch_size,
            interval_s=cfg.flush_interval_s,
            spool=spool,
        )

    captures = writer(_table(CapturedCompletion))
    request_log = writer(_table(GatewayRequest)) if cfg.request_log else None
    upstream = open_upstream(settings, outbound)  # after the spools: a failed start leaks no session
    captures.start()
    if request_log is not None:
        request_log.start()
    limiter = RateLimiter(engine, lease_fraction=settings.auth.rate_lease_fraction)
    app_state(app).gateway = Gateway(settings, upstream, resolver, metrics, captures, request_log, limiter)
    app_state(app).gateway_retention = (
        asyncio.create_task(_retention_loop(app), name="gateway-retention")
        if cfg.request_log and cfg.request_log_retention_days > 0
        else None
    )
    logger.info("gateway.upstream url=%s route=%s", settings.wandb_base_url, outbound.describe())
    if (
        outbound.proxy is not None
        and settings.wandb_configured
        and settings.wandb_base_url.startswith("http://")
    ):
        logger.warning(
            "gateway.key_in_clear upstream=%s: the W&B key travels unencrypted through the proxy; "
            "use an https:// WANDB_BASE_URL",
            settings.wandb_base_url,
        )
    if not settings.wandb_configured:
        logger.warning(
            "gateway.no_wandb_key upstream=%s: requests go upstream without Authorization",
            settings.wandb_base_url,
        )


def open_upstream(settings: Settings, outbound: Outbound) -> UpstreamClient:
    """The gateway's upstream client (bench/proxy swaps this function to measure alternatives)."""
    cfg = settings.inference
    return UpstreamClient(
        settings.wandb_base_url,
        outbound,
        max_connections=cfg.max_connections,
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
        pool_timeout=cfg.pool_timeout_s,
        keepalive_expiry=cfg.keepalive_expiry_s,
        max_response_bytes=cfg.max_response_bytes,
        max_header_bytes=cfg.max_header_bytes,
    )


def _table(model: type[CapturedCompletion] | type[GatewayRequest]) -> sa.Table:
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table


async def _retention_loop(app: FastAPI) -> None:
    cfg = app_state(app).settings.inference
    await asyncio.sleep(min(_FIRST_SWEEP_DELAY_S, cfg.retention_interval_s))
    while True:
        try:
            deleted = await sweep_request_log(
                app_state(app).engine,
                retention_days=cfg.request_log_retention_days,
                batch_size=cfg.retention_batch_size,
            )
            if deleted:
                logger.info("gateway.request_log_swept deleted=%d", deleted)
        except Exception as exc:
            logger.warning("gateway.request_log_sweep_failed error=%s", type(exc).__name__)
        await asyncio.sleep(cfg.retention_interval_s)


async def shutdown(app: FastAPI) -> None:
    """Stop the sweep, write every pending capture and log row, close upstream connections."""
    retention: asyncio.Task[None] | None = app_state(app).gateway_retention
    if retention is not None:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
    gateway: Gateway | None = app_state(app).gateway
    if gateway is None:
        return
    await gateway.captures.stop()
    if gateway.request_log is not None:
        await gateway.request_log.stop()
    await gateway.upstream.aclose()
    await gateway.limiter.aclose()
    app_state(app).gateway = None
