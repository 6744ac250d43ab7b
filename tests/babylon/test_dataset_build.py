"""Datasets built from a real game database (the game's DDL + generate.py rows)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url as sa_url

from tests.fixtures.game import GameDB
from tests.fixtures.pipeline import Pipeline

MakePipeline = Callable[..., AbstractAsyncContextManager[Pipeline]]


async def _game_rows(dsn: str, where: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                f'SELECT "trajectoryId", "agentId", "windowId", "stepsJson", "endTime" FROM trajectories WHERE {where}',
                *args,
            )
        )
    finally:
        await conn.close()


async def _unused_windows(dsn: str) -> list[str]:
    rows = await _game_rows(dsn, '"isTrainingData" AND NOT "usedInTraining" AND "windowId" IS NOT NULL')
    return sorted({r["windowId"] for r in rows})


def _check_accounting(stats: dict[str, Any]) -> None:
    rows = stats["rows"]
    assert rows["read"] == rows["used"] + rows["ignored"] + rows["rejected"]
    assert rows["rejected"] == sum(stats["rejected_by_reason"].values())
    assert rows["ignored"] == sum(stats["ignored_by_reason"].values())


async def test_window_build_reads_exactly_the_selected_unused_rows_and_groups_distinct_agents(
    make_pipeline: MakePipeline, generated_dsn: str
) -> None:
    windows = await _unused_windows(generated_dsn)
    assert len(windows) == 2  # 3 generated windows, the oldest already used in training
    selected = await _game_rows(
        generated_dsn, '"windowId" = ANY($1::text[]) AND "isTrainingData" AND NOT "usedInTraining"', windows
    )
    empty = [r for r in selected if r["stepsJson"] == "[]"]
    by_id = {r["trajectoryId"]: r for r in selected}
    async with make_pipeline(generated_dsn) as p:
        ds = await p.build(window_ids=windows, max_group_size=4, min_agents=3)
        stats = ds["stats"]
        assert stats["rows"]["read"] == len(selected)
        assert stats["rejected_by_reason"].get("no_steps", 0) == len(empty)
        _check_accounting(stats)
        assert stats["windows"] == 2
        assert stats["step_formats"] == {"recorder": len(selected) - len(empty)}
        groups = await p.groups(ds["id"])
    assert len(groups) == ds["group_count"] == stats["groups"]["kept"]
    assert sum(len(g["trajectories"]) for g in groups) == ds["trajectory_count"] == stats["rows"]["used"]
    for g in groups:
        assert g["scenario_id"] in windows
        agents = [t["metadata"]["agent_id"] for t in g["trajectories"]]
        assert len(set(agents)) == len(agents) >= 3
        assert len(agents) <= 4
        assert g["rewards"] == [t["reward"] for t in g["trajectories"]]
        assert max(g["rewards"]) > min(g["rewards"])
        for t in g["trajectories"]:
            row = by_id[t["metadata"]["trajectory_id"]]
            assert row["agentId"] == t["metadata"]["agent_id"]
            assert row["windowId"] == g["scenario_id"]
            assert t["metadata"]["scenario_id"] == g["scenario_id"]


async def test_include_used_also_reads_rows_already_used_in_training(
    make_pipeline: MakePipeline, generated_dsn: str
) -> None:
    everything = await _game_rows(generated_dsn, '"isTrainingData"')
    async with make_pipeline(generated_dsn) as p:
        default = await p.build()
        with_used = await p.build(include_used=True)
    unused = [r for r in everything if r["windowId"] in await _unused_windows(generated_dsn)]
    assert default["stats"]["rows"]["read"] == len(unused)
    assert with_used["stats"]["rows"]["read"] == len(everything)
    assert with_used["stats"]["windows"] == 3


async def test_time_range_selects_rows_by_end_time(make_pipeline: MakePipeline, generated_dsn: str) -> None:
    windows = await _unused_windows(generated_dsn)
    start = dt.datetime.fromisoformat(windows[1]).replace(tzinfo=dt.UTC)
    end = start + dt.timedelta(hours=1)
    expected = await _game_rows(
        generated_dsn,
        '"endTime" >= $1 AND "endTime" < $2 AND "isTrainingData" AND NOT "usedInTraining"',
        start.replace(tzinfo=None),
        end.replace(tzinfo=None),
    )
    async with make_pipeline(generated_dsn) as p:
        ds = await p.build(start_time=int(start.timestamp()), end_time=end.isoformat())
        groups = await p.groups(ds["id"])
    assert ds["stats"]["rows"]["read"] == len(expected) > 0
    assert {g["scenario_id"] for g in groups} == {windows[1]}


async def test_trajectory_ids_select_exactly_those_rows(
    make_pipeline: MakePipeline, generated_dsn: str
) -> None:
    rows = await _game_rows(
        generated_dsn, '"isTrainingData" AND NOT "usedInTraining" AND "stepsJson" <> \'[]\''
    )
    chosen = sorted(r["trajectoryId"] for r in rows)[:7]
    async with make_pipeline(generated_dsn) as p:
        ds = await p.build(trajectory_ids=chosen, min_agents=1, max_group_size=8, max_groups_per_window=4)
        groups = await p.groups(ds["id"])
    assert ds["stats"]["rows"]["read"] == 7
    got = {t["metadata"]["trajectory_id"] for g in groups for t in g["trajectories"]}
    assert got <= set(chosen)


async def _rows_visited(dsn: str) -> int:
    """Heap rows the server has read from `trajectories` (sequential + index scans), ever."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                "WHERE relname = 'trajectories'"
            )
        )
    finally:
        await conn.close()


