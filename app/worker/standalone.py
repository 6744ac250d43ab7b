"""`training-control worker`: a job worker without HTTP, stopped gracefully by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from app import migrations
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.health.schema import WhileSchemaAtHead, require_schema_at_head
from app.worker.loop import Worker

logger = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> int:
    if settings.migrate_on_start:
        await asyncio.to_thread(
            migrations.upgrade, settings.database_url, lock_timeout_s=settings.db.migrate_lock_timeout_s
        )
    engine = create_engine(settings)
    try:
        await require_schema_at_head(engine)  # refuses in one line (app/health/schema.py)
    except BaseException:
        await engine.dispose()
        raise
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
    worker = WhileSchemaAtHead(engine, lambda: Worker(settings, sessionmaker))
    try:
        await worker.start()
        await stop.wait()
        logger.info("worker.stopping reason=signal")
    finally:
        await worker.stop()
        await engine.dispose()
    return 0
