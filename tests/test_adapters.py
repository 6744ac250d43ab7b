"""The game-adapter interface is real: a second, tiny game (a few lines, below) builds a
dataset through the API and is handed the job trained on it, through the same interfaces the
Babylon adapter uses and without the core knowing it exists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters import GameAdapter, install, uninstall
from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.schemas import DatasetCreate
from app.datasets.snapshot import SnapshotWriter
from app.datasets.stats import BuildStats
from app.errors import StoredError
from app.jobs.handoff import HandoffResult
from app.jobs.models import FineTuningJob
from tests.fixtures.factories import make_dataset, trajectory
from tests.fixtures.service import StartService, wait_for_job, wait_until


# ---------------------------------------------------------------- the tiny game: its whole adapter
class TinyBuild:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str) -> None:
        self.stats = BuildStats()
        self.writer = SnapshotWriter(
            sessionmaker, dataset_id, source="tiny", scorer="", scorer_version="", max_listed_rejections=0
        )

    async def run(self) -> BuildStats:
        for round_ in ("round-1", "round-2"):  # two rounds of three players: two GRPO groups
            rewards = [0.1, 0.5, 0.9]
            trajectories = [trajectory(r, round_, agent=f"p{i}") for i, r in enumerate(rewards)]
            self.writer.add_group(round_, rewards, trajectories, 3)
            self.stats.add_group(rewards, 3, 0, 3)
        await self.writer.flush()
        return self.stats


class TinySource:
    name = "tiny"
    default_scorer: str | None = None

    def check_params(self, params: DatasetCreate) -> None:
        pass

    def prepare(self, settings: Settings, params: DatasetCreate) -> dict[str, Any]:
        return {}

    def build(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        dataset_id: str,
        params: DatasetCreate,
        stored: dict[str, Any],
    ) -> TinyBuild:
        return TinyBuild(sessionmaker, dataset_id)

    def describe_error(self, exc: BaseException, settings: Settings) -> StoredError | None:
        return None


class TinyHandoff:
    name = "tiny"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.delivered: list[tuple[str, str, str | None]] = []

    async def wants(self, session: AsyncSession, job: FineTuningJob) -> bool:
        dataset = await session.get(Dataset, job.dataset_id)
        return dataset is not None and dataset.source == "tiny"

    async def job_started(self, settings: Settings, job: FineTuningJob) -> None:
        if job.id not in self.started:
            self.started.append(job.id)

    async def deliver(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], job: FineTuningJob
    ) -> HandoffResult:
        self.delivered.append((job.id, job.status, job.fine_tuned_model))
        return HandoffResult(True, f"Handed to the tiny game: {job.fine_tuned_model}")

    async def poll(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        return 0


# ---------------------------------------------------------------- the proof
@pytest.fixture
def tiny_game() -> Iterator[TinyHandoff]:
    handoff = TinyHandoff()
    adapter = GameAdapter(name="tiny", source=TinySource(), handoff=handoff)
    install(adapter)
    yield handoff
    uninstall(adapter)


async def test_a_second_game_builds_a_dataset_and_receives_the_finished_job(
    tiny_game: TinyHandoff, start_service: StartService
) -> None:
    async with start_service() as svc:
        built = await svc.http.post("/v1/datasets", params={"wait_s": 30}, json={"source": "tiny"})
        assert built.status_code == 200, built.text
        dataset = built.json()
        assert (dataset["source"], dataset["status"], dataset["group_count"]) == ("tiny", "ready", 2)

        job = await svc.sdk.fine_tuning.jobs.create(
            model=svc.settings.training.default_base_model, training_file=dataset["id"]
        )
        done = await wait_for_job(svc.sdk, job.id)
        assert done.status == "succeeded"

        async def handed_off() -> bool:
            async with svc.sessionmaker() as session:
                row = await session.scalar(sa.select(FineTuningJob).where(FineTuningJob.id == job.id))
                return row is not None and row.handoff_status == "done"

        await wait_until(handed_off, what="the tiny game's hand-off")
        events = [e.message async for e in svc.sdk.fine_tuning.jobs.list_events(job.id)]
    assert tiny_game.started == [job.id]
    assert tiny_game.delivered == [(job.id, "succeeded", done.fine_tuned_model)]
    assert f"Handed to the tiny game: {done.fine_tuned_model}" in events


async def test_a_job_on_another_source_is_not_handed_to_the_game(
    tiny_game: TinyHandoff, start_service: StartService
) -> None:
    async with start_service() as svc:
        dataset = await make_dataset(svc.sessionmaker)  # a pushed-source dataset
        job = await svc.sdk.fine_tuning.jobs.create(
            model=svc.settings.training.default_base_model, training_file=dataset.id
        )
        assert (await wait_for_job(svc.sdk, job.id)).status == "succeeded"
        async with svc.sessionmaker() as session:
            row = await session.get(FineTuningJob, job.id)
            assert row is not None
            assert row.handoff_status is None
    assert tiny_game.delivered == []


async def test_an_unknown_source_is_a_422_listing_the_installed_ones(
    tiny_game: TinyHandoff, start_service: StartService
) -> None:
    async with start_service() as svc:
        response = await svc.http.post("/v1/datasets", json={"source": "chess"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "source"
    assert "tiny" in error["message"]
    assert "pushed" in error["message"]