async def _settled_rows_visited(dsn: str) -> int:
    """The count once closed connections' statistics have reached the collector."""
    last = await _rows_visited(dsn)
    while True:
        await asyncio.sleep(0.4)
        now = await _rows_visited(dsn)
        if now == last:
            return now
        last = now


async def test_a_build_over_many_windows_reads_each_row_once(
    make_pipeline: MakePipeline, generated_dsn: str
) -> None:
    # Babylon's own trainer scans the whole table once per window (RESULTS.md, "anchor");
    # the builder's single ordered pass touches each selected row exactly once.
    all_rows = await _game_rows(generated_dsn, "true")
    windows = sorted({r["windowId"] for r in all_rows if r["windowId"]})
    async with make_pipeline(generated_dsn) as p:
        before = await _settled_rows_visited(generated_dsn)
        ds = await p.build(window_ids=windows, include_used=True)
        visited = await _settled_rows_visited(generated_dsn) - before
    assert ds["stats"]["windows"] == len(windows) == 3
    assert visited == ds["stats"]["rows"]["read"] == len(all_rows)


async def test_dataset_is_a_frozen_snapshot_unchanged_after_the_game_db_changes(
    make_pipeline: MakePipeline, babylon_db_factory: Callable[..., str]
) -> None:
    dsn = babylon_db_factory(windows=2, agents=5, ticks=2, extra_args=("--trained-windows", "0"))
    async with make_pipeline(dsn) as p:
        ds = await p.build(min_agents=2)
        before_groups = await p.groups(ds["id"])
        assert before_groups
        game = GameDB(dsn)
        await game.execute('UPDATE trajectories SET "stepsJson" = \'[]\', "totalReward" = 99')
        await game.execute(
            'DELETE FROM trajectories WHERE "agentId" IN (SELECT "agentId" FROM trajectories LIMIT 1)'
        )
        after = (await p.client.get(f"/v1/datasets/{ds['id']}")).json()
        after_groups = await p.groups(ds["id"])
        rebuilt = await p.build(min_agents=2)
    assert after == ds
    assert after_groups == before_groups
    # the change is real: a new build of the same selection finds nothing usable
    assert rebuilt["group_count"] == 0
    assert rebuilt["stats"]["rejected_by_reason"]["no_steps"] == rebuilt["stats"]["rows"]["read"]


