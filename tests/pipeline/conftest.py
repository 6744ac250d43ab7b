"""Fixtures for the trajectory pipeline: the service pointed at a real game database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.conftest import asgi_client, make_settings, truncate_all
from tests.pipeline.game import GameDB


@dataclass
class Pipeline:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    async def build(self, expect: str | None = "ready", **body: Any) -> dict[str, Any]:
        """POST /v1/datasets and wait for the build; returns the dataset object."""
        r = await self.client.post("/v1/datasets", params={"wait_s": 120}, json=body)
        assert r.status_code == 200, r.text
        dataset: dict[str, Any] = r.json()
        if expect is not None:
            assert dataset["status"] == expect, dataset
        return dataset

    async def groups(self, dataset_id: str) -> list[dict[str, Any]]:
        """Every group of a ready dataset, following the cursor pages."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if after:
                params["after"] = after
            r = await self.client.get(f"/v1/datasets/{dataset_id}/groups", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            out.extend(page["data"])
            if not page["has_more"]:
                return out
            after = page["last_id"]


@pytest.fixture(scope="session")
def game_dsn(babylon_db_factory: Callable[..., str]) -> str:
    """One schema-only game database for hand-written rows (truncated by `game`)."""
    return babylon_db_factory(generate=False)


@pytest.fixture
async def game(game_dsn: str) -> GameDB:
    db = GameDB(game_dsn)
    await db.truncate()
    return db


@pytest.fixture(scope="session")
def generated_dsn(babylon_db_factory: Callable[..., str]) -> str:
    """Generated game data (3 windows × 6 agents × 3 ticks), read-only for tests."""
    return babylon_db_factory(windows=3, agents=6, ticks=3, extra_args=("--trained-windows", "1"))


@pytest.fixture
def make_pipeline(db_url: str) -> Callable[..., AbstractAsyncContextManager[Pipeline]]:
    """`async with make_pipeline(babylon_dsn, **settings) as p:` — the app with that game DB."""

    @asynccontextmanager
    async def factory(babylon_dsn: str | None, **overrides: Any) -> AsyncIterator[Pipeline]:
        await truncate_all(db_url)
        settings = make_settings(db_url, babylon_database_url=babylon_dsn, **overrides)
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60), asgi_client(app) as client:
            yield Pipeline(app, client, settings)

    return factory


@pytest.fixture
async def pipeline(
    make_pipeline: Callable[..., AbstractAsyncContextManager[Pipeline]], game: GameDB
) -> AsyncIterator[Pipeline]:
    async with make_pipeline(game.dsn) as p:
        yield p
