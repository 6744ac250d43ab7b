from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from tests.conftest import asgi_client, create_pg_database, drop_pg_database
from tests.foundation.support import create_test_app


@pytest.fixture
def fresh_db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A brand-new empty database of the backend, for this test only."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    else:
        url = create_pg_database("tc_fresh")
        yield url
        drop_pg_database(url)


@pytest.fixture
async def test_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_test_app(settings)
    async with LifespanManager(application, startup_timeout=60, shutdown_timeout=60):
        yield application


@pytest.fixture
async def test_client(test_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(test_app) as c:
        yield c
