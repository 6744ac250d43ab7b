"""Shared fixtures: a migrated database per backend (SQLite and real Postgres), an app with
its lifespan running, an httpx client over ASGITransport, and the official openai SDK.

Every test that uses `db_url` (directly or through `app`) runs once per backend. Tables are
emptied before each test. Postgres tests need the server at TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres); they fail in CI (CI=true) when it is
unreachable and are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrations
from app.config import Settings, load_settings
from app.main import create_app, install_extensions
from app.models import Base

pytest_plugins = [
    "tests.fixtures.babylon",
    "tests.fixtures.core",
    "tests.fixtures.emulator",
    "tests.fixtures.gateway",
    "tests.fixtures.pipeline",
    "tests.fixtures.service",
    "tests.fixtures.throwaway_pg",
]

# Keep ART / LiteLLM / wandb from reaching the internet or reading the W&B key (art-serverless.md §9).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.pop("WANDB_API_KEY", None)

# What the composition root does in production: every test sees the game adapters installed,
# whether or not it builds an app (a test that starts a Worker directly hands off jobs too).
install_extensions()

TEST_API_KEY = "test-key-" + "x" * 24
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = [b.strip() for b in os.environ.get("TEST_BACKENDS", "sqlite,postgres").split(",") if b.strip()]
if not BACKENDS or set(BACKENDS) - {"sqlite", "postgres"}:
    raise pytest.UsageError(f"TEST_BACKENDS must list sqlite and/or postgres, got {BACKENDS!r}")
# In CI a missing Postgres is a failure, never a silent skip.
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _pg_reachable() -> bool:
    url = sa.engine.make_url(PG_ADMIN_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1):
            return True
    except OSError:
        return False


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _pg_admin(sql: str) -> None:
    engine = create_async_engine(_asyncpg_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


def run_blocking(coro_fn: Any, *args: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro_fn(*args)).result()


def create_pg_database(prefix: str = "tc_test") -> str:
    """Create an empty Postgres database and return its asyncpg URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    run_blocking(_pg_admin, f'CREATE DATABASE "{name}"')
    return str(
        sa.engine.make_url(_asyncpg_url(PG_ADMIN_URL))
        .set(database=name)
        .render_as_string(hide_password=False)
    )


def drop_pg_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    run_blocking(_pg_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres" and not _pg_reachable():
        if IN_CI:
            pytest.fail(f"Postgres is not reachable at {PG_ADMIN_URL}; .ci/run should have started it")
        pytest.skip(f"Postgres is not reachable at {PG_ADMIN_URL}")
    return name


@pytest.fixture(scope="session")
def empty_db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A new, empty database of the backend (no tables)."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "empty.db"
        yield f"sqlite+aiosqlite:///{path}"
    else:
        url = create_pg_database()
        yield url
        drop_pg_database(url)


@pytest.fixture(scope="session")
def db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of the backend, migrated to head once per session by Alembic."""
    if backend == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "service.db"
        url = f"sqlite+aiosqlite:///{path}"
        migrations.upgrade(url)
        yield url
    else:
        url = create_pg_database()
        migrations.upgrade(url)
        yield url
        drop_pg_database(url)


async def truncate_all(url: str) -> None:
    """Empty every table. DELETE, not TRUNCATE, on Postgres too: a test leaves few rows, and
    TRUNCATE of ~30 tables costs 0.2-0.6 s (new files for each), DELETE ~30 ms."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            existing = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
            for table in reversed(Base.metadata.sorted_tables):
                if table.name in existing:
                    await conn.execute(table.delete())
    finally:
        await engine.dispose()


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": db_url,
        "api_keys": TEST_API_KEY,
        "run_worker": False,
        "migrate_on_start": False,
        "wandb_base_url": "http://127.0.0.1:9/v1",
    }
    values.update(overrides)
    # No spool unless a test asks for one: a file left in a shared directory would be replayed
    # into the next test's database.
    inference = dict(values.get("inference") or {})
    inference.setdefault("spool_dir", "")
    values["inference"] = inference
    return load_settings(**values)


@pytest.fixture
async def settings(db_url: str) -> Settings:
    await truncate_all(db_url)
    return make_settings(db_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=60, shutdown_timeout=60):
        yield application


def asgi_client(app: FastAPI, *, api_key: str | None = TEST_API_KEY, **kwargs: Any) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers, **kwargs
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
async def anon_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, api_key=None) as c:
        yield c


@pytest.fixture
async def openai_client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    sdk = openai.AsyncOpenAI(
        base_url="http://testserver/v1", api_key=TEST_API_KEY, http_client=http, max_retries=0
    )
    yield sdk
    await sdk.close()
