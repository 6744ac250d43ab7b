"""Cancel means cancelled, wherever the job stands: it ends `cancelled` (never `succeeded`),
nothing is sent after the cancel, a step W&B may still finish is `abandoned` and the cancel
event says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from app.datasets.models import Dataset
from app.jobs.models import FineTuningJob, JobStatus, StepStatus
from app.training.remote import RemoteUnavailable
from tests.training.conftest import Harness
from tests.training.fakes import FakeTraining

HTTP_502 = RemoteUnavailable("HTTP 502: Bad gateway", status=502, detail="Bad gateway")


def sending(fake: FakeTraining) -> str:
    return "submit"


def following(fake: FakeTraining) -> str:
    fake.script("hold")  # training_started, then W&B keeps training
    return "events"


def resolving(fake: FakeTraining) -> str:
    fake.fail("submit", HTTP_502)  # the answer is lost; the job watches for a checkpoint
    return "checkpoints_above"


def awaiting_checkpoint(fake: FakeTraining) -> str:
    fake.script("no_checkpoint")  # training_ended, the checkpoint is not listed yet
    fake.on("checkpoints_above", lambda: None)  # the first look finds nothing: `ended` is stored
    return "checkpoints_above"


def before_sending(fake: FakeTraining) -> str:
    return "latest_step"


POINTS: list[tuple[Callable[[FakeTraining], str], StepStatus | None, str | None]] = [
    (before_sending, None, None),  # the step was planned, never stored: nothing to abandon
    (sending, StepStatus.ABANDONED, "being sent"),
    (following, StepStatus.ABANDONED, "it may still finish"),
    (resolving, StepStatus.ABANDONED, "answer to its training request was lost"),
    (awaiting_checkpoint, StepStatus.ABANDONED, "its checkpoint was not recorded yet"),
]


@pytest.mark.parametrize(("arrange", "step_status", "says"), POINTS, ids=[p[0].__name__ for p in POINTS])
async def test_a_cancel_ends_the_job_cancelled_wherever_its_step_stands(
    harness: Harness, arrange: Callable[[FakeTraining], str], step_status: StepStatus | None, says: str | None
) -> None:
    job_id = await harness.create_job(groups=3)
    call = arrange(harness.fake)
    harness.fake.on(call, lambda: harness.cancel(job_id))
    job = await harness.run(job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.error is None
    assert job.cancel_requested_at is not None
    assert harness.fake.posts() <= 1  # nothing sent after the cancel
    assert [s.status for s in await harness.steps(job_id)] == ([step_status] if step_status else [])
    cancel = next(m for m in await harness.messages(job_id) if m.startswith("Job cancelled"))
    assert cancel.startswith("Job cancelled after 0 of 3 steps")
    if says is not None:
        assert says in cancel
        assert "marked late" in cancel
    # the virtual clock shows how long the cancel took to be seen: at most one poll interval
    assert harness.sample("jobs_finished_total", {"status": "cancelled"}) == 1


async def test_a_cancel_during_the_post_keeps_wandbs_training_job_id_for_its_late_checkpoint(
    harness: Harness,
) -> None:
    job_id = await harness.create_job(groups=2)
    harness.fake.on("submit", lambda: harness.cancel(job_id))
    await harness.run(job_id)
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.ABANDONED
    assert step.remote_job_id == harness.fake.last_job().id  # the shielded POST still recorded it
    assert harness.fake.posts() == 1


async def test_a_cancel_between_steps_sends_nothing_more_and_keeps_the_checkpoints(harness: Harness) -> None:
    job_id = await harness.create_job(groups=3)
    harness.fake.on("latest_step", lambda: None)  # step 1
    harness.fake.on("latest_step", lambda: harness.cancel(job_id))  # before step 2 is sent
    job = await harness.run(job_id)
    assert job.status == JobStatus.CANCELLED
    assert harness.fake.posts() == 1
    assert job.fine_tuned_model is not None
    assert job.fine_tuned_model.endswith(":step1")
    steps = await harness.steps(job_id)
    assert [s.status for s in steps] == [StepStatus.SUCCEEDED]  # step 2 was never stored
    assert (await harness.messages(job_id))[
        -1
    ] == "Job cancelled after 1 of 3 steps; its checkpoints are kept"


async def test_a_cancel_seen_only_in_the_database_stops_the_job_at_its_next_write(harness: Harness) -> None:
    """The worker's cancel watch has not run yet: the step's completion still sees the cancel
    under the job's row lock, so the job never ends succeeded after the cancel was accepted."""
    job_id = await harness.create_job(groups=1)

    async def accept_cancel_only() -> None:
        async with harness.sessionmaker() as session:
            from app.jobs import service

            await service.cancel_job(session, harness.settings, job_id)
            await session.commit()

    harness.fake.on("checkpoints_above", accept_cancel_only)
    job = await harness.run(job_id)
    assert job.status == JobStatus.CANCELLED
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.ABANDONED  # its checkpoint exists; it is recorded late
    assert await harness.checkpoints() == []


