"""The worker loop with the in-memory W&B: the cancel watch, lease renewals and takeovers."""

from __future__ import annotations

import sqlalchemy as sa

from app.jobs.models import FineTuningJob, JobStep, StepStatus
from app.state import app_state
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import Service, StartService, running_worker, wait_for_job, wait_until
from tests.training.fakes import FakeTraining

BASE = "OpenPipe/Qwen3-14B-Instruct"


async def create(svc: Service, groups: int = 2) -> str:
    ds = await make_dataset(svc.sessionmaker, groups=groups)
    hp: dict[str, int] = {"batch_size": 1}
    job = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id, hyperparameters=hp)  # type: ignore[arg-type]
    return job.id


async def step_status(svc: Service, job_id: str) -> str | None:
    async with svc.sessionmaker() as session:
        return await session.scalar(sa.select(JobStep.status).where(JobStep.job_id == job_id))


def sample(svc: Service, name: str, labels: dict[str, str]) -> float:
    return app_state(svc.app).metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_cancel_watch_stops_a_job_w_and_b_is_still_training(start_service: StartService) -> None:
    fake = FakeTraining()
    fake.script("hold")  # W&B keeps training step 1 until the test says otherwise
    async with start_service(run_worker=False) as svc, running_worker(svc.app, trainer=fake):
        job_id = await create(svc)
        await wait_until(lambda: step_status(svc, job_id), what="step 1 sent")
        await wait_until(lambda: fake.calls.count("events") >= 3, what="polling W&B's events")
        requested = await svc.sdk.fine_tuning.jobs.cancel(job_id)
        assert requested.status == "running"
        done = await wait_for_job(svc.sdk, job_id, timeout_s=5)
        assert done.status == "cancelled"
        assert await step_status(svc, job_id) == StepStatus.ABANDONED
        assert fake.posts() == 1


async def test_heartbeats_renew_leases_and_a_lost_lease_stops_the_job_without_writing(
    start_service: StartService,
) -> None:
    fake = FakeTraining()
    fake.script("hold")
    async with (
        start_service(run_worker=False) as svc,
        running_worker(svc.app, trainer=fake, heartbeat_s=0.05),
    ):
        job_id = await create(svc)
        await wait_until(
            lambda: sample(svc, "worker_lease_renewals_total", {"kind": "job", "outcome": "renewed"}) >= 2,
            what="renewals",
        )
        async with svc.sessionmaker() as session:  # another worker took the job over
            await session.execute(
                sa.update(FineTuningJob).where(FineTuningJob.id == job_id).values(worker_id="thief")
            )
            await session.commit()
        await wait_until(
            lambda: sample(svc, "worker_lease_renewals_total", {"kind": "job", "outcome": "lost"}) == 1,
            what="the loss",
        )
        await wait_until(lambda: not app_state(svc.app).worker.running_jobs, what="the runner to stop")
        async with svc.sessionmaker() as session:
            job = await session.get(FineTuningJob, job_id)
            assert job is not None
            assert (job.status, job.worker_id, job.error) == ("running", "thief", None)


async def test_a_claim_that_takes_over_an_expired_lease_is_counted_and_resumes_the_job(
    start_service: StartService,
) -> None:
    fake = FakeTraining()
    async with start_service(run_worker=False) as svc:
        job_id = await create(svc, groups=1)
        async with svc.sessionmaker() as session:  # a worker that died holding it
            await session.execute(
                sa.update(FineTuningJob)
                .where(FineTuningJob.id == job_id)
                .values(worker_id="dead", lease_expires_at=sa.null(), attempts=1)
            )
            await session.commit()
        async with running_worker(svc.app, trainer=fake):
            done = await wait_for_job(svc.sdk, job_id)
        assert done.status == "succeeded"
        assert sample(svc, "worker_lease_expiries_total", {"kind": "job"}) == 1
        assert sample(svc, "worker_claims_total", {"kind": "job"}) == 1
