"""The game's trigger (`POST /train`, watch mode) and the hand-off rows, against the game's real DDL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg
import sqlalchemy as sa

from app.gateway.models import CapturedCompletion
from app.ids import new_id
from app.jobs import handoff
from app.jobs.models import FineTuningJob, JobStep
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import choice
from tests.fixtures.service import Service, StartService, wait_for_job, wait_until

BabylonFactory = Callable[..., str]


async def game_rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def unused_window(dsn: str) -> tuple[str, list[str]]:
    """The newest window whose trajectories were never trained, and their ids."""
    rows = await game_rows(
        dsn,
        'SELECT "windowId", array_agg("trajectoryId" ORDER BY "trajectoryId") AS ids FROM trajectories '
        'WHERE NOT "usedInTraining" GROUP BY "windowId" ORDER BY "windowId" DESC LIMIT 1',
    )
    return rows[0]["windowId"], list(rows[0]["ids"])


async def insert_batch(
    dsn: str, batch_id: str, window: str, trajectory_ids: list[str], status: str = "pending"
) -> None:
    await game_rows(
        dsn,
        'INSERT INTO training_batches (id, "batchId", "scenarioId", "baseModel", "modelVersion", "trajectoryIds", '
        "\"rewardsJson\", status) VALUES ($1, $1, $2, $3, $4, $5, '[]', $6)",
        batch_id,
        window,
        "Qwen/Qwen2.5-0.5B-Instruct",  # what the game historically asks for: not a W&B model
        "v0.0.1",
        json.dumps(trajectory_ids),
        status,
    )


async def capture_agents(svc: Service, trajectory_ids: list[str]) -> None:
    """What the gateway stores when the agents' calls go through /v1/chat/completions."""
    async with svc.sessionmaker() as session:
        for i, tid in enumerate(trajectory_ids):
            session.add(
                CapturedCompletion(
                    id=new_id("cap"),
                    trajectory_id=tid,
                    agent_id=None,
                    step=0,
                    model="babylon-agent",
                    upstream_model="OpenPipe/Qwen3-14B-Instruct",
                    messages=[
                        {"role": "system", "content": "You trade on Babylon."},
                        {"role": "user", "content": "Markets are open. Decide."},
                    ],
                    tools=None,
                    choice=choice(f"BUY YES on market {i}", token_id=100 + i),
                    usage=None,
                    latency_ms=10.0,
                )
            )
        await session.commit()


async def job_of(svc: Service, job_id: str) -> FineTuningJob:
    async with svc.sessionmaker() as session:
        job = await session.get(FineTuningJob, job_id)
        assert job is not None
        return job


