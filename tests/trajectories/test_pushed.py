"""Any game pushes ART-shaped trajectories over HTTP; datasets group them by scenario."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.datasets.test_captures import capture, choice
from tests.files.test_files import CHOICE
from tests.fixtures.pipeline import Pipeline


def item(
    scenario: str, reward: float, *, agent: str | None = None, tid: str | None = None, trainable: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"scenario_id": scenario}
    if agent:
        metadata["agent_id"] = agent
    if tid:
        metadata["trajectory_id"] = tid
    answer = CHOICE if trainable else {"role": "assistant", "content": "move left"}
    return {
        "messages_and_choices": [{"role": "user", "content": f"board {scenario}"}, answer],
        "reward": reward,
        "metadata": metadata,
    }


async def test_a_batch_stores_valid_items_and_reports_each_invalid_one(client: httpx.AsyncClient) -> None:
    batch = [
        item("s1", 1.0, agent="p1", tid="game-7"),
        {"messages_and_choices": [{"role": "user", "content": "x"}], "reward": "1"},
        item("s1", 0.5, trainable=True),
        {**item("s1", 0.1), "metadata": {"agent_id": "p3"}},
        item("s1", 0.2, tid="game-7"),
        "not an object",
    ]
    r = await client.post("/v1/trajectories", json={"trajectories": batch})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["object"], body["accepted"], body["rejected"]) == ("trajectory.batch", 2, 4)
    assert next((d["index"], d["trajectory_id"], d["trainable_turns"]) for d in body["data"]) == (
        0,
        "game-7",
        0,
    )
    assert body["data"][1]["trainable_turns"] == 1
    errors = {e["index"]: e for e in body["errors"]}
    assert errors[1]["param"] == "trajectories[1].reward"
    assert errors[1]["code"] == "invalid_reward"
    assert errors[3]["param"] == "trajectories[3].metadata.scenario_id"
    assert errors[4]["code"] == "duplicate_trajectory_id"
    assert errors[5]["param"] == "trajectories[5]"
    again = await client.post("/v1/trajectories", json={"trajectories": [item("s1", 0.3, tid="game-7")]})
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "duplicate_trajectory_id"
    listed = (await client.get("/v1/trajectories", params={"scenario_id": "s1"})).json()
    assert next(t["trajectory_id"] for t in listed["data"]) == "game-7"
    assert (await client.get("/v1/trajectories/game-7")).json()["reward"] == 1.0


@pytest.mark.parametrize(
    "body",
    [{"trajectories": []}, {"trajectories": "x"}, {"items": [1]}, [1, 2]],
)
async def test_malformed_batches_are_4xx(client: httpx.AsyncClient, body: Any) -> None:
    r = await client.post("/v1/trajectories", json=body)
    assert r.status_code in (400, 422)
    assert r.json()["error"]["message"]


async def test_a_batch_with_no_valid_item_is_a_400_naming_the_first_problem(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/trajectories", json={"trajectories": [{"reward": 1}, {"reward": 2}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "trajectories[0].messages_and_choices"
    assert "and 1 more rejected item" in err["message"]


async def test_pushed_dataset_groups_by_scenario_and_joins_captures(pipeline: Pipeline) -> None:
    batch = [item("s1", r, agent=f"p{i}", tid=f"s1-{i}") for i, r in enumerate([0.1, 0.9, 0.5])]
    batch += [item("s2", 1.0, agent="q", tid="s2-0"), item("s2", 0.0, agent="r", tid="s2-1")]  # 2 agents only
    batch += [item("s3", 0.5, agent=f"z{i}") for i in range(3)]  # all equal
    r = await pipeline.client.post("/v1/trajectories", json={"trajectories": batch})
    assert r.json()["accepted"] == len(batch)
    # p0 again, later: one trajectory per agent is kept, the latest
    later = await pipeline.client.post(
        "/v1/trajectories", json={"trajectories": [item("s1", 0.2, agent="p0", tid="s1-0-again")]}
    )
    assert later.json()["accepted"] == 1
    await capture(pipeline, "s1-1", [{"role": "user", "content": "board s1"}], choice("move up"), step=0)
    ds = await pipeline.build(source="pushed")
    stats = ds["stats"]
    assert stats["rows"] == {"read": 9, "used": 3, "ignored": 6, "rejected": 0}
    assert stats["groups"] == {
        "kept": 1,
        "dropped": 2,
        "dropped_by_reason": {"equal_rewards": 1, "too_few_agents": 1},
    }
    assert stats["ignored_by_reason"] == {"group_dropped": 5, "not_representative": 1}
    (group,) = await pipeline.groups(ds["id"])
    assert group["scenario_id"] == "s1"
    by_id = {t["metadata"]["trajectory_id"]: t for t in group["trajectories"]}
    assert set(by_id) == {"s1-0-again", "s1-1", "s1-2"}  # p0's latest
    assert by_id["s1-1"]["messages_and_choices"][-1]["logprobs"]["content"][0]["token"] == "token_id:11"
    assert ds["trainable_turns"] == 1
    only = await pipeline.build(source="pushed", scenario_ids=["s2"], min_agents=2)
    assert only["group_count"] == 1
    assert only["stats"]["rows"]["read"] == 2
