"""The database side of one running job: its owned transactions and its step rows.

Every write a runner makes happens in `owned()`: one short transaction that first locks the
job row and proves this worker still holds the lease (a worker that lost it must not
overwrite the new owner's progress) and that no cancel was accepted since (a cancel seen
there stops the job before it advances: nothing is sent or recorded as done after it). The
runner keeps the job and its current step in memory (`JobView`, `StepState`) and writes only
what changed, so a step costs a handful of short transactions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import DatasetGroup
from app.jobs.events import Level, add_event
from app.jobs.hyperparameters import Hyperparameters
from app.jobs.models import ACTIVE_STATUSES, FineTuningJob, JobStep, StepStatus
from app.queue.leases import LeaseLost
from app.training.control import Interrupted, Stop
from app.training.remote import GroupPayload

T = TypeVar("T")


@dataclass
class JobView:
    """What a runner knows about its job (read once when it starts, kept up to date)."""

    id: str
    status: str
    dataset_id: str
    training_file: str
    hp: Hyperparameters
    seed: int
    total_steps: int
    completed_steps: int
    model_name: str
    project: str
    entity: str | None
    base_model: str
    served_model_id: str | None
    babylon_batch_id: str | None
    attempts: int
    cancel_requested: bool

    @classmethod
    def of(cls, job: FineTuningJob) -> JobView:
        return cls(
            id=job.id,
            status=job.status,
            dataset_id=job.dataset_id,
            training_file=job.training_file,
            hp=Hyperparameters.model_validate(job.hyperparameters),
            seed=job.seed,
            total_steps=job.total_steps,
            completed_steps=job.completed_steps,
            model_name=job.model_name,
            project=job.project,
            entity=job.entity,
            base_model=job.base_model,
            served_model_id=job.served_model_id,
            babylon_batch_id=job.babylon_batch_id,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested_at is not None,
        )


@dataclass
class StepState:
    """A step row in memory; `JobStore.save_step` writes changes to both."""

    id: int
    number: int
    status: StepStatus
    epoch: int
    group_positions: list[int]
    base_step: int | None = None
    remote_job_id: str | None = None
    last_event_id: str | None = None
    num_sequences: int | None = None
    gradient_steps: int = 0
    metric_sums: dict[str, float] = field(default_factory=dict)
    checkpoint_step: int | None = None
    error: dict[str, Any] | None = None
    started_at: dt.datetime | None = None
    submit_started_at: dt.datetime | None = None
    submitted_at: dt.datetime | None = None
    last_event_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @classmethod
    def of(cls, row: JobStep) -> StepState:
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        values["status"] = StepStatus(row.status)
        values["metric_sums"] = dict(row.metric_sums or {})
        values["group_positions"] = list(row.group_positions)
        return cls(**values)


class JobStore:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], job_id: str, worker_id: str) -> None:
        self.sessionmaker = sessionmaker
        self.job_id = job_id
        self.worker_id = worker_id

    @asynccontextmanager
    async def owned(self, *, finishing: bool = False) -> AsyncIterator[AsyncSession]:
        """A transaction on the locked job row, while this worker holds the lease; it raises
        Interrupted(CANCEL) when a cancel was accepted, unless the job is `finishing`."""
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    sa.select(
                        FineTuningJob.worker_id, FineTuningJob.status, FineTuningJob.cancel_requested_at
                    )
                    .where(FineTuningJob.id == self.job_id)
                    .with_for_update()
                )
            ).first()
            if row is None or row.worker_id != self.worker_id or row.status not in ACTIVE_STATUSES:
                raise LeaseLost(self.job_id)
            if row.cancel_requested_at is not None and not finishing:
                raise Interrupted(Stop.CANCEL)
            yield session
            await session.commit()

    async def read(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self.sessionmaker() as session:
            return await fn(session)

    async def job(self) -> JobView:
        async def get(session: AsyncSession) -> JobView:
            job = await session.get(FineTuningJob, self.job_id)
            if job is None:
                raise LeaseLost(self.job_id)
            return JobView.of(job)

        return await self.read(get)

    async def last_step(self) -> StepState | None:
        async def get(session: AsyncSession) -> StepState | None:
            row = await session.scalar(
                sa.select(JobStep)
                .where(JobStep.job_id == self.job_id)
                .order_by(JobStep.number.desc())
                .limit(1)
            )
            return StepState.of(row) if row is not None else None

        return await self.read(get)

    async def groups(
        self, dataset_id: str, positions: list[int], session: AsyncSession | None = None
    ) -> list[tuple[GroupPayload, list[float], int]]:
        """The step's groups in plan order: what is sent, and each group's rewards and trainable
        turns (in the caller's transaction when given one)."""

        async def load(session: AsyncSession) -> list[tuple[GroupPayload, list[float], int]]:
            rows = (
                await session.execute(
                    sa.select(
                        DatasetGroup.position,
                        DatasetGroup.scenario_id,
                        DatasetGroup.trajectories,
                        DatasetGroup.rewards,
                        DatasetGroup.trainable_turns,
                    ).where(DatasetGroup.dataset_id == dataset_id, DatasetGroup.position.in_(positions))
                )
            ).all()
            by_position = {r.position: r for r in rows}
            return [
                (
                    GroupPayload(scenario_id=r.scenario_id, trajectories=list(r.trajectories)),
                    [float(x) for x in r.rewards],
                    int(r.trainable_turns),
                )
                for p in positions
                if (r := by_position.get(p)) is not None
            ]

        return await load(session) if session is not None else await self.read(load)

    async def insert_step(self, session: AsyncSession, step: StepState) -> None:
        values = {f.name: getattr(step, f.name) for f in fields(StepState) if f.name != "id"}
        step.id = int(
            (
                await session.execute(
                    sa.insert(JobStep).values(job_id=self.job_id, **values).returning(JobStep.id)
                )
            ).scalar_one()
        )

    async def save_step(self, session: AsyncSession, step: StepState, **changes: Any) -> None:
        """Write `changes` to the step row and to `step`."""
        await session.execute(sa.update(JobStep).where(JobStep.id == step.id).values(**changes))
        for name, value in changes.items():
            setattr(step, name, value)

    async def event(
        self,
        session: AsyncSession,
        message: str,
        *,
        level: Level = "info",
        metrics: bool = False,
        data: dict[str, Any] | None = None,
    ) -> None:
        await add_event(
            session, self.job_id, message, level=level, type_="metrics" if metrics else "message", data=data
        )

    async def note_late_submission(self, step: StepState, remote_job_id: str) -> None:
        """W&B accepted a step's POST after the job had ended (it was cancelled meanwhile): keep
        the remote job id on the abandoned step and say so in the job's events."""
        async with self.sessionmaker() as session:
            result = await session.execute(
                sa.update(JobStep)
                .where(
                    JobStep.id == step.id,
                    JobStep.status == StepStatus.ABANDONED,
                    JobStep.remote_job_id.is_(None),
                )
                .values(remote_job_id=remote_job_id)
            )
            if getattr(result, "rowcount", 0):
                await add_event(
                    session,
                    self.job_id,
                    f"W&B accepted step {step.number}'s training request after the job ended (training job "
                    f"{remote_job_id}); it may still finish, and its checkpoint is then recorded as step "
                    f"{step.number}'s, marked late",
                    level="warn",
                    data={"step": step.number, "remote_job_id": remote_job_id},
                )
            await session.commit()
