"""The dataset functions other features call (jobs: training_file, POST /train, the worker)."""

from __future__ import annotations

import pytest

from app.babylon.source import create_babylon_dataset
from app.datasets.models import Dataset
from app.datasets.schemas import DatasetCreate
from app.datasets.service import (
    build_dataset,
    list_group_rows,
)
from app.datasets.tasks import wait_for_build
from app.errors import BadRequest, NotFound
from app.files.service import resolve_training_file
from app.state import app_state
from tests.conftest import make_settings
from tests.fixtures.game import GameDB, trade_step, window_id
from tests.fixtures.pipeline import Pipeline


async def _windows(game: GameDB, n: int) -> list[str]:
    tids = []
    for w in range(n):
        for i in range(3):
            tids.append(
                await game.add_trajectory(f"a{i}", [trade_step(0, reward=0.1 * i)], window=window_id(w))
            )
    return tids


async def test_create_queues_a_build_that_the_worker_runs_to_a_ready_dataset_with_ordered_groups(
    pipeline: Pipeline, game: GameDB
) -> None:
    tids = await _windows(game, 3)
    sessionmaker, settings = app_state(pipeline.app).sessionmaker, pipeline.settings
    async with sessionmaker() as session:
        # what the jobs engineer passes for a training_batches row: its trajectory ids
        created = await create_babylon_dataset(session, settings, {"trajectory_ids": tids})
        assert created.status == "queued"
        await session.commit()
    built = await wait_for_build(sessionmaker, created.id, 60)
    assert (built.status, built.group_count, built.trajectory_count) == ("ready", 3, 9)
    assert built.trainable_turns == 0
    assert built.stats["rows"]["read"] == 9
    # building a ready dataset again changes nothing
    again = await build_dataset(sessionmaker, settings, created.id)
    assert (again.status, again.finished_at) == ("ready", built.finished_at)
    async with sessionmaker() as session:
        rows = await list_group_rows(session, created.id)
        assert [r.position for r in rows] == [0, 1, 2]
        assert [r.scenario_id for r in rows] == [window_id(0), window_id(1), window_id(2)]
        page = await list_group_rows(session, created.id, start=1, limit=1)
        assert [r.position for r in page] == [1]
        assert (await resolve_training_file(session, created.id)).id == created.id


async def test_resolve_training_file_names_the_parameter_when_unknown(pipeline: Pipeline) -> None:
    async with app_state(pipeline.app).sessionmaker() as session:
        for missing in ("file-nope", "ds-nope", "anything"):
            with pytest.raises(NotFound) as caught:
                await resolve_training_file(session, missing)
            assert (caught.value.param, caught.value.code) == ("training_file", "file_not_found")


async def test_create_babylon_dataset_refuses_bad_input_clearly(pipeline: Pipeline, db_url: str) -> None:
    async with app_state(pipeline.app).sessionmaker() as session:
        with pytest.raises(BadRequest) as caught:
            await create_babylon_dataset(session, pipeline.settings, {"min_agents": 0})
        assert caught.value.param == "min_agents"
        with pytest.raises(BadRequest) as caught:
            await create_babylon_dataset(session, make_settings(db_url), DatasetCreate(window_ids=["w"]))
        assert caught.value.code == "babylon_not_configured"


async def test_groups_of_a_dataset_that_is_not_ready_are_a_409(pipeline: Pipeline) -> None:
    async with app_state(pipeline.app).sessionmaker() as session:  # a build in progress
        session.add(Dataset(id="ds-building", status="building", source="babylon", params={}, stats={}))
        await session.commit()
    r = await pipeline.client.get("/v1/datasets/ds-building/groups")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "dataset_not_ready"
    assert (await pipeline.client.get("/v1/datasets/ds-building")).json()["status"] == "building"


async def test_groups_page_by_the_after_cursor(pipeline: Pipeline, game: GameDB) -> None:
    await _windows(game, 5)
    ds = await pipeline.build()
    url = f"/v1/datasets/{ds['id']}/groups"
    first = (await pipeline.client.get(url, params={"limit": 2})).json()
    assert (first["object"], first["first_id"], first["last_id"], first["has_more"]) == (
        "list",
        "grp-0",
        "grp-1",
        True,
    )
    assert first["data"][0]["object"] == "dataset.group"
    nxt = (await pipeline.client.get(url, params={"limit": 2, "after": "grp-1"})).json()
    assert [g["position"] for g in nxt["data"]] == [2, 3]
    tail = (await pipeline.client.get(url, params={"after": nxt["last_id"]})).json()
    assert ([g["id"] for g in tail["data"]], tail["has_more"]) == (["grp-4"], False)
    bad = await pipeline.client.get(url, params={"after": "4"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "after"


async def test_builds_are_counted_in_prometheus_metrics(pipeline: Pipeline, game: GameDB) -> None:
    await _windows(game, 1)
    await pipeline.build()
    text = (await pipeline.client.get("/metrics")).text
    assert 'dataset_builds_total{source="babylon",status="ready"} 1.0' in text
    assert 'dataset_rows_total{outcome="used"} 3.0' in text
