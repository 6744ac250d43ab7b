"""Claims and leases on the real databases: no job or work item is ever held by two workers."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from app.jobs.models import FineTuningJob
from app.queue.items import enqueue
from app.queue.leases import claim_next_item, release, renew_leases
from app.queue.models import WorkItem, WorkKind
from app.worker.claims import claim_next_job, job_held
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import Service, StartService

BASE = "OpenPipe/Qwen3-14B-Instruct"


async def create_job(svc: Service, suffix: str, groups: int) -> str:
    ds = await make_dataset(svc.sessionmaker, groups=groups)
    hp: Any = {"batch_size": 1}
    job = await svc.sdk.fine_tuning.jobs.create(
        model=BASE, training_file=ds.id, suffix=suffix, hyperparameters=hp
    )
    return job.id


async def test_concurrent_claims_never_hand_one_job_to_two_workers(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        ids = {await create_job(svc, f"line-{i}", groups=1) for i in range(8)}

        async def claim(worker: str) -> str | None:
            async with svc.sessionmaker() as session:
                result = await claim_next_job(session, worker, 60)
            return result.id if result else None

        claims = await asyncio.gather(*(claim(f"w{i}") for i in range(16)))
        won = [c for c in claims if c is not None]
        assert sorted(won) == sorted(ids)  # every job exactly once, 8 claimers got nothing
        async with svc.sessionmaker() as session:
            owners = (await session.scalars(sa.select(FineTuningJob.worker_id))).all()
        assert len(set(owners)) == 8


async def test_jobs_on_one_model_line_are_never_claimed_at_the_same_time(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        first = await create_job(svc, "shared", groups=1)
        second = await create_job(svc, "shared", groups=1)
        async with svc.sessionmaker() as session:
            claim = await claim_next_job(session, "w1", 60)
        assert claim is not None
        assert claim.id == first
        async with svc.sessionmaker() as session:
            assert await claim_next_job(session, "w2", 60) is None  # the line is busy
        async with svc.sessionmaker() as session:
            await session.execute(
                sa.update(FineTuningJob)
                .where(FineTuningJob.id == first)
                .values(lease_expires_at=None, worker_id=None, status="succeeded")
            )
            await session.commit()
        async with svc.sessionmaker() as session:
            again = await claim_next_job(session, "w2", 60)
        assert again is not None
        assert again.id == second


async def test_renewals_keep_only_the_leases_a_worker_still_holds(start_service: StartService) -> None:
    async with start_service(run_worker=False) as svc:
        first = await create_job(svc, "a", groups=1)
        second = await create_job(svc, "b", groups=1)
        async with svc.sessionmaker() as session:
            assert (await claim_next_job(session, "w1", 60)) is not None
        async with svc.sessionmaker() as session:
            assert (await claim_next_job(session, "w1", 60)) is not None
        async with svc.sessionmaker() as session:  # w2 took the second job over
            await session.execute(
                sa.update(FineTuningJob).where(FineTuningJob.id == second).values(worker_id="w2")
            )
            await session.commit()
        async with svc.sessionmaker() as session:
            assert await renew_leases(session, FineTuningJob, [first, second], "w1", 60, held=job_held()) == {
                first
            }


async def test_a_work_item_is_claimed_once_and_again_only_after_its_lease_lapses_or_it_is_released(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        async with svc.sessionmaker() as session:
            enqueue(session, WorkKind.DATASET_BUILD, "ds-x")
            await session.commit()
        async with svc.sessionmaker() as session:
            claimed = await claim_next_item(session, "w1", 60)
        assert claimed is not None
        claim, kind, subject = claimed
        assert (kind, subject, claim.attempts, claim.took_over) == ("dataset_build", "ds-x", 1, False)
        async with svc.sessionmaker() as session:
            assert await claim_next_item(session, "w2", 60) is None
        async with svc.sessionmaker() as session:  # w1 died: its lease lapses
            await session.execute(sa.update(WorkItem).values(lease_expires_at=None))
            await session.commit()
        async with svc.sessionmaker() as session:
            again = await claim_next_item(session, "w2", 60)
        assert again is not None
        assert (again[0].attempts, again[0].took_over) == (2, True)
        async with svc.sessionmaker() as session:
            await release(session, WorkItem, again[0].id, "w2")
        async with svc.sessionmaker() as session:
            third = await claim_next_item(session, "w3", 60)
        assert third is not None
        assert third[0].took_over is False  # a hand-back, not a takeover