async def test_post_train_trains_the_batch_across_a_restart_and_hands_off_once(
    start_service: StartService, emulator: EmulatorHandle, babylon_db_factory: BabylonFactory
) -> None:
    dsn = babylon_db_factory(windows=2, agents=5)
    window, trajectory_ids = await unused_window(dsn)
    await insert_batch(dsn, "batch-test-1", window, trajectory_ids)
    versions_before = {r["version"] for r in await game_rows(dsn, "SELECT version FROM trained_models")}
    newest = await game_rows(dsn, 'SELECT version FROM trained_models ORDER BY "createdAt" DESC LIMIT 1')
    emulator.set_pace(0.1)
    overrides: dict[str, Any] = {"babylon_database_url": dsn}

    async with start_service(**overrides) as svc:
        await capture_agents(svc, trajectory_ids)
        response = await svc.http.post("/train", json={"batchId": "batch-test-1", "source": "game-admin"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "started"
        assert body["batchId"] == "batch-test-1"
        assert body["message"] == "Training started in background"
        job_id = body["job_id"]
        batch = (
            await game_rows(
                dsn, "SELECT status, \"startedAt\" FROM training_batches WHERE id = 'batch-test-1'"
            )
        )[0]
        assert batch["status"] == "training"
        assert batch["startedAt"] is not None

        async def first_step_sent() -> bool:
            async with svc.sessionmaker() as session:
                step = await session.scalar(sa.select(JobStep).where(JobStep.job_id == job_id))
            return step is not None and step.status == "submitted"

        await wait_until(first_step_sent, what="the first step sent")
    # the service stopped mid-step (graceful); a new one resumes the job
    async with start_service(**overrides) as svc:
        done = await wait_for_job(svc.sdk, job_id)
        assert done.status == "succeeded", done.error
        assert done.model == "OpenPipe/Qwen3-14B-Instruct"  # the batch's base model is not trainable on W&B
        assert done.fine_tuned_model is not None
        assert "/babylon-agent:step" in done.fine_tuned_model
        await wait_until(lambda: job_of(svc, job_id), what="job row")

        async def handed_off() -> bool:
            return (await job_of(svc, job_id)).handoff_status == "done"

        await wait_until(handed_off, what="the hand-off")
        steps = (await job_of(svc, job_id)).total_steps
        assert emulator.training_posts("babylon-agent") == steps

        batch = (await game_rows(dsn, "SELECT * FROM training_batches WHERE id = 'batch-test-1'"))[0]
        assert batch["status"] == "completed"
        assert batch["error"] is None
        assert batch["startedAt"] is not None
        assert batch["completedAt"] is not None
        models = await game_rows(dsn, "SELECT * FROM trained_models WHERE \"trainingBatch\" = 'batch-test-1'")
        assert len(models) == 1
        model = models[0]
        major, minor, patch = (int(x) for x in newest[0]["version"].removeprefix("v").split("."))
        assert model["version"] == f"v{major}.{minor}.{patch + 1}"
        assert model["version"] not in versions_before
        assert model["modelId"] == f"babylon-agent-{model['version']}"
        assert model["status"] == "ready"
        assert model["storagePath"] == done.fine_tuned_model  # the exact name the gateway serves
        assert model["updatedAt"] is not None
        assert model["avgReward"] is not None
        assert model["baseModel"] == "OpenPipe/Qwen3-14B-Instruct"
        used = await game_rows(
            dsn,
            'SELECT "usedInTraining", "trainedInBatch" FROM trajectories WHERE "trajectoryId" = ANY($1::text[])',
            trajectory_ids,
        )
        assert {(r["usedInTraining"], r["trainedInBatch"]) for r in used} == {(True, "batch-test-1")}

        # a hand-off repeated after a crash (our commit lost) writes nothing new
        async with svc.sessionmaker() as session:
            await session.execute(
                sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(handoff_status="pending")
            )
            await session.commit()
        await handoff.deliver(svc.settings, svc.sessionmaker, job_id)
        assert (
            len(
                await game_rows(dsn, "SELECT id FROM trained_models WHERE \"trainingBatch\" = 'batch-test-1'")
            )
            == 1
        )
        assert (await job_of(svc, job_id)).handoff_status == "done"

        again = await svc.http.post("/train", json={"batchId": "batch-test-1", "source": "game-admin"})
        assert again.status_code == 200
        assert again.json()["job_id"] == job_id


async def test_a_batch_without_trainable_data_fails_with_the_reason_written_to_the_game(
    start_service: StartService, emulator: EmulatorHandle, babylon_db_factory: BabylonFactory
) -> None:
    dsn = babylon_db_factory(windows=2, agents=4)
    window, trajectory_ids = await unused_window(dsn)
    await insert_batch(dsn, "batch-no-logprobs", window, trajectory_ids)
    async with start_service(babylon_database_url=dsn) as svc:  # no captures: nothing to train
        response = await svc.http.post("/train", json={"batchId": "batch-no-logprobs"})
        job_id = response.json()["job_id"]
        done = await wait_for_job(svc.sdk, job_id)
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "no_trainable_data"

        async def batch_failed() -> bool:
            rows = await game_rows(dsn, "SELECT status FROM training_batches WHERE id = 'batch-no-logprobs'")
            return rows[0]["status"] == "failed"

        await wait_until(batch_failed, what="the batch to be marked failed")
        batch = (
            await game_rows(
                dsn, "SELECT error, \"completedAt\" FROM training_batches WHERE id = 'batch-no-logprobs'"
            )
        )[0]
        assert job_id in batch["error"]
        assert "/v1/chat/completions" in batch["error"]
        assert not await game_rows(
            dsn, "SELECT id FROM trained_models WHERE \"trainingBatch\" = 'batch-no-logprobs'"
        )
        assert emulator.counters()["training_jobs_total"] == 0


async def test_watch_mode_picks_up_pending_batches_oldest_first(
    start_service: StartService, emulator: EmulatorHandle, babylon_db_factory: BabylonFactory
) -> None:
    dsn = babylon_db_factory(windows=2, agents=4)
    window, trajectory_ids = await unused_window(dsn)
    await insert_batch(dsn, "batch-watched", window, trajectory_ids)
    async with start_service(babylon_database_url=dsn, babylon={"watch_batches": True}) as svc:
        await capture_agents(svc, trajectory_ids)

        async def completed() -> bool:
            rows = await game_rows(dsn, "SELECT status FROM training_batches WHERE id = 'batch-watched'")
            return rows[0]["status"] == "completed"

        await wait_until(completed, timeout_s=60, what="the watched batch to complete")
        async with svc.sessionmaker() as session:
            job = await session.scalar(
                sa.select(FineTuningJob).where(FineTuningJob.babylon_batch_id == "batch-watched")
            )
        assert job is not None
        assert job.status == "succeeded"
        assert (job.job_metadata or {}).get("source") == "watch"
        assert (
            len(
                await game_rows(
                    dsn, "SELECT id FROM trained_models WHERE \"trainingBatch\" = 'batch-watched'"
                )
            )
            == 1
        )


async def test_post_train_without_batch_id_creates_a_batch_of_the_newest_window(
    start_service: StartService, babylon_db_factory: BabylonFactory
) -> None:
    dsn = babylon_db_factory(windows=2, agents=4)
    window, trajectory_ids = await unused_window(dsn)
    async with start_service(run_worker=False, babylon_database_url=dsn) as svc:
        response = await svc.http.post("/train", json={"source": "cron"})
        assert response.status_code == 200, response.text
        body = response.json()
        rows = await game_rows(dsn, 'SELECT * FROM training_batches WHERE "batchId" = $1', body["batchId"])
        assert len(rows) == 1
        batch = rows[0]
        assert batch["scenarioId"] == window
        assert batch["status"] == "training"
        assert sorted(json.loads(batch["trajectoryIds"])) == trajectory_ids
        assert batch["rewardsJson"] == "[]"
        assert batch["modelVersion"].startswith("v")
        job = await job_of(svc, body["job_id"])
        assert job.status == "validating_files"
        assert job.babylon_batch_id == batch["id"]


async def test_post_train_rejects_unknown_finished_and_unconfigured(
    start_service: StartService, babylon_db_factory: BabylonFactory
) -> None:
    dsn = babylon_db_factory(windows=1, agents=3)
    await insert_batch(dsn, "batch-done", "2025-11-14T00:00", ["x"], status="completed")
    async with start_service(run_worker=False, babylon_database_url=dsn) as svc:
        missing = await svc.http.post("/train", json={"batchId": "batch-nope"})
        assert missing.status_code == 404
        assert missing.json()["error"]["param"] == "batchId"
        finished = await svc.http.post("/train", json={"batchId": "batch-done"})
        assert finished.status_code == 409
        assert finished.json()["error"]["code"] == "batch_not_pending"
    async with start_service(run_worker=False) as svc:
        unconfigured = await svc.http.post("/train", json={"batchId": "batch-done"})
        assert unconfigured.status_code == 503
        assert unconfigured.json()["error"]["code"] == "babylon_not_configured"
