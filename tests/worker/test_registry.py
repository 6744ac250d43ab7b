"""The worker registry: workers announce themselves; the API refuses a job nobody could train
and reports live workers and whether W&B accepts the key in /health and /readyz."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from app.db import utcnow
from app.jobs.models import FineTuningJob
from app.queue import workers as registry
from app.queue.models import WandbKeyStatus, WorkerRecord
from tests.conftest import asgi_client
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import Service, StartService, running_worker

BASE = "OpenPipe/Qwen3-14B-Instruct"


async def announce(
    svc: Service, worker_id: str, *, key: bool, status: WandbKeyStatus, age_s: float = 0
) -> None:
    async with svc.sessionmaker() as session:
        await registry.beat(
            session,
            registry.WorkerInfo(
                id=worker_id,
                in_api=False,
                has_wandb_key=key,
                wandb_key_status=status,
                jobs_running=0,
                items_running=0,
                max_jobs=4,
                metrics_port=None,
            ),
        )
        if age_s:
            await session.execute(
                sa.update(WorkerRecord)
                .where(WorkerRecord.id == worker_id)
                .values(heartbeat_at=utcnow() - dt.timedelta(seconds=age_s))
            )
        await session.commit()


async def refused(svc: Service) -> dict[str, Any]:
    ds = await make_dataset(svc.sessionmaker)
    with pytest.raises(openai.BadRequestError) as caught:
        await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
    body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    async with svc.sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(FineTuningJob)) == 0
    return body


async def test_a_job_is_refused_when_no_key_is_set_anywhere(start_service: StartService) -> None:
    async with start_service(run_worker=False, wandb_api_key=None) as svc:
        body = await refused(svc)
    assert body["code"] == "wandb_not_configured"
    assert "WANDB_API_KEY" in body["message"]


async def test_a_job_is_refused_when_the_live_workers_have_no_key_or_a_refused_one(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:  # this API process has a key
        await announce(svc, "w-nokey", key=False, status=WandbKeyStatus.NOT_CONFIGURED)
        await announce(svc, "w-refused", key=True, status=WandbKeyStatus.REJECTED)
        body = await refused(svc)
    assert body["code"] == "wandb_not_configured"
    assert "WANDB_API_KEY is not set on w-nokey" in body["message"]
    assert "W&B refused the key of w-refused" in body["message"]


async def test_a_job_is_accepted_when_one_live_worker_can_train_even_if_the_api_has_no_key(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False, wandb_api_key=None) as svc:
        await announce(svc, "w-old", key=True, status=WandbKeyStatus.ACCEPTED, age_s=3600)  # not live
        assert (await refused(svc))["code"] == "wandb_not_configured"
        await announce(svc, "w-good", key=True, status=WandbKeyStatus.UNREACHABLE)  # W&B did not say no
        ds = await make_dataset(svc.sessionmaker)
        job = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        assert job.status == "queued"


async def test_a_worker_registers_beats_and_marks_itself_stopped(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    async with start_service(run_worker=False) as svc:
        async with running_worker(svc.app, worker_id="w-in-test", heartbeat_s=0.05):
            async with svc.sessionmaker() as session:
                row = await session.get(WorkerRecord, "w-in-test")
                assert row is not None
                first_beat = row.heartbeat_at
                assert (row.in_api, row.has_wandb_key, row.stopped_at) == (True, True, None)

            async def beat_again() -> bool:
                async with svc.sessionmaker() as session:
                    again = await session.get(WorkerRecord, "w-in-test")
                    return (
                        again is not None
                        and again.heartbeat_at > first_beat
                        and again.wandb_key_status == "accepted"
                    )

            from tests.fixtures.service import wait_until

            await wait_until(beat_again, what="a heartbeat with W&B's answer about the key")
            ready = (await svc.http.get("/readyz")).json()
            assert ready["workers"]["live"] == 1
            (listed,) = ready["workers"]["workers"]
            assert (listed["id"], listed["wandb_key"], listed["in_api"]) == ("w-in-test", "accepted", True)
        async with svc.sessionmaker() as session:
            row = await session.get(WorkerRecord, "w-in-test")
            assert row is not None
            assert row.stopped_at is not None
        assert (await svc.http.get("/readyz")).json()["workers"]["live"] == 0


async def test_health_reports_whether_wandb_accepts_the_key_from_one_cached_check(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    async with start_service(run_worker=False) as svc:
        async with asgi_client(svc.app, api_key=None) as anon:
            first = (await anon.get("/health")).json()
            second = (await anon.get("/health")).json()
    assert (first["wandb"], first["wandb_key"], second["wandb_key"]) == ("configured", "accepted", "accepted")
    assert emulator.requests("checkpoints.list") == 1  # cached: the second /health asked nobody
    assert emulator.api_key not in str(first)


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"wandb_api_key": "not-a-valid-key"}, "rejected"),
        ({"wandb_base_url": "http://127.0.0.1:9/v1"}, "unreachable"),
    ],
)
async def test_health_says_when_wandb_refuses_the_key_or_cannot_be_reached(
    start_service: StartService, emulator: EmulatorHandle, overrides: dict[str, Any], status: str
) -> None:
    async with start_service(run_worker=False, **overrides) as svc:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url="http://t") as anon:
            body = (await anon.get("/health")).json()
            ready = (await anon.get("/readyz")).json()
    assert (body["status"], body["wandb"], body["wandb_key"]) == ("healthy", "configured", status)
    assert ready["wandb_key"]["status"] == status
    assert ready["wandb_key"]["detail"]
