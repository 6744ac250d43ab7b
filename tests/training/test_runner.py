"""A job's life through the step state machine, on the real database and the in-memory W&B:
every transition, every W&B fault, and a worker resuming from each stored step state."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.jobs.models import FineTuningJob, JobStatus, JobStep, StepStatus
from app.training.control import Stop
from app.training.remote import RemoteRateLimited, RemoteRejected, RemoteUnavailable
from tests.training.conftest import WORKER_ID, Harness

HTTP_500 = RemoteUnavailable("HTTP 500: Internal server error", status=500, detail="Internal server error")


async def test_when_the_checkpoint_is_listed_at_training_ended_the_step_ends_in_one_transaction(
    harness: Harness,
) -> None:
    job_id = await harness.create_job(groups=1)
    await harness.run(job_id)
    (step,) = await harness.steps(job_id)
    assert (step.status, step.gradient_steps, step.checkpoint_step) == (StepStatus.SUCCEEDED, 2, 1)
    assert step.ended_at is not None
    assert harness.fake.calls.count("checkpoints_above") == 1  # listed once, right after training_ended


async def test_a_job_trains_every_step_once_and_succeeds_with_the_last_checkpoint(harness: Harness) -> None:
    job_id = await harness.create_job(groups=3)
    job = await harness.run(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.error is None
    assert harness.fake.posts() == 3
    steps = await harness.steps(job_id)
    assert [(s.number, s.status, s.base_step, s.checkpoint_step) for s in steps] == [
        (1, StepStatus.SUCCEEDED, 0, 1),
        (2, StepStatus.SUCCEEDED, 1, 2),
        (3, StepStatus.SUCCEEDED, 2, 3),
    ]
    assert all(s.remote_job_id and s.ended_at and s.started_at and s.finished_at for s in steps)
    assert job.fine_tuned_model == "wandb-artifact:///fake-entity/babylon-rl/line:step3"
    assert job.completed_steps == 3
    assert job.trained_tokens == 3 * 2 * 10  # num_trainable_tokens of each gradient step
    ckpts = await harness.checkpoints()
    assert [c.step for c in ckpts] == [1, 2, 3]
    # the mean of the step's gradient-step metrics, and what it trained on
    assert ckpts[0].metrics["train_loss"] == pytest.approx((0.5 + 0.4) / 2)
    assert (ckpts[0].metrics["num_groups"], ckpts[0].metrics["num_trajectories"]) == (1.0, 3.0)
    messages = await harness.messages(job_id)
    assert messages[-1] == f"The job has successfully completed: {job.fine_tuned_model}"
    assert sum(" done: checkpoint " in m for m in messages) == 3
    assert harness.finished == [job_id]


async def test_the_metrics_count_wandb_calls_steps_and_the_services_own_time(harness: Harness) -> None:
    job_id = await harness.create_job(groups=2)
    await harness.run(job_id)
    ok = {"outcome": "ok"}
    assert harness.sample("wandb_calls_total", {"route": "training_jobs.create", **ok}) == 2
    assert harness.sample("wandb_calls_total", {"route": "events.list", **ok}) == 2
    assert harness.sample("job_steps_total", {"status": "succeeded"}) == 2
    assert harness.sample("job_step_duration_seconds_count") == 2
    for phase in ("submit", "events", "checkpoint", "step"):
        assert harness.sample("job_step_overhead_seconds_count", {"phase": phase}) == 2
    assert harness.sample("jobs_finished_total", {"status": "succeeded"}) == 1


async def test_a_rate_limited_post_is_sent_again_because_nothing_was_created(harness: Harness) -> None:
    harness.fake.fail(
        "submit", RemoteRateLimited("HTTP 429: slow down", status=429, detail="slow down"), times=2
    )
    job_id = await harness.create_job(groups=1)
    job = await harness.run(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert harness.fake.posts() == 3
    assert len(harness.fake.jobs) == 1
    assert (
        sum("W&B is rate limiting (HTTP 429 (slow down))" in m for m in await harness.messages(job_id)) == 2
    )


async def test_a_post_rate_limited_past_the_retries_fails_with_its_error(harness: Harness) -> None:
    harness.fake.fail("submit", RemoteRateLimited("HTTP 429: busy", status=429, detail="busy"), times=None)
    job_id = await harness.create_job(groups=1)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "wandb_rate_limited"
    assert harness.fake.posts() == 3  # the first try and WORKER__RATE_LIMIT_RETRIES=2
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.CANCELLED  # nothing was ever created on W&B


async def test_a_post_refused_with_4xx_fails_the_job_naming_wandbs_answer(harness: Harness) -> None:
    harness.fake.fail("submit", RemoteRejected("HTTP 422: bad groups", status=422, detail="bad groups"))
    job_id = await harness.create_job(groups=2)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error == {
        "code": "training_rejected",
        "message": "W&B refused the training request of step 1: HTTP 422 (bad groups)",
        "param": None,
    }
    assert harness.fake.posts() == 1
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.FAILED


async def test_a_5xx_answer_to_the_post_warns_at_once_and_the_step_is_resolved_from_checkpoints(
    harness: Harness,
) -> None:
    harness.fake.fail("submit", HTTP_500, accepted=True)  # W&B created the job, then answered 500
    seen: list[str] = []

    async def look() -> None:  # right after the answer: the warning is already stored
        seen.extend(await harness.messages(job_id))

    harness.fake.on("checkpoints_above", look)
    job_id = await harness.create_job(groups=2)
    job = await harness.run(job_id)
    warning = next(m for m in seen if "answered the training request" in m)
    assert "HTTP 500 (Internal server error)" in warning
    assert "not sent again" in warning
    assert "WORKER__SUBMIT_RESOLUTION_S" in warning
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert harness.fake.posts() == 2  # one per step: the lost one was not re-sent
    steps = await harness.steps(job_id)
    assert [s.status for s in steps] == [StepStatus.SUCCEEDED, StepStatus.SUCCEEDED]
    assert steps[0].remote_job_id is None  # resolved without its events
    assert any("outcome resolved from the model's checkpoints" in m for m in await harness.messages(job_id))


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (HTTP_500, "HTTP 500 (Internal server error)"),
        (RemoteUnavailable("no answer in time (APITimeoutError)"), "no answer in time"),
        (RemoteUnavailable("ConnectError: connection refused"), "ConnectError"),
    ],
)
async def test_a_post_that_never_reached_wandb_fails_with_submission_unknown_after_the_window(
    harness: Harness, error: RemoteUnavailable, says: str
) -> None:
    harness.fake.fail("submit", error)
    job_id = await harness.create_job(groups=2)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "submission_unknown"
    assert "not sent again" in job.error["message"]
    assert harness.fake.posts() == 1
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.ABANDONED  # W&B might still have it
    messages = await harness.messages(job_id)
    warn = next(i for i, m in enumerate(messages) if "answered the training request" in m)
    assert says in messages[warn]
    assert messages[-1].startswith("Job failed (submission_unknown)")


async def test_training_failed_fails_the_job_with_wandbs_message_and_sends_nothing_more(
    harness: Harness,
) -> None:
    harness.fake.script("fail", error="CUDA OOM")
    job_id = await harness.create_job(groups=2)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert (job.error["code"], job.error["message"]) == (
        "training_failed",
        "W&B reported that step 1 failed: CUDA OOM",
    )
    assert harness.fake.posts() == 1
    (step,) = await harness.steps(job_id)
    assert (step.status, step.gradient_steps) == (StepStatus.FAILED, 1)


async def test_a_stalled_step_is_abandoned_by_the_watchdog_and_the_job_fails(harness: Harness) -> None:
    harness.fake.script("stall")
    job_id = await harness.create_job(groups=2)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "step_stalled"
    assert "may still finish" in job.error["message"]
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.ABANDONED
    assert harness.clock.monotonic() >= harness.settings.worker.step_watchdog_s


async def test_events_5xx_are_retried_and_the_job_succeeds(harness: Harness) -> None:
    harness.fake.fail("events", HTTP_500, times=4)
    job_id = await harness.create_job(groups=1)
    job = await harness.run(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert harness.sample("wandb_calls_total", {"route": "events.list", "outcome": "unavailable"}) == 4


async def test_a_training_job_wandb_no_longer_knows_fails_the_step(harness: Harness) -> None:
    harness.fake.fail("events", RemoteRejected("HTTP 404: Not found", status=404, detail="Not found"))
    job_id = await harness.create_job(groups=1)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "remote_job_lost"


async def test_a_checkpoint_never_listed_after_training_ended_abandons_the_step(harness: Harness) -> None:
    harness.fake.script("no_checkpoint")
    job_id = await harness.create_job(groups=1)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "checkpoint_missing"
    (step,) = await harness.steps(job_id)
    assert (step.status, step.ended_at is not None) == (StepStatus.ABANDONED, True)


async def test_checkpoint_listing_errors_are_retried(harness: Harness) -> None:
    harness.fake.fail("checkpoints_above", HTTP_500, times=2)
    job_id = await harness.create_job(groups=1)
    assert (await harness.run(job_id)).status == JobStatus.SUCCEEDED


async def test_an_unexpected_error_fails_the_job_with_internal_error(harness: Harness) -> None:
    async def explode() -> None:
        raise ValueError("boom")

    harness.fake.on("latest_step", explode)
    job_id = await harness.create_job(groups=1)
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "internal_error"
    assert "ValueError: boom" in job.error["message"]


async def test_no_wandb_key_on_the_worker_fails_the_job_naming_the_setting(harness: Harness) -> None:
    job_id = await harness.create_job(groups=1)
    harness.settings = harness.settings.model_copy(update={"wandb_api_key": None})
    job = await harness.run(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error is not None
    assert job.error["code"] == "wandb_not_configured"
    assert "WANDB_API_KEY" in job.error["message"]


# -- resuming from every stored step state ---------------------------------------------------


async def _take_over(harness: Harness, job_id: str) -> None:
    async with harness.sessionmaker() as session:
        await session.execute(
            sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(worker_id="other")
        )
        await session.commit()


async def _crash_during(harness: Harness, call: str, job_id: str, *, skip: int = 0) -> None:
    """Run the job until the (skip+1)-th `call`; there its worker dies: another one holds the
    lease from then on, so nothing more is written. Then that lease expires too."""
    for _ in range(skip):
        harness.fake.on(call, lambda: None)
    harness.fake.on(call, lambda: _take_over(harness, job_id))
    assert await harness.claim() == job_id
    await harness.make_runner(job_id).run()
    async with harness.sessionmaker() as session:
        await session.execute(
            sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(lease_expires_at=None)
        )
        await session.commit()


async def test_a_step_left_submitting_is_resolved_from_checkpoints_never_posted_again(
    harness: Harness,
) -> None:
    job_id = await harness.create_job(groups=1)

    async def crash_after_post_accepted() -> None:
        assert harness.runner is not None
        harness.runner.stop(Stop.LEASE_LOST)

    harness.fake.on("submit", crash_after_post_accepted)
    assert await harness.claim() == job_id
    await harness.make_runner(job_id).run()
    # the POST itself went out (it is shielded) but its outcome was never recorded
    async with harness.sessionmaker() as session:
        await session.execute(
            sa.update(JobStep)
            .where(JobStep.job_id == job_id)
            .values(status=StepStatus.SUBMITTING, remote_job_id=None)
        )
        await session.execute(
            sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(lease_expires_at=None)
        )
        await session.commit()
    job = await harness.run(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert harness.fake.posts() == 1
    messages = await harness.messages(job_id)
    assert any("stopped while sending its training request" in m for m in messages)
    assert any(m.startswith("Resumed by worker") for m in messages)


async def test_a_worker_resuming_a_submitted_step_polls_from_the_stored_cursor(harness: Harness) -> None:
    harness.fake.script("slow")  # one event per poll
    job_id = await harness.create_job(groups=1)
    await _crash_during(harness, "events", job_id, skip=1)  # after the first page (training_started)
    job = await harness.run(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert harness.fake.posts() == 1
    (step,) = await harness.steps(job_id)
    assert step.gradient_steps == 2  # every gradient step counted once across both workers
    metrics = [e for e in await harness.events(job_id) if e.type == "metrics"]
    assert len(metrics) == 2


async def test_a_worker_resuming_an_ended_step_takes_its_checkpoint(harness: Harness) -> None:
    harness.fake.script("no_checkpoint")  # not listed when training_ended is seen: `ended` is stored
    job_id = await harness.create_job(groups=1)
    await _crash_during(harness, "checkpoints_above", job_id, skip=1)
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.ENDED
    harness.fake.finish(harness.fake.last_job().id)  # now W&B lists it
    job = await harness.run(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert harness.fake.posts() == 1


async def test_a_worker_that_lost_its_lease_writes_nothing(harness: Harness) -> None:
    job_id = await harness.create_job(groups=1)

    harness.fake.on("events", lambda: _take_over(harness, job_id))  # another worker claimed it meanwhile
    job = await harness.run(job_id)
    assert (job.status, job.worker_id, job.error) == (JobStatus.RUNNING, "other", None)
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.SUBMITTED
    assert harness.finished == []


async def test_a_shutdown_while_the_post_is_in_flight_records_it_and_hands_the_job_back(
    harness: Harness,
) -> None:
    job_id = await harness.create_job(groups=2)

    def shutdown() -> None:
        assert harness.runner is not None
        harness.runner.stop(Stop.HALT)

    harness.fake.on("submit", shutdown)
    job = await harness.run(job_id)
    assert (job.status, job.worker_id, job.lease_expires_at) == (JobStatus.RUNNING, None, None)
    (step,) = await harness.steps(job_id)
    assert step.status == StepStatus.SUBMITTED  # the POST landed and was recorded before the hand-back
    assert step.remote_job_id
    resumed = await harness.run(job_id)
    assert resumed.status == JobStatus.SUCCEEDED
    assert harness.fake.posts() == 2
    assert WORKER_ID  # both runs used the same worker id: the hand-back cleared the lease
