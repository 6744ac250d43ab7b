"""Declarative base, column types shared by every table, and the async engine/session factory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from app.config import Settings

# Postgres-native constraint names, fixed before the first migration so later
# migrations can refer to constraints by a predictable name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    # Read server defaults back after INSERT in the same round trip: no implicit IO under asyncio.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on both Postgres and SQLite (which drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSON documents: JSONB on Postgres, JSON text on SQLite.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


def to_unix(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file (the default lives in ./data/)."""
    if not url.startswith("sqlite"):
        return
    path = sa.engine.make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


# SQLSTATE classes of a database that is away, not of a bad statement: 08 connection exception,
# 57P operator intervention (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now:
# "the database system is starting up"). PostgreSQL docs, Appendix A.
UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P")


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (retry later), as opposed
    to an error in the statement or the data (which retrying does not fix)."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError):
        return True  # sa.exc.TimeoutError: no pooled connection within pool_timeout
    if isinstance(exc, sa.exc.DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        return bool(exc.connection_invalidated) or sqlstate.startswith(UNAVAILABLE_SQLSTATE_PREFIXES)
    return isinstance(exc, OSError | TimeoutError)


def wrap_connect_errors(engine: AsyncEngine) -> None:
    """Raise a failed connect as the driver's `OperationalError` (which SQLAlchemy wraps as its
    own), like any other unreachable-database error. asyncpg raises the socket's own
    `ConnectionRefusedError` / `OSError` / `TimeoutError` from connect, and SQLAlchemy passes
    non-DBAPI errors through unwrapped, so a stopped Postgres would surface as an arbitrary
    exception (a 500) instead of the `database_unavailable` 503 every other path gives."""

    @event.listens_for(engine.sync_engine, "do_connect")
    def _on_connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, TimeoutError) as exc:
            raise dialect.loaded_dbapi.OperationalError(f"cannot connect: {exc}") from exc


def create_engine(settings: Settings, *, pool: bool = True, pre_ping: bool = True) -> AsyncEngine:
    """The process's engine: SQLite tuned for concurrent writers, or Postgres through asyncpg.
    `pre_ping` tests each pooled connection before use (one round trip per transaction)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        ensure_sqlite_dir(url)
        return create_sqlite_engine(url, busy_timeout_ms=settings.db.sqlite_busy_timeout_ms)
    kwargs: dict[str, Any] = {"pool_pre_ping": pre_ping}
    if pool:
        kwargs.update(
            pool_size=settings.db.pool_size,
            max_overflow=settings.db.max_overflow,
            pool_timeout=settings.db.pool_timeout_s,
        )
    else:
        kwargs["poolclass"] = NullPool
    engine = create_async_engine(url, **kwargs)
    wrap_connect_errors(engine)
    return engine


def create_sqlite_engine(
    url: str, *, busy_timeout_ms: int, foreign_keys: bool = True, **kwargs: Any
) -> AsyncEngine:
    """A SQLite engine whose writers queue on busy_timeout instead of failing with "database is locked"."""
    engine = create_async_engine(url, connect_args={"timeout": busy_timeout_ms / 1000}, **kwargs)
    tune_sqlite(engine, busy_timeout_ms, foreign_keys=foreign_keys)
    return engine


def tune_sqlite(engine: AsyncEngine, busy_timeout_ms: int, *, foreign_keys: bool = True) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching a new database to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A deferred transaction that later writes must upgrade its lock, and SQLite answers
        # that upgrade with SQLITE_BUSY at once ("database is locked") instead of waiting.
        # Taking the write lock at BEGIN makes concurrent writers queue on busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
