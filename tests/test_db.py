"""Database: the SQLite default in ./data/, SQLite tuning, no "database is locked", the
Postgres pool, and the constraint naming convention."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrations
from app.db import NAMING_CONVENTION, Base, create_engine, create_sqlite_engine
from app.main import create_app
from app.models import Base as AllModels
from app.state import app_state
from tests.conftest import make_settings


async def test_default_sqlite_database_is_created_in_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = make_settings("sqlite+aiosqlite:///./data/training.db")
    assert settings.database_url == "sqlite+aiosqlite:///./data/training.db"
    assert not (tmp_path / "data").exists()
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()
    assert (tmp_path / "data" / "training.db").is_file()


async def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
        migrate_on_start=True,
        db={"sqlite_busy_timeout_ms": 12345},
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60):
        async with app_state(app).engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
    assert pragmas == {"journal_mode": "wal", "busy_timeout": 12345, "foreign_keys": 1, "synchronous": 1}


async def test_sqlite_foreign_keys_are_enforced(tmp_path: Path) -> None:
    engine = create_sqlite_engine(f"sqlite+aiosqlite:///{tmp_path / 'fk.db'}", busy_timeout_ms=5000)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            await conn.exec_driver_sql(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id))"
            )
        with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"):
            async with engine.begin() as conn:
                await conn.exec_driver_sql("INSERT INTO child (id, p) VALUES (1, 42)")
    finally:
        await engine.dispose()


async def test_concurrent_sqlite_writers_from_two_engines_never_see_database_is_locked(
    tmp_path: Path,
) -> None:
    """Two engines stand for two processes. Each transaction reads, then writes: without
    BEGIN IMMEDIATE the read snapshot goes stale and SQLite answers the write with an
    immediate SQLITE_BUSY ("database is locked"), whatever busy_timeout says."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    engines = [create_sqlite_engine(url, busy_timeout_ms=30_000) for _ in range(2)]
    try:
        async with engines[0].begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")

        async def read_then_write(engine: AsyncEngine, i: int) -> None:
            async with engine.begin() as conn:
                n = (await conn.exec_driver_sql("SELECT count(*) FROM counter")).scalar_one()
                await asyncio.sleep(0)  # let the other writers interleave
                await conn.exec_driver_sql(f"INSERT INTO counter (n) VALUES ({n + i})")

        await asyncio.gather(*(read_then_write(engines[i % 2], i) for i in range(40)))
        async with engines[1].connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM counter")).scalar_one() == 40
    finally:
        for engine in engines:
            await engine.dispose()


async def test_postgres_pool_is_sized_by_settings(backend: str, db_url: str) -> None:
    if backend != "postgres":
        pytest.skip("the pool size applies to Postgres")
    settings = make_settings(db_url, db={"pool_size": 3, "max_overflow": 2, "pool_timeout_s": 7})
    engine = create_engine(settings)
    try:
        pool = engine.sync_engine.pool
        assert isinstance(pool, sa.pool.AsyncAdaptedQueuePool)
        assert pool.size() == 3
        assert pool._max_overflow == 2
        assert pool._timeout == 7

        async def hold() -> None:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT pg_sleep(0.05)"))

        await asyncio.gather(*(hold() for _ in range(5)))  # pool_size + max_overflow connections
        assert pool.checkedout() == 0
    finally:
        await engine.dispose()


def test_metadata_has_the_postgres_native_naming_convention() -> None:
    assert Base.metadata.naming_convention == NAMING_CONVENTION
    assert NAMING_CONVENTION["pk"] == "%(table_name)s_pkey"
    assert NAMING_CONVENTION["fk"] == "%(table_name)s_%(column_0_N_name)s_fkey"


def _expected_patterns(table: str) -> dict[str, re.Pattern[str]]:
    return {
        "pk": re.compile(rf"^{table}_pkey$"),
        "uq": re.compile(rf"^{table}_\w+_key$"),
        "fk": re.compile(rf"^{table}_\w+_fkey$"),
        "ix": re.compile(r"^ix_\w+$"),
        "ck": re.compile(rf"^{table}_\w+_check$"),
    }


def test_every_model_constraint_follows_the_convention() -> None:
    wrong = []
    for table in AllModels.metadata.sorted_tables:
        patterns = _expected_patterns(table.name)
        for constraint in table.constraints:
            kind = {
                sa.PrimaryKeyConstraint: "pk",
                sa.UniqueConstraint: "uq",
                sa.ForeignKeyConstraint: "fk",
                sa.CheckConstraint: "ck",
            }[type(constraint)]
            name = str(constraint.name) if constraint.name else ""
            if not patterns[kind].match(name):
                wrong.append(f"{table.name}: {kind} {name or '<unnamed>'}")
        for index in table.indexes:
            if not patterns["ix"].match(str(index.name)):
                wrong.append(f"{table.name}: index {index.name}")
    assert wrong == []


async def test_migrated_database_uses_the_convention_names(db_url: str) -> None:
    engine = create_engine(make_settings(db_url), pool=False)
    wrong = []
    try:
        async with engine.connect() as conn:

            def inspect(sync_conn: sa.Connection) -> None:
                insp = sa.inspect(sync_conn)
                for table in insp.get_table_names():
                    if table == "alembic_version":
                        continue
                    patterns = _expected_patterns(table)
                    pk = insp.get_pk_constraint(table).get("name")
                    if sync_conn.dialect.name == "postgresql" and not patterns["pk"].match(pk or ""):
                        wrong.append(f"{table}: pk {pk}")
                    for uq in insp.get_unique_constraints(table):
                        if not patterns["uq"].match(uq["name"] or ""):
                            wrong.append(f"{table}: unique {uq['name']}")
                    for fk in insp.get_foreign_keys(table):
                        if not patterns["fk"].match(fk["name"] or ""):
                            wrong.append(f"{table}: fk {fk['name']}")

            await conn.run_sync(inspect)
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    finally:
        await engine.dispose()
    assert "api_keys" in tables
    assert wrong == []


def test_migrations_module_creates_the_sqlite_directory(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "db.sqlite"
    migrations.upgrade(f"sqlite+aiosqlite:///{target}")
    assert target.is_file()
    assert os.path.getsize(target) > 0


async def test_an_unreachable_postgres_raises_operational_error_marked_unavailable() -> None:
    # asyncpg raises the socket's ConnectionRefusedError, which SQLAlchemy would pass through
    # unwrapped (a 500 in the API); the engine turns it into OperationalError.
    from app.db import is_unavailable
    from app_dev.throwaway_pg import free_port

    settings = make_settings(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")
    engine = create_engine(settings)
    try:
        with pytest.raises(sa.exc.OperationalError) as raised:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()
    assert is_unavailable(raised.value)


def test_only_connection_failures_count_as_the_database_being_unavailable() -> None:
    from app.db import is_unavailable

    assert is_unavailable(sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked")))
    assert is_unavailable(sa.exc.TimeoutError("QueuePool limit reached"))
    assert is_unavailable(sa.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True))

    class Shutdown(Exception):
        sqlstate = "57P01"  # terminating connection due to administrator command

    class StartingUp(Exception):
        sqlstate = "57P03"  # the database system is starting up

    assert is_unavailable(sa.exc.DBAPIError("INSERT", {}, Shutdown("terminating connection")))
    assert is_unavailable(sa.exc.DBAPIError("SELECT 1", {}, StartingUp("starting up")))
    assert not is_unavailable(sa.exc.ProgrammingError("SELEC 1", {}, Exception("syntax error")))
    assert not is_unavailable(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_unavailable(ValueError("not the database"))
