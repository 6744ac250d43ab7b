"""W&B faults over real HTTP with ART's client (the emulator's injected faults): each is read
for what it means for the non-idempotent POST, and the job says so at once. Every fault at
every step state is unit-tested in tests/training; these prove the real client's errors map
onto the same cases."""

from __future__ import annotations

from typing import Any

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import Service, StartService, wait_for_job, wait_until

BASE = "OpenPipe/Qwen3-14B-Instruct"
TWO_STEPS: Any = {"batch_size": 1}


async def create(svc: Service, suffix: str, groups: int = 2) -> str:
    ds = await make_dataset(svc.sessionmaker, groups=groups)
    job = await svc.sdk.fine_tuning.jobs.create(
        model=BASE, training_file=ds.id, suffix=suffix, hyperparameters=TWO_STEPS
    )
    return job.id


async def messages(svc: Service, job_id: str) -> list[str]:
    return [e.message async for e in await svc.sdk.fine_tuning.jobs.list_events(job_id, limit=100)]


async def test_a_post_whose_answer_is_lost_after_acceptance_is_resolved_without_reposting(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "accept_then_status", status=502, skip=1)  # the second step's
    async with start_service(worker={"submit_resolution_s": 10.0}) as svc:
        done = await wait_for_job(svc.sdk, await create(svc, "lost-answer"))
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model is not None
        assert done.fine_tuned_model.endswith(":step2")
        assert emulator.requests("training_jobs.create") == 2  # nothing was re-sent
        text = await messages(svc, done.id)
        assert any("answered the training request with HTTP 502 (Bad gateway)" in m for m in text)
        assert any("outcome resolved from the model's checkpoints" in m for m in text)


async def test_a_500_to_the_post_warns_at_once_and_a_cancel_ends_the_wait(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject(
        "training_jobs.create", "status", status=500, detail="Failed to create job due to workflow error."
    )
    async with start_service(worker={"submit_resolution_s": 900.0}) as svc:
        job_id = await create(svc, "five-hundred")

        async def warned() -> bool:
            return any("answered the training request" in m for m in await messages(svc, job_id))

        await wait_until(warned, what="the warn event")
        (warning,) = [
            e
            for e in (await svc.sdk.fine_tuning.jobs.list_events(job_id, limit=100)).data
            if "answered" in e.message
        ]
        assert warning.level == "warn"
        assert "HTTP 500 (Failed to create job due to workflow error.)" in warning.message
        assert "up to 15 min" in warning.message
        running = await svc.sdk.fine_tuning.jobs.retrieve(job_id)
        assert running.status == "running"
        await svc.sdk.fine_tuning.jobs.cancel(job_id)
        done = await wait_for_job(svc.sdk, job_id, timeout_s=5)
        assert done.status == "cancelled"
        assert "W&B may still train it" in (await messages(svc, job_id))[0]
        assert emulator.requests("training_jobs.create") == 1


async def test_the_training_post_has_its_own_timeout_longer_than_other_calls(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    # W&B takes 0.6 s to accept the POST: longer than every other call may take, not the POST
    emulator.inject("training_jobs.create", "hang", seconds=0.6)
    worker = {"remote_timeout_s": 0.2, "training_post_timeout_s": 10.0, "remote_get_retries": 0}
    async with start_service(worker=worker) as svc:
        done = await wait_for_job(svc.sdk, await create(svc, "slow-post", groups=1))
        assert done.status == "succeeded", done.error
        assert emulator.requests("training_jobs.create") == 1


async def test_a_post_refused_with_422_fails_the_job_with_wandbs_message(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("training_jobs.create", "status", status=422, detail="trajectory_groups: bad")
    async with start_service() as svc:
        done = await wait_for_job(svc.sdk, await create(svc, "refused"))
        assert done.status == "failed"
        assert done.error is not None
        assert done.error.code == "training_rejected"
        assert "HTTP 422 (trajectory_groups: bad)" in done.error.message
        assert emulator.requests("training_jobs.create") == 1


async def test_event_polls_whose_connection_drops_are_retried_and_the_job_succeeds(
    start_service: StartService, emulator: EmulatorHandle
) -> None:
    emulator.inject("events", "drop", times=4)  # every retry of the client and ours (5xx: tests/training)
    async with start_service(worker={"remote_get_retries": 0}) as svc:
        done = await wait_for_job(svc.sdk, await create(svc, "flaky-events"))
        assert done.status == "succeeded", done.error
        assert emulator.counters()["faults_fired"]["events"] == 4
