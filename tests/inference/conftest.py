"""Fixtures of the gateway tests: the service pointed at the W&B emulator (or at a recording
upstream), the official openai SDK as its client, a live uvicorn server for real streaming and
disconnects, and registry seeding through app.registry.service."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.config import Settings
from app.inference.gateway import Gateway
from app.main import create_app
from app.registry.models import Checkpoint, ServedModel
from app.registry.service import get_or_create_model, record_checkpoint, set_alias
from tests.conftest import TEST_API_KEY, asgi_client, make_settings, truncate_all
from tests.fixtures.emulator import EmulatorHandle
from tests.inference.recording_upstream import RecordingUpstream

PROJECT = "babylon-rl"
BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"
FAST_INFERENCE = {"flush_interval_s": 0.05, "read_timeout_s": 10.0, "connect_timeout_s": 2.0}


def gateway_settings(db_url: str, base_url: str, api_key: str | None, **inference: Any) -> Settings:
    return make_settings(
        db_url,
        wandb_base_url=base_url,
        wandb_api_key=api_key,
        inference={**FAST_INFERENCE, **inference},
    )


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


def sdk_for(app: FastAPI, api_key: str = TEST_API_KEY) -> openai.AsyncOpenAI:
    """The official async SDK talking to `app` in process (responses are buffered by ASGITransport)."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return openai.AsyncOpenAI(
        base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0
    )


@pytest.fixture
async def clean_db(db_url: str) -> str:
    await truncate_all(db_url)
    return db_url


@pytest.fixture
async def gw_app(clean_db: str, emulator: EmulatorHandle) -> AsyncIterator[FastAPI]:
    """The service with its gateway pointed at the emulator."""
    async with running_app(gateway_settings(clean_db, emulator.base_url, emulator.api_key)) as app:
        yield app


@pytest.fixture
async def sdk(gw_app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    client = sdk_for(gw_app)
    yield client
    await client.close()


@pytest.fixture
async def http(gw_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(gw_app) as client:
        yield client


@pytest.fixture
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


def gateway_of(app: FastAPI) -> Gateway:
    gateway: Gateway = app.state.gateway
    return gateway


async def flush_writers(app: FastAPI) -> None:
    gateway = gateway_of(app)
    await gateway.captures.flush()
    if gateway.request_log is not None:
        await gateway.request_log.flush()


# ------------------------------------------------------------------ registry seeding
@dataclass
class SeededModel:
    model: ServedModel
    checkpoints: dict[int, Checkpoint]

    def artifact(self, step: int) -> str:
        return self.checkpoints[step].artifact_name


async def seed_model(
    app: FastAPI,
    emulator: EmulatorHandle | None,
    name: str = "agent",
    *,
    steps: tuple[int, ...] = (1, 2, 3),
    metrics: dict[int, dict[str, float]] | None = None,
    aliases: dict[str, int] | None = None,
    job_id: str | None = None,
    fallback_to_base: bool = False,
    entity: str = "emulator-entity",
) -> SeededModel:
    """A model line with checkpoints at `steps` in our registry and, when given, the emulator."""
    async with app.state.sessionmaker() as session:
        model = await get_or_create_model(
            session, entity=entity, project=PROJECT, name=name, base_model=BASE_MODEL
        )
        model.fallback_to_base = fallback_to_base
        checkpoints: dict[int, Checkpoint] = {}
        for step in steps:
            checkpoints[step] = await record_checkpoint(
                session, model, step=step, metrics=(metrics or {}).get(step, {}), job_id=job_id, job_step=step
            )
            if emulator is not None:
                emulator.add_checkpoint(name, step=step, project=PROJECT)
        for alias, step in (aliases or {}).items():
            await set_alias(session, model, alias, checkpoints[step])
        await session.commit()
    return SeededModel(model, checkpoints)


# ------------------------------------------------------------------ a live server
def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) with uvicorn on a free loopback port in this event loop."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest owns signals
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(600):
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()
