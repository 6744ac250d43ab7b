"""Alembic environment: async engine, URL from the service settings, advisory lock on Postgres."""

from __future__ import annotations

import asyncio
import logging
import time
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import get_settings
from app.migrations import MIGRATION_LOCK_KEY
from app.models import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("database_url"):
    # Only when run as the `alembic` command: the service configures logging itself.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

logger = logging.getLogger("alembic.env")
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    return str(url) if url else get_settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )


def _acquire_lock(connection: Connection, timeout_s: float) -> None:
    # Session-level lock: held across the per-migration transactions and released if
    # this process dies. Polling try_lock bounds the wait with a clear error.
    deadline = time.monotonic() + timeout_s
    while not connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY}).scalar():
        if time.monotonic() > deadline:
            raise RuntimeError(f"another process held the migration lock for more than {timeout_s:.0f}s")
        connection.commit()
        time.sleep(0.2)
    connection.commit()


def _run_sync(connection: Connection) -> None:
    is_pg = connection.dialect.name == "postgresql"
    if is_pg:
        _acquire_lock(connection, float(config.attributes.get("lock_timeout_s", 300.0)))
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if is_pg:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            connection.commit()


async def _run_online() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())
