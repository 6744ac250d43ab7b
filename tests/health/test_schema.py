"""A schema that is not at head: refused at start, reported while running (app/health/schema.py).

With MIGRATE_ON_START=false the app refuses to start in one line naming the revisions and the
command to run; when the schema falls behind under a running service, `/health` and `/readyz`
answer 503 with that reason, API calls answer 503 in the error envelope (not an opaque 500),
and the worker pauses with one log line until the schema is back at head.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app import migrations
from app.db import create_engine, create_sessionmaker
from app.health.schema import SchemaNotAtHead, WhileSchemaAtHead, read_schema_state
from app.main import create_app
from app.state import app_state
from app.worker.loop import Worker
from app.worker.metrics import WorkerMetrics
from tests.conftest import asgi_client, make_settings
from tests.fixtures.support import free_port

HEAD = max(migrations.head_revisions())


async def upgrade(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(migrations.upgrade, url, revision)


async def downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(migrations.downgrade, url, revision)


async def test_the_app_refuses_to_start_on_a_schema_behind_head(fresh_db_url: str) -> None:
    await upgrade(fresh_db_url, "0001")
    app = create_app(make_settings(fresh_db_url, migrate_on_start=False))
    with pytest.raises(SchemaNotAtHead) as refused:
        async with LifespanManager(app, startup_timeout=60):
            pass
    message = str(refused.value)
    assert message == (
        f"the database schema is at 0001 but this version needs {HEAD}: run `training-control migrate`"
    )
    assert "\n" not in message


async def test_an_empty_database_is_refused_with_the_command_to_run(fresh_db_url: str) -> None:
    app = create_app(make_settings(fresh_db_url, migrate_on_start=False))
    with pytest.raises(SchemaNotAtHead, match=r"no schema .*run `training-control migrate`"):
        async with LifespanManager(app, startup_timeout=60):
            pass


async def test_migrate_on_start_brings_the_schema_to_head_before_serving(fresh_db_url: str) -> None:
    app = create_app(make_settings(fresh_db_url, migrate_on_start=True))
    async with LifespanManager(app, startup_timeout=60), asgi_client(app, api_key=None) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert (await read_schema_state(app_state(app).engine)).at_head


@pytest.fixture
async def running_app(fresh_db_url: str) -> AsyncIterator[FastAPI]:
    await upgrade(fresh_db_url)
    app = create_app(make_settings(fresh_db_url))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


API_CALLS = [
    ("GET", "/v1/files"),
    ("GET", "/v1/datasets"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-0123456789abcdef01234567"),
    ("GET", "/v1/trajectories"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/models"),
    ("GET", "/v1/scores"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-0123456789abcdef01234567/checkpoints"),
]


async def test_a_schema_that_falls_behind_while_running_is_a_clear_503_everywhere(
    running_app: FastAPI, fresh_db_url: str
) -> None:
    async with asgi_client(running_app) as client:
        assert (await client.get("/health")).status_code == 200
        await downgrade(fresh_db_url)

        health = await client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert (body["status"], body["database"], body["schema"]) == ("unhealthy", "connected", "not_at_head")
        assert body["reason"] == (
            f"the database has no schema (no migration applied; head is {HEAD}): run `training-control migrate`"
        )
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["migrations"] == body["reason"]

        for method, path in API_CALLS:
            response = await client.request(method, path, json={"source": "pushed", "scenario_ids": ["s"]})
            assert response.status_code == 503, (method, path, response.text)
            error = response.json()["error"]
            assert error["code"] == "schema_not_at_head", (method, path)
            assert error["type"] == "server_error"
            assert error["message"] == body["reason"], (method, path)

        await upgrade(fresh_db_url)
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/files")).status_code == 200


async def test_an_unreachable_database_is_not_reported_as_a_schema_problem() -> None:
    # The app starts (the database may come back) and does not claim a migration would help.
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    app = create_app(make_settings(url, migrate_on_start=False))
    async with LifespanManager(app, startup_timeout=60), asgi_client(app) as client:
        health = await client.get("/health")
        response = await client.get("/v1/files")
    assert health.status_code == 503
    assert "reason" not in health.json()
    assert response.status_code in (500, 503), response.text
    assert response.json()["error"]["code"] != "schema_not_at_head"


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_the_worker_pauses_with_one_line_while_the_schema_is_behind(
    fresh_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    await upgrade(fresh_db_url)
    settings = make_settings(fresh_db_url, worker={"poll_interval_s": 0.05})
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    started: list[Worker] = []

    def make_worker() -> Worker:
        worker = Worker(settings, sessionmaker, metrics=WorkerMetrics(CollectorRegistry()))
        started.append(worker)
        return worker

    gate = WhileSchemaAtHead(engine, make_worker, interval_s=0.05)
    try:
        await gate.start()
        assert gate.service is started[0]
        # Step by step, as an operator's restore might: still one line for the whole episode.
        await downgrade(fresh_db_url, "0002")
        await wait_for(lambda: gate.service is None)
        # The polls that raced the check (a loaded machine may let one or two through) and no more.
        raced = [m for m in caplog.messages if m.startswith("worker.claim_failed")]
        assert len(raced) <= 3, raced
        await downgrade(fresh_db_url)
        # Long enough for dozens of claim polls (0.05 s) had the worker kept polling.
        await asyncio.sleep(2.0)
        assert gate.service is None
        waiting = [m for m in caplog.messages if m.startswith("worker.waiting")]
        # One line for the whole episode (the revision it names is wherever the check caught
        # the downgrade on its way down).
        assert len(waiting) == 1, waiting
        assert re.fullmatch(
            rf"worker.waiting reason=the database schema is at 00\d\d but this version needs {HEAD}: "
            r"run `training-control migrate`",
            waiting[0],
        ), waiting
        failed_claims = [m for m in caplog.messages if m.startswith("worker.claim_failed")]
        assert failed_claims == raced, "the paused worker kept polling"

        await upgrade(fresh_db_url)
        await wait_for(lambda: gate.service is not None)
        assert gate.service is started[1]
        assert any(m.startswith("worker.resumed") for m in caplog.messages)
    finally:
        await gate.stop()
        await engine.dispose()


async def test_the_health_check_is_public_and_cheap_when_all_is_well(anon_client: httpx.AsyncClient) -> None:
    body = (await anon_client.get("/health")).json()
    assert "schema" not in body
    assert "reason" not in body
