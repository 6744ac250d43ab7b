"""Alembic environment: async engine, URL from the service settings, one migrator at a time.

Concurrent `training-control migrate` / migrate-on-start processes are serialised:
- Postgres: a session-level advisory lock held for the whole upgrade (not a transaction lock,
  which `transaction_per_migration` would release between revisions). A session lock dies
  with its connection, so a crashed migrator cannot wedge the others.
- SQLite: the whole upgrade is one `BEGIN IMMEDIATE` transaction; the version is read inside
  it, so a late process waits for the write lock and then finds the schema at head.
"""

from __future__ import annotations

import asyncio
import logging
import time
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import get_settings
from app.db import create_sqlite_engine
from app.migrations import DEFAULT_LOCK_TIMEOUT_S, MIGRATION_LOCK_KEY, MigrationLockTimeout
from app.models import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("database_url"):
    # Only when run as the `alembic` command: the service configures logging itself.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

logger = logging.getLogger("alembic.env")
target_metadata = Base.metadata
LOCK_TIMEOUT_S = float(config.attributes.get("lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S))


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


def _acquire_pg_lock(connection: Connection) -> None:
    # Poll try_lock rather than block in pg_advisory_lock, so the wait is bounded and ends
    # with a clear error instead of hanging every replica behind a stuck migration.
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    waited = False
    while not connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY}).scalar():
        connection.commit()
        if not waited:
            logger.info("migrate.waiting_for_lock")
            waited = True
        if time.monotonic() > deadline:
            raise MigrationLockTimeout(
                f"another process held the migration lock for more than {LOCK_TIMEOUT_S:.0f}s"
            )
        time.sleep(0.2)
    connection.commit()


def _release_pg_lock(connection: Connection) -> None:
    if connection.in_transaction():
        # A failed migration leaves an aborted transaction that would refuse the unlock.
        connection.rollback()
    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
    connection.commit()


def _run_sync(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # BEGIN IMMEDIATE (db.tune_sqlite): the write lock is the migration lock. Alembic sees
        # an external transaction and runs every revision inside it; SQLite DDL is transactional.
        with connection.begin():
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
        return
    _acquire_pg_lock(connection)
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        _release_pg_lock(connection)


def _engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Foreign keys off while migrating: SQLite batch operations copy and drop tables, and a
        # dropped parent with ON DELETE CASCADE would otherwise delete its children's rows.
        return create_sqlite_engine(
            url, busy_timeout_ms=int(LOCK_TIMEOUT_S * 1000), foreign_keys=False, poolclass=pool.NullPool
        )
    return create_async_engine(url, poolclass=pool.NullPool)


async def _run_online() -> None:
    engine = _engine(_database_url())
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