async def test_a_cancel_while_the_job_waits_for_its_dataset_ends_it_at_once(harness: Harness) -> None:
    job_id = await harness.create_job(groups=1)
    async with harness.sessionmaker() as session:  # as POST /train creates it: building its dataset
        job = await session.get(FineTuningJob, job_id)
        assert job is not None
        job.status = JobStatus.VALIDATING
        await session.execute(
            sa.update(Dataset).where(Dataset.id == job.dataset_id).values(status="building")
        )
        await session.commit()
    original_wait = harness.clock.wait
    waits: list[float] = []

    async def wait(event: Any, seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            await harness.cancel(job_id)
        await original_wait(event, seconds)

    harness.clock.wait = wait  # type: ignore[method-assign]
    job = await harness.run(job_id)
    assert job.status == JobStatus.CANCELLED
    assert (await harness.messages(job_id))[-1] == "Job cancelled before it started"
    assert harness.fake.calls == []
    assert all(w <= harness.settings.worker.poll_interval_s for w in waits)


async def test_a_queued_job_no_worker_holds_is_cancelled_by_the_api_at_once(harness: Harness) -> None:
    job_id = await harness.create_job(groups=1)
    job = await harness.cancel(job_id)
    assert job.status == JobStatus.CANCELLED
    assert (await harness.messages(job_id))[-1] == "Job cancelled before it started"


async def test_a_job_whose_worker_died_mid_step_is_cancelled_by_the_api_and_its_step_abandoned(
    harness: Harness,
) -> None:
    harness.fake.script("hold")
    job_id = await harness.create_job(groups=2)

    async def die() -> None:  # the worker dies while following the events: its lease lapses
        async with harness.sessionmaker() as session:
            await session.execute(
                sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(worker_id="dead-worker")
            )
            await session.commit()

    harness.fake.on("events", die)
    await harness.run(job_id)
    harness.runner = None
    job = await harness.cancel(job_id)  # lease_expires_at is in the past for the dead worker? no:
    # the claim's lease is still running, so the cancel waits for the (dead) worker's lease
    assert job.status == JobStatus.RUNNING
    async with harness.sessionmaker() as session:
        await session.execute(
            sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(lease_expires_at=None)
        )
        await session.commit()
    job = await harness.cancel(job_id)
    assert job.status == JobStatus.CANCELLED
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.ABANDONED
    assert "it may still finish" in (await harness.messages(job_id))[-1]


async def test_a_failure_after_an_accepted_cancel_still_ends_the_job_cancelled(harness: Harness) -> None:
    harness.fake.script("fail", error="OOM")

    async def accept_cancel_only() -> None:
        async with harness.sessionmaker() as session:
            from app.jobs import service

            await service.cancel_job(session, harness.settings, job_id)
            await session.commit()

    job_id = await harness.create_job(groups=1)
    harness.fake.on("events", accept_cancel_only)
    job = await harness.run(job_id)
    assert job.status == JobStatus.CANCELLED