async def test_babylon_source_without_a_configured_game_database_is_a_clear_400(
    make_pipeline: MakePipeline,
) -> None:
    async with make_pipeline(None) as p:
        r = await p.client.post("/v1/datasets", json={"window_ids": ["2025-11-14T10:00"]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "babylon_not_configured"
    assert "BABYLON_DATABASE_URL" in r.json()["error"]["message"]


async def test_unreachable_game_database_fails_the_dataset_with_a_reason(
    make_pipeline: MakePipeline, game_dsn: str
) -> None:
    missing = game_dsn.rsplit("/", 1)[0] + "/no_such_game_db"
    async with make_pipeline(missing) as p:
        ds = await p.build(expect="failed")
    assert ds["error"]["code"] == "babylon_unavailable"
    assert ds["group_count"] == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"window_ids": ["w"], "start_time": 1}, "choose one selection"),
        ({"start_time": 10, "end_time": 5}, "start_time must be before end_time"),
        ({"min_agents": 9, "max_group_size": 8}, "min_agents cannot exceed max_group_size"),
        ({"max_group_size": 1}, "max_group_size"),
        ({"window_ids": []}, "must not be empty"),
        ({"windows": ["w"]}, "windows"),
        ({"source": "pushed", "window_ids": ["w"]}, "scenario_ids or a time range"),
    ],
)
async def test_invalid_dataset_parameters_are_a_4xx_naming_the_problem(
    pipeline: Pipeline, body: dict[str, Any], says: str
) -> None:
    r = await pipeline.client.post("/v1/datasets", json=body)
    assert r.status_code in (400, 422), r.text
    assert says in r.json()["error"]["message"]


async def test_unknown_scorer_is_a_400_listing_the_available_ones(pipeline: Pipeline) -> None:
    r = await pipeline.client.post("/v1/datasets", json={"scorer": "nope"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("unknown_scorer", "scorer")
    assert "babylon_ruler" in err["message"]


async def test_datasets_list_newest_first_with_cursor_pages(pipeline: Pipeline, game: GameDB) -> None:
    ids = [(await pipeline.build())["id"] for _ in range(3)]
    first = (await pipeline.client.get("/v1/datasets", params={"limit": 2})).json()
    assert first["object"] == "list"
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    assert first["last_id"] == ids[1]
    rest = (await pipeline.client.get("/v1/datasets", params={"limit": 2, "after": first["last_id"]})).json()
    assert [d["id"] for d in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    assert (await pipeline.client.get("/v1/datasets/ds-missing")).status_code == 404
    bad = await pipeline.client.get("/v1/datasets", params={"after": "ds-missing"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "after"


async def test_a_build_answers_at_once_and_finishes_in_the_background(
    pipeline: Pipeline, game: GameDB
) -> None:
    for i in range(3):
        await game.add_trajectory(
            f"a{i}", [{"reward": 0.1 * i, "action": {"actionType": "TRADING_DECISION"}}]
        )
    r = await pipeline.client.post("/v1/datasets", params={"wait_s": 0}, json={})
    assert r.status_code == 200
    first = r.json()
    assert first["status"] in ("queued", "building")
    for _ in range(200):
        current = (await pipeline.client.get(f"/v1/datasets/{first['id']}")).json()
        if current["status"] in ("ready", "failed"):
            break
        await asyncio.sleep(0.05)
    assert current["status"] == "ready"
    assert current["group_count"] == 1
    assert current["finished_at"] >= current["created_at"]


async def test_a_failed_build_never_shows_the_game_database_password(
    make_pipeline: MakePipeline, game_dsn: str
) -> None:
    url = sa_url(game_dsn).set(password="s3cr3t-pw", port=1).render_as_string(hide_password=False)
    async with make_pipeline(url) as p:
        ds = await p.build(expect="failed")
        listed = (await p.client.get("/v1/datasets")).text
    assert ds["error"]["code"] == "babylon_unavailable"
    assert "s3cr3t-pw" not in str(ds)
    assert "s3cr3t-pw" not in listed
