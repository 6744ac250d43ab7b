"""Dataset builds are work items: claimed by the worker loop with leases like jobs; a build whose
worker died is started over by the next one, and given up after too many deaths."""

from __future__ import annotations

import json

import sqlalchemy as sa
from fastapi import FastAPI

from app.datasets.models import Dataset, DatasetGroup
from app.files.models import FileChunk
from app.files.service import upload_file
from app.queue.leases import claim_next_item
from app.queue.models import WorkItem
from app.state import app_state
from tests.fixtures.factories import trajectory
from tests.fixtures.service import running_worker, wait_until


def jsonl(groups: int) -> bytes:
    lines = [{"trajectories": [trajectory(0.1, f"s{g}"), trajectory(0.9, f"s{g}")]} for g in range(groups)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def upload(app: FastAPI, groups: int = 3) -> str:
    import io

    file = await upload_file(
        app_state(app).sessionmaker, io.BytesIO(jsonl(groups)), filename="g.jsonl", purpose="fine-tune"
    )
    assert file.dataset_id is not None
    return file.dataset_id


async def dataset(app: FastAPI, dataset_id: str) -> Dataset:
    async with app_state(app).sessionmaker() as session:
        row = await session.get(Dataset, dataset_id)
        assert row is not None
        return row


async def die_mid_build(app: FastAPI, dataset_id: str, times: int = 1) -> None:
    """A worker claimed the build, wrote part of it and died (`times` times over)."""
    for death in range(times):
        async with app_state(app).sessionmaker() as session:
            assert await claim_next_item(session, "dead-worker", 60) is not None
        async with app_state(app).sessionmaker() as session:
            await session.execute(
                sa.update(Dataset).where(Dataset.id == dataset_id).values(status="building")
            )
            if death == 0:
                session.add(
                    DatasetGroup(
                        dataset_id=dataset_id,
                        position=0,
                        scenario_id="half",
                        rewards=[0.0],
                        trajectories=[],
                        trainable_turns=0,
                    )
                )
            await session.execute(sa.update(WorkItem).values(lease_expires_at=sa.null()))  # the lease lapses
            await session.commit()


async def test_a_build_whose_worker_died_is_started_over_by_the_next_worker(app: FastAPI) -> None:
    dataset_id = await upload(app, groups=3)
    await die_mid_build(app, dataset_id)
    async with running_worker(app):
        await wait_until(lambda: _status(app, dataset_id, "ready"), what="the rebuilt dataset")
    built = await dataset(app, dataset_id)
    assert (built.group_count, built.trajectory_count) == (3, 6)
    async with app_state(app).sessionmaker() as session:
        scenarios = (
            await session.scalars(
                sa.select(DatasetGroup.scenario_id)
                .where(DatasetGroup.dataset_id == dataset_id)
                .order_by(DatasetGroup.position)
            )
        ).all()
        item = await session.scalar(sa.select(WorkItem))
    assert list(scenarios) == ["s0", "s1", "s2"]  # the dead worker's partial rows are gone
    assert item is not None
    assert (item.status, item.attempts, item.worker_id) == ("done", 2, None)
    registry = app_state(app).metrics.registry
    assert registry.get_sample_value("worker_lease_expiries_total", {"kind": "work_item"}) == 1
    assert registry.get_sample_value("dataset_builds_total", {"source": "file", "status": "ready"}) == 1


async def test_a_build_whose_workers_keep_dying_fails_saying_so(app: FastAPI) -> None:
    dataset_id = await upload(app, groups=1)
    await die_mid_build(app, dataset_id, times=3)
    async with running_worker(app, item_max_attempts=3):
        await wait_until(lambda: _status(app, dataset_id, "failed"), what="the given-up build")
    failed = await dataset(app, dataset_id)
    assert failed.error is not None
    assert failed.error["code"] == "build_interrupted"
    assert "3 times" in failed.error["message"]
    async with app_state(app).sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(DatasetGroup)) == 0
        # the upload itself is kept (GET /v1/files/{id}/content); only its dataset failed
        assert await session.scalar(sa.select(sa.func.count()).select_from(FileChunk)) == 1


async def test_a_build_whose_dataset_was_deleted_meanwhile_ends_quietly(app: FastAPI) -> None:
    dataset_id = await upload(app, groups=1)
    async with app_state(app).sessionmaker() as session:
        await session.execute(sa.delete(Dataset).where(Dataset.id == dataset_id))
        await session.commit()
    async with running_worker(app):

        async def done() -> bool:
            async with app_state(app).sessionmaker() as session:
                return await session.scalar(sa.select(WorkItem.status)) == "done"

        await wait_until(done, what="the item to end")


async def _status(app: FastAPI, dataset_id: str, status: str) -> bool:
    return (await dataset(app, dataset_id)).status == status
