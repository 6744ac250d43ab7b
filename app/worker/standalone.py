"""`training-control worker`: a worker without the API, stopped gracefully by SIGTERM/SIGINT.

It serves its own Prometheus /metrics (prometheus_client's HTTP server, in a thread) on
`WORKER__METRICS_HOST`:`WORKER__METRICS_PORT` (0: any free port, logged and recorded in the
worker registry; -1: off): the job metrics of what this worker runs, and the queue gauges.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from app import migrations
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.health.schema import WhileSchemaAtHead, require_schema_at_head
from app.worker.loop import Worker
from app.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)


class WorkerStartError(Exception):
    """The worker cannot start; the message says why and what to do."""


def serve_metrics(settings: Settings, registry: CollectorRegistry) -> tuple[Any, int] | None:
    """Start the metrics HTTP server; (server, port) or None when turned off."""
    port = settings.worker.metrics_port
    if port < 0:
        return None
    try:
        server, _thread = start_http_server(port, addr=settings.worker.metrics_host, registry=registry)
    except OSError as exc:
        raise WorkerStartError(
            f"cannot serve metrics on {settings.worker.metrics_host}:{port} ({exc.strerror or exc}); "
            "set WORKER__METRICS_PORT to a free port, 0 for any free port, or -1 to turn it off"
        ) from None
    return server, int(server.server_address[1])


async def run_worker(settings: Settings) -> int:
    # The metrics port first, like `serve`'s: a taken port refuses before anything else happens.
    registry = CollectorRegistry(auto_describe=True)
    metrics = WorkerMetrics(registry)
    served = serve_metrics(settings, registry)  # WorkerStartError: the CLI refuses in one line
    try:
        return await _run(settings, metrics, served)
    finally:
        if served is not None:
            served[0].shutdown()


async def _run(settings: Settings, metrics: WorkerMetrics, served: tuple[Any, int] | None) -> int:
    if settings.migrate_on_start:
        await asyncio.to_thread(
            migrations.upgrade, settings.database_url, lock_timeout_s=settings.db.migrate_lock_timeout_s
        )
    # No ping before each transaction (a round trip each, 4-5 per training step): the worker
    # uses its connections all the time, and one broken by a database restart fails a single
    # statement, which a job's runner handles like any database error (the job is handed back
    # and resumed from its stored state)
    engine = create_engine(settings, pre_ping=False)
    try:
        # refuses in one line (app/health/schema.py); waits for a database that is away
        await require_schema_at_head(engine, wait_s=settings.db.start_wait_s)
    except BaseException:
        await engine.dispose()
        raise
    if served is not None:  # logged once the worker can start: a refusal above stays one line
        logger.info(
            "worker.metrics_listening url=http://%s:%s/metrics", settings.worker.metrics_host, served[1]
        )
    if settings.is_sqlite:
        logger.info(
            "worker.sqlite note=run one worker per SQLite database (the API's RUN_WORKER or this one)"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sessionmaker = create_sessionmaker(engine)
    # Paused (one log line) while the schema falls behind, resumed when it is back at head.
    worker = WhileSchemaAtHead(
        engine,
        lambda: Worker(
            settings,
            sessionmaker,
            metrics=metrics,
            metrics_port=served[1] if served else None,
            refresh_gauges=True,
        ),
    )
    try:
        await worker.start()
        await stop.wait()
        logger.info("worker.stopping reason=signal")
    finally:
        await worker.stop()
        await engine.dispose()
    return 0
