"""Fixtures for jobs tests: the service (API + in-process worker) pointed at the W&B emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from openai.types.fine_tuning import FineTuningJob
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.main import create_app
from tests.conftest import TEST_API_KEY, make_settings
from tests.fixtures.emulator import EmulatorHandle

# Small timeouts so that every fault resolves in seconds.
FAST_WORKER: dict[str, Any] = {
    "poll_interval_s": 0.05,
    "event_poll_interval_s": 0.02,
    "heartbeat_s": 0.5,
    "lease_s": 5.0,
    "remote_timeout_s": 2.0,
    "submit_resolution_s": 3.0,
    "checkpoint_wait_s": 2.0,
    "step_watchdog_s": 20.0,  # generous: the machine running the tests may be loaded
    "shutdown_grace_s": 3.0,
    "remote_get_retries": 1,
}
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Service:
    app: FastAPI
    sdk: openai.AsyncOpenAI
    http: httpx.AsyncClient
    settings: Settings

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        maker: async_sessionmaker[AsyncSession] = self.app.state.sessionmaker
        return maker


StartService = Callable[..., AbstractAsyncContextManager[Service]]


def service_settings(db_url: str, emulator: EmulatorHandle, **overrides: Any) -> Settings:
    worker = {**FAST_WORKER, **overrides.pop("worker", {})}
    values: dict[str, Any] = {
        "run_worker": True,
        "wandb_base_url": emulator.base_url,
        "wandb_api_key": emulator.api_key,
        "worker": worker,
    }
    values.update(overrides)
    return make_settings(db_url, **values)


@pytest.fixture
def start_service(settings: Settings, emulator: EmulatorHandle) -> StartService:
    """`async with start_service(**settings_overrides) as svc:` (tables were emptied by `settings`)."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Service]:
        app = create_app(service_settings(settings.database_url, emulator, **overrides))
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
            http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {TEST_API_KEY}"},
            )
            sdk = openai.AsyncOpenAI(
                base_url="http://testserver/v1", api_key=TEST_API_KEY, http_client=http, max_retries=0
            )
            try:
                yield Service(app=app, sdk=sdk, http=http, settings=app.state.settings)
            finally:
                await sdk.close()

    return start


async def wait_for_job(
    sdk: openai.AsyncOpenAI, job_id: str, *, until: tuple[str, ...] = TERMINAL, timeout_s: float = 60.0
) -> FineTuningJob:
    """Poll until the job's status is in `until` (the timeout only guards against a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        job = await sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout_s}s (wanted {until})")
        await asyncio.sleep(0.05)


async def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
