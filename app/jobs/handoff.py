"""Handing finished jobs back to the game that wants them: the interface a game adapter
implements (`Handoff`) and the outbox that drives it.

The outbox is `fine_tuning_jobs.handoff_status`: a job's terminal transition marks it
`pending` (`mark_pending`, in the same transaction) when a registered hand-off wants the job;
the worker then calls `deliver`, which runs the hand-off and records `done` or `failed` with a
job event. A hand-off that raises (the game's database is down) leaves the job pending and the
worker retries it later (`deliver_pending`), so hand-offs must be idempotent.

The game adapters register their hand-offs from the composition root (app/main.py, app/cli.py);
this module imports no game.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.jobs.events import add_event
from app.jobs.models import TERMINAL_STATUSES, FineTuningJob

logger = logging.getLogger(__name__)


class HandoffStatus(StrEnum):
    """`fine_tuning_jobs.handoff_status` (null: no game wants the job)."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


RETRY_BATCH = 20


@dataclass(frozen=True)
class HandoffResult:
    """How a delivered hand-off ended: `ok` (the game has the result) or not, said in `message`
    (recorded as a job event)."""

    ok: bool
    message: str


class Handoff(Protocol):
    name: str

    async def wants(self, session: AsyncSession, job: FineTuningJob) -> bool:
        """Whether this game takes `job` when it ends (asked at its terminal transition)."""
        ...

    async def job_started(self, settings: Settings, job: FineTuningJob) -> None:
        """The job it wants started (or resumed) training. Best effort: errors are logged."""
        ...

    async def deliver(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], job: FineTuningJob
    ) -> HandoffResult:
        """Give the game the finished job. Raise to leave it pending and be retried later."""
        ...

    async def poll(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        """Start jobs for work the game queued on its side; returns how many were created."""
        ...


_HANDOFFS: dict[str, Handoff] = {}


def register_handoff(handoff: Handoff) -> Handoff:
    existing = _HANDOFFS.get(handoff.name)
    if existing is not None and existing is not handoff:
        raise ValueError(f"a hand-off named {handoff.name!r} is already registered")
    _HANDOFFS[handoff.name] = handoff
    return handoff


def unregister_handoff(name: str) -> None:
    _HANDOFFS.pop(name, None)


async def _taker(session: AsyncSession, job: FineTuningJob) -> Handoff | None:
    for handoff in list(_HANDOFFS.values()):
        if await handoff.wants(session, job):
            return handoff
    return None


async def mark_pending(session: AsyncSession, job: FineTuningJob) -> None:
    """At a job's terminal transition: queue its hand-off if a game wants it."""
    if await _taker(session, job) is not None:
        job.handoff_status = HandoffStatus.PENDING


async def job_started(settings: Settings, job: FineTuningJob) -> None:
    """Tell the games a job started training (the game's batch moves to `training`)."""
    for handoff in list(_HANDOFFS.values()):
        try:
            await handoff.job_started(settings, job)
        except Exception as exc:  # the game's database being down must not stop training
            logger.warning(
                "handoff.job_started_failed handoff=%s job_id=%s error=%s", handoff.name, job.id, exc
            )


async def _record(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: str, outcome: str, message: str
) -> None:
    async with sessionmaker() as session:
        result = await session.execute(
            sa.update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.handoff_status == HandoffStatus.PENDING)
            .values(handoff_status=outcome)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):  # another worker may have recorded it first
            await add_event(
                session, job_id, message, level="error" if outcome == HandoffStatus.FAILED else "info"
            )
        await session.commit()


async def deliver(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], job_id: str) -> None:
    """Run the pending hand-off of a finished job and record how it ended."""
    async with sessionmaker() as session:
        job = await session.get(FineTuningJob, job_id)
        if job is None or job.handoff_status != HandoffStatus.PENDING or job.status not in TERMINAL_STATUSES:
            return
        handoff = await _taker(session, job)
    if handoff is None:
        await _record(
            sessionmaker,
            job_id,
            HandoffStatus.FAILED,
            "Hand-off skipped: no installed game adapter takes this job",
        )
        return
    try:
        result = await handoff.deliver(settings, sessionmaker, job)
    except Exception as exc:  # the game's side may be down: stay pending, retry later
        logger.warning("handoff.retry handoff=%s job_id=%s error=%s", handoff.name, job_id, exc)
        return
    await _record(
        sessionmaker, job_id, HandoffStatus.DONE if result.ok else HandoffStatus.FAILED, result.message
    )
    logger.info("handoff.recorded handoff=%s job_id=%s ok=%s", handoff.name, job_id, result.ok)


async def deliver_pending(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Retry hand-offs still pending (their game was down, or their worker died)."""
    async with sessionmaker() as session:
        ids = (
            await session.scalars(
                sa.select(FineTuningJob.id)
                .where(
                    FineTuningJob.handoff_status == HandoffStatus.PENDING,
                    FineTuningJob.status.in_(TERMINAL_STATUSES),
                )
                .limit(RETRY_BATCH)
            )
        ).all()
    for job_id in ids:
        await deliver(settings, sessionmaker, job_id)


async def poll(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Let each game start jobs for the work it queued; returns how many were created."""
    started = 0
    for handoff in list(_HANDOFFS.values()):
        started += await handoff.poll(settings, sessionmaker)
    return started
