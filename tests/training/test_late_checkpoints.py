"""Checkpoints W&B produces for steps the service stopped following: recorded as the step's own
(late: listed, kept, never aliased), never credited to another job. A step's own checkpoint is
ART 0.5.18's: the newest one listed after `training_ended`."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.errors import BadRequest
from app.jobs import service
from app.jobs.models import JobStatus, StepStatus
from app.registry import policy
from app.registry.models import CheckpointOrigin, ModelAlias, ServedModel
from app.registry.service import set_alias
from app.training.checkpoints import sweep_late_checkpoints
from tests.training.conftest import Harness


async def _line(harness: Harness, name: str = "line") -> ServedModel:
    async with harness.sessionmaker() as session:
        line = await session.scalar(sa.select(ServedModel).where(ServedModel.name == name))
        assert line is not None
        return line


async def _aliases(harness: Harness) -> dict[str, int]:
    by_id = {c.id: c.step for c in await harness.checkpoints()}
    async with harness.sessionmaker() as session:
        rows = (await session.execute(sa.select(ModelAlias.alias, ModelAlias.checkpoint_id))).all()
    return {alias: by_id[ckpt] for alias, ckpt in rows}


async def test_a_stalled_steps_late_checkpoint_is_its_own_not_the_next_jobs(harness: Harness) -> None:
    harness.fake.script("stall")
    first = await harness.create_job(groups=1)
    assert (await harness.run(first)).status == JobStatus.FAILED  # step_stalled: abandoned
    stalled = harness.fake.last_job()

    second = await harness.create_job(groups=1)
    # W&B finishes the stalled job while the next job's step is being sent
    harness.fake.on("submit", lambda: harness.fake.finish(stalled.id))
    job = await harness.run(second)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.fine_tuned_model is not None
    assert job.fine_tuned_model.endswith(":step2")  # the newest after training_ended, as ART takes it
    late, own = await harness.checkpoints()
    assert (late.step, late.origin, late.job_id, late.job_step) == (1, CheckpointOrigin.LATE, first, 1)
    assert (own.step, own.origin, own.job_id) == (2, CheckpointOrigin.STEP, second)
    assert await _aliases(harness) == {"latest": 2, "best": 2}
    (step,) = await harness.steps(first)
    assert (step.status, step.checkpoint_step) == (StepStatus.ABANDONED, 1)
    assert any("recorded as step 1's (marked late" in m for m in await harness.messages(first))


async def test_the_sweep_records_a_cancelled_steps_checkpoint_listed_kept_and_never_aliased(
    harness: Harness,
) -> None:
    harness.fake.script("hold")
    job_id = await harness.create_job(groups=2)
    harness.fake.on("events", lambda: harness.cancel(job_id))
    assert (await harness.run(job_id)).status == JobStatus.CANCELLED
    assert (
        await sweep_late_checkpoints(
            harness.sessionmaker, harness.settings, harness.fake, harness.clock.now()
        )
        == 0
    )

    harness.fake.finish(harness.fake.last_job().id)  # W&B had no cancel endpoint: it finished
    recorded = await sweep_late_checkpoints(
        harness.sessionmaker, harness.settings, harness.fake, harness.clock.now()
    )
    assert recorded == 1
    (ckpt,) = await harness.checkpoints()
    assert (ckpt.origin, ckpt.job_id, ckpt.job_step, ckpt.deleted_at) == (
        CheckpointOrigin.LATE,
        job_id,
        1,
        None,
    )
    async with harness.sessionmaker() as session:
        listed, _ = await service.list_checkpoints(session, job_id, after=None, limit=10)
        assert [c.id for c in listed] == [ckpt.id]
        line = await session.get(ServedModel, ckpt.model_id)
        assert line is not None
        assert await policy.move_aliases(session, harness.settings, line) == {}  # nothing to alias
        assert await policy.retention_candidates(session, harness.settings, line) == []  # kept
        with pytest.raises(BadRequest) as refused:
            await set_alias(session, line, "latest", ckpt)
        assert refused.value.code == "checkpoint_not_aliasable"
        assert (await set_alias(session, line, "keep-me", ckpt)).checkpoint_id == ckpt.id  # by hand: fine
    job = await harness.job(job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.fine_tuned_model is None  # the job's own model never moves to a late checkpoint
    assert (
        await sweep_late_checkpoints(
            harness.sessionmaker, harness.settings, harness.fake, harness.clock.now()
        )
        == 0
    )


async def test_the_sweep_leaves_a_line_alone_while_a_job_trains_it(harness: Harness) -> None:
    harness.fake.script("hold")
    job_id = await harness.create_job(groups=1)
    harness.fake.on("events", lambda: harness.cancel(job_id))
    await harness.run(job_id)
    harness.fake.finish(harness.fake.last_job().id)
    await harness.create_job(groups=1)  # queued on the same line: its steps attribute what they find
    assert (
        await sweep_late_checkpoints(
            harness.sessionmaker, harness.settings, harness.fake, harness.clock.now()
        )
        == 0
    )


async def test_a_checkpoint_no_step_of_the_service_explains_is_recorded_as_external(harness: Harness) -> None:
    first = await harness.create_job(groups=1)
    await harness.run(first)
    line = await _line(harness)
    model = harness.fake.model("line")
    model.add_checkpoint()  # someone trained the line outside the service (step 2)
    second = await harness.create_job(groups=1)
    harness.fake.on("submit", lambda: None)
    job = await harness.run(second)
    assert job.status == JobStatus.SUCCEEDED
    steps = [(c.step, c.origin, c.job_id) for c in await harness.checkpoints()]
    # step 2 existed before the second job's base read, so its base is 2 and it trained step 3
    assert steps == [(1, CheckpointOrigin.STEP, first), (3, CheckpointOrigin.STEP, second)]
    assert line.remote_id == model.id


async def test_the_lost_answers_step_takes_the_newest_checkpoint_and_the_older_one_is_late(
    harness: Harness,
) -> None:
    from app.training.remote import RemoteUnavailable

    harness.fake.script("stall")
    first = await harness.create_job(groups=1)
    await harness.run(first)
    stalled = harness.fake.last_job()
    second = await harness.create_job(groups=1)
    harness.fake.fail("submit", RemoteUnavailable("HTTP 504: Gateway timeout", status=504), accepted=True)
    harness.fake.on("submit", lambda: harness.fake.finish(stalled.id))
    job = await harness.run(second)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert [(c.step, c.origin) for c in await harness.checkpoints()] == [
        (1, CheckpointOrigin.LATE),
        (2, CheckpointOrigin.STEP),
    ]
