"""Every injected W&B fault ends in the right terminal state and error code, never a second POST."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from app.jobs.models import JobStep
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService, wait_for_job

BASE = "OpenPipe/Qwen3-14B-Instruct"
TWO_STEPS: Any = {"batch_size": 1}


async def run_job(svc: Any, suffix: str, groups: int = 2) -> Any:
    ds = await make_dataset(svc.sessionmaker, groups=groups)
    job = await svc.sdk.fine_tuning.jobs.create(
        model=BASE, training_file=ds.id, suffix=suffix, hyperparameters=TWO_STEPS
    )
    return await wait_for_job(svc.sdk, job.id)


async def messages(svc: Any, job_id: str) -> list[str]:
    return [e.message async for e in await svc.sdk.fine_tuning.jobs.list_events(job_id, limit=100)]


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("accept_then_status", {"status": 502}),
        ("accept_then_status", {"status": 504}),  # a gateway timing out after W&B accepted the job
        ("accept_then_drop", {}),
    ],
)
async def test_post_whose_answer_is_lost_after_acceptance_is_resolved_from_checkpoints(
    start_service: StartService, emulator: EmulatorHandle, kind: str, options: dict[str, Any]
) -> None:
    emulator.inject("training_jobs.create", kind, skip=1, **options)  # the second step's POST
    async with start_service(worker={"submit_resolution_s": 10.0}) as svc:
        done = await run_job(svc, "lost-answer")
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model is not None
        assert done.fine_tuned_model.endswith(":step2")
        # exactly one POST per step reached W&B, and nothing was re-sent
        assert emulator.training_posts("lost-answer") == 2
        assert emulator.requests("training_jobs.create") == 2
        text = await messages(svc, done.id)
        assert any("answer to the training request was lost" in m for m in text)
        assert any("outcome resolved from the model's checkpoints" in m for m in text)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("status", {"status": 503}),
        ("drop", {}),
        # longer than WORKER__REMOTE_TIMEOUT_S: our client times out and W&B never sees the body
        ("hang", {"seconds": 60.0}),
    ],
)
async def test_post_that_never_reached_wandb_fails_with_submission_unknown_without_reposting(
    start_service: StartService, emulator: EmulatorHandle, kind: str, options: dict[str, Any]
) -> None:
    emulator.inject("training_jobs.create", kind, **options)
    async with start_service(worker={"submit_resolution_s": 1.0}) as svc:
        done = await run_job(svc, "never-sent")
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "submission_unknown"
        assert "not sent again" in done.error.message
        assert emulator.training_posts("never-sent") == 0
        assert emulator.requests("training_jobs.create") == 1
        async with svc.sessionmaker() as session:
            step = await session.scalar(sa.select(JobStep).where(JobStep.job_id == done.id))
            assert step is not None
            assert step.status == "failed"
            assert step.remote_job_id is None


async def test_rate_limited_post_is_retried_because_nothing_was_created(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "status", status=429, times=2)
    async with start_service() as svc:
        done = await run_job(svc, "limited")
        assert done.status == "succeeded", done.error
        assert emulator.training_posts("limited") == 2
        assert emulator.requests("training_jobs.create") == 4
        assert sum("rate limiting" in m for m in await messages(svc, done.id)) == 2


async def test_post_refused_with_4xx_fails_with_training_rejected(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "status", status=422, detail="trajectory_groups: bad")
    async with start_service() as svc:
        done = await run_job(svc, "refused")
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "training_rejected"
        assert "422" in done.error.message
        assert emulator.requests("training_jobs.create") == 1


async def test_training_failed_event_fails_the_job_with_its_message(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "training_failed", error_message="CUDA OOM", after_steps=1)
    async with start_service() as svc:
        done = await run_job(svc, "oom")
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "training_failed"
        assert "CUDA OOM" in done.error.message
        assert emulator.training_posts("oom") == 1  # the second step was never sent
        text = await messages(svc, done.id)
        assert text[0].startswith("Job failed (training_failed)")


async def test_5xx_while_polling_events_is_retried_and_the_job_succeeds(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    # more failures in a row than the client's own 3 retries
    emulator.inject("events", "status", status=503, times=4)
    async with start_service() as svc:
        done = await run_job(svc, "flaky-events")
        assert done.status == "succeeded", done.error
        assert emulator.training_posts("flaky-events") == 2
        assert emulator.counters()["faults_fired"]["events"] == 4


async def test_dropped_connection_while_polling_events_is_retried(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("events", "drop", times=5)
    async with start_service() as svc:
        done = await run_job(svc, "dropped-events")
        assert done.status == "succeeded", done.error
        assert emulator.counters()["faults_fired"]["events"] == 5


async def test_stalled_step_is_failed_by_the_watchdog(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "stall")
    async with start_service(worker={"step_watchdog_s": 1.0}) as svc:
        done = await run_job(svc, "stalled")
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "step_stalled"
        assert emulator.training_posts("stalled") == 1


async def test_checkpoint_listing_errors_while_resolving_are_retried(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "accept_then_drop")
    emulator.inject("checkpoints.list", "status", status=500, skip=1, times=5)
    async with start_service(worker={"submit_resolution_s": 15.0}) as svc:
        done = await run_job(svc, "resolve-retry", groups=1)
        assert done.status == "succeeded", done.error
        assert emulator.training_posts("resolve-retry") == 1


async def test_worker_without_a_wandb_key_fails_jobs_clearly(start_service: StartService) -> None:
    async with start_service(wandb_api_key=None) as svc:
        done = await run_job(svc, "no-key", groups=1)
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "wandb_not_configured"
