"""The service database goes away for a few seconds under load (a throwaway Postgres, stopped
and started again): the API answers 503 `database_unavailable` in the envelope and never a 500,
/health says unhealthy, the gateway keeps serving a model it has resolved and buffers its
captures and request-log rows, the running job pauses and resumes; once the database is back
every completion answered to a client is stored exactly once and the job finishes with one
W&B POST per step. (bench/reliability/outage.py runs the 10-30 s version.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from app.gateway.models import CapturedCompletion, GatewayRequest
from app.jobs.models import FineTuningJob
from app.state import app_state
from app_dev.throwaway_pg import ThrowawayPostgres
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.gateway import flush_writers, seed_model
from tests.fixtures.service import service_on, service_settings, wait_for_job

pytestmark = pytest.mark.e2e

BASE = "OpenPipe/Qwen3-14B-Instruct"
MESSAGES: list[Any] = [{"role": "user", "content": "Market 42 moved. What now?"}]


async def test_a_database_outage_answers_503_keeps_the_gateway_serving_and_loses_nothing(
    throwaway_pg: ThrowawayPostgres, emulator: EmulatorHandle
) -> None:
    emulator.set_pace(0.25)  # a step lasts ~1 s: the job is mid-training when the database goes
    settings = service_settings(
        throwaway_pg.url, emulator, inference={"flush_interval_s": 0.05, "resolve_cache_ttl_s": 0.2}
    )
    async with service_on(settings) as svc:
        await seed_model(svc.app, emulator, "agent", steps=(1,))
        ds = await make_dataset(svc.sessionmaker, groups=3)
        hp: Any = {"batch_size": 1}
        job = await svc.sdk.fine_tuning.jobs.create(
            model=BASE, training_file=ds.id, suffix="outage", hyperparameters=hp
        )
        answered: list[str] = []

        async def chat(trajectory_id: str) -> int:
            response = await svc.http.post(
                "/v1/chat/completions",
                json={"model": "agent", "messages": MESSAGES, "metadata": {"trajectory_id": trajectory_id}},
            )
            if response.status_code == 200:
                answered.append(trajectory_id)
            return response.status_code

        assert await chat("before") == 200  # resolved (and cached) while the database is up
        await wait_for_job(svc.sdk, job.id, until=("running",), timeout_s=30)

        throwaway_pg.stop()
        statuses: dict[str, list[int]] = {"chat": [], "api": [], "health": []}
        loop = asyncio.get_running_loop()
        outage_ends = loop.time() + 3.0
        n = 0
        while loop.time() < outage_ends:
            n += 1
            statuses["chat"].append(await chat(f"during-{n}"))
            api = await svc.http.get(f"/v1/fine_tuning/jobs/{job.id}")
            statuses["api"].append(api.status_code)
            if api.status_code == 503:
                assert api.json() == {
                    "error": {
                        "message": "the database is unavailable; retry later",
                        "type": "server_error",
                        "param": None,
                        "code": "database_unavailable",
                    }
                }
                assert api.headers["retry-after"] == "2"
            health = await svc.http.get("/health")
            statuses["health"].append(health.status_code)
            await asyncio.sleep(0.05)
        pending = len(app_state(svc.app).gateway.captures)
        throwaway_pg.start()

        assert set(statuses["chat"]) == {200}, statuses["chat"]
        assert set(statuses["api"]) == {503}, statuses["api"]
        assert set(statuses["health"]) == {503}, statuses["health"]
        assert pending > 0  # captures waited in the buffer for the database

        done = await wait_for_job(svc.sdk, job.id, timeout_s=90)
        assert done.status == "succeeded", done.error
        assert emulator.training_posts("outage") == 3  # paused and resumed: no step sent twice
        assert await chat("after") == 200
        await flush_writers(svc.app)

        async with svc.sessionmaker() as session:
            stored = (await session.scalars(sa.select(CapturedCompletion.trajectory_id))).all()
            logged = await session.scalar(
                sa.select(sa.func.count())
                .select_from(GatewayRequest)
                .where(GatewayRequest.status_code == 200)
            )
            row = await session.get(FineTuningJob, job.id)
        assert sorted(stored) == sorted(answered)  # each answered completion stored exactly once
        assert logged == len(answered)
        assert row is not None
        assert row.attempts >= 1


async def test_the_resolver_serves_its_last_answer_while_the_database_is_away(
    throwaway_pg: ThrowawayPostgres, emulator: EmulatorHandle
) -> None:
    settings = service_settings(throwaway_pg.url, emulator, inference={"resolve_cache_ttl_s": 0.05})
    async with service_on(settings) as svc:
        seeded = await seed_model(svc.app, emulator, "agent", steps=(1, 2))
        resolver = app_state(svc.app).resolver
        assert (await resolver.resolve("agent")).upstream_model == seeded.artifact(2)
        throwaway_pg.stop()
        await asyncio.sleep(0.1)  # the entry has expired
        stale = await resolver.resolve("agent")
        unknown = svc.http.post("/v1/chat/completions", json={"model": "never-seen", "messages": MESSAGES})
        response = await unknown
        throwaway_pg.start()
    assert stale.upstream_model == seeded.artifact(2)
    assert resolver.stale_served >= 1
    # a name never resolved has no last answer: the client is told the database is away
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
