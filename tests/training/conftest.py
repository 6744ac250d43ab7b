"""`harness`: one job's runner against the real database (both backends), the in-memory W&B
(`FakeTraining`) and a virtual clock, so a job's whole life runs in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.jobs import service
from app.jobs.models import FineTuningJob, JobEvent, JobStep
from app.jobs.schemas import CreateJobRequest
from app.models import Base
from app.registry.models import Checkpoint, ServedModel
from app.training.control import Stop
from app.training.metrics import TrainingMetrics
from app.training.runner import JobRunner, RunnerContext
from app.worker.claims import claim_next_job
from tests.conftest import make_settings
from tests.fixtures.factories import make_dataset
from tests.training.fakes import FakeClock, FakeTraining

BASE = "OpenPipe/Qwen3-14B-Instruct"
WORKER_ID = "worker-under-test"
# virtual time: these only decide how many polls a wait takes
HARNESS_WORKER: dict[str, Any] = {
    "poll_interval_s": 1.0,
    "event_poll_interval_s": 1.0,
    "heartbeat_s": 10.0,
    "lease_s": 60.0,
    "step_watchdog_s": 30.0,
    "submit_resolution_s": 20.0,
    "checkpoint_wait_s": 5.0,
    "rate_limit_retries": 2,
}


class Harness:
    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.fake = FakeTraining()
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = TrainingMetrics(self.registry)
        self.runner: JobRunner | None = None
        self.finished: list[str] = []
        self.shielded: list[asyncio.Task[Any]] = []

    async def create_job(self, *, groups: int = 2, per_step: int = 1, suffix: str = "line", **hp: Any) -> str:
        ds = await make_dataset(self.sessionmaker, groups=groups)
        request = CreateJobRequest.model_validate(
            {
                "model": BASE,
                "training_file": ds.id,
                "suffix": suffix,
                "hyperparameters": {"batch_size": per_step, **hp},
            }
        )
        async with self.sessionmaker() as session:
            job = await service.create_job(session, self.settings, request)
            await session.commit()
            return job.id

    def _shield(self, awaitable: Awaitable[Any]) -> Awaitable[Any]:
        task = asyncio.ensure_future(awaitable)
        self.shielded.append(task)
        return asyncio.shield(task)

    async def _after_finish(self, job_id: str) -> None:
        self.finished.append(job_id)

    def make_runner(self, job_id: str) -> JobRunner:
        async def trainer() -> FakeTraining:
            return self.fake

        ctx = RunnerContext(
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            worker_id=WORKER_ID,
            trainer=trainer,
            shield=self._shield,
            after_finish=self._after_finish,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.runner = JobRunner(ctx, job_id)
        return self.runner

    async def claim(self) -> str:
        async with self.sessionmaker() as session:
            claim = await claim_next_job(session, WORKER_ID, self.settings.worker.lease_s)
        assert claim is not None
        return claim.id

    async def run(self, job_id: str) -> FineTuningJob:
        """Claim the job and run it until its runner returns; the job as stored then."""
        assert await self.claim() == job_id
        await self.make_runner(job_id).run()
        await asyncio.gather(*self.shielded, return_exceptions=True)
        return await self.job(job_id)

    async def cancel(self, job_id: str) -> FineTuningJob:
        """What the API and the worker's cancel watch do: accept the cancel, stop the runner."""
        async with self.sessionmaker() as session:
            job = await service.cancel_job(session, self.settings, job_id)
            await session.commit()
        if self.runner is not None:
            self.runner.stop(Stop.CANCEL)
        return job

    async def job(self, job_id: str) -> FineTuningJob:
        async with self.sessionmaker() as session:
            job = await session.get(FineTuningJob, job_id)
            assert job is not None
            return job

    async def steps(self, job_id: str) -> list[JobStep]:
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                sa.select(JobStep).where(JobStep.job_id == job_id).order_by(JobStep.number)
            )
            return list(rows.all())

    async def events(self, job_id: str) -> list[JobEvent]:
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            )
            return list(rows.all())

    async def messages(self, job_id: str) -> list[str]:
        return [e.message for e in await self.events(job_id)]

    async def checkpoints(self, name: str = "line") -> list[Checkpoint]:
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                sa.select(Checkpoint)
                .join(ServedModel, ServedModel.id == Checkpoint.model_id)
                .where(ServedModel.name == name)
                .order_by(Checkpoint.step)
            )
            return list(rows.all())

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


async def empty_tables(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """DELETE every row (fast on the few rows a unit test leaves; TRUNCATE costs ~10 ms a table)."""
    async with sessionmaker() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(table.delete())
        await session.commit()


@pytest.fixture
async def harness(db_url: str) -> AsyncIterator[Harness]:
    settings = make_settings(db_url, wandb_api_key="fake-wandb-key", worker=HARNESS_WORKER)
    # NullPool on SQLite (a file per connection is cheap); a small pool on Postgres, per test:
    # the event loop is per test, and asyncpg connections belong to the loop that made them
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    try:
        await empty_tables(sessionmaker)
        yield Harness(settings, sessionmaker)
    finally:
        await engine.dispose()
