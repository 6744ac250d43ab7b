"""Both step formats the game writes, and a reason code for every row that cannot be used."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.babylon.steps import RowRejected, load_steps
from app.scoring.registry import scorer, unregister_scorer
from tests.fixtures.game import WINDOW, GameDB, plugin_step, social_step, trade_step
from tests.fixtures.pipeline import Pipeline


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b'[{"reward": 0.1,', "invalid_json", ""),
        (b'{"steps": []}', "not_a_list", "object"),
        (b"[]", "no_steps", "[]"),
        (b"null", "no_steps", "null"),
        (b"[1, 2]", "step_not_an_object", "step 0 is a JSON number"),
        (b'[{"reward": 0.1}, {"action": {}}]', "missing_reward", "step 1 has no reward"),
        (b'[{"reward": null}]', "missing_reward", "step 0"),
        (b'[{"reward": "0.1"}]', "non_numeric_reward", "string"),
        (b'[{"reward": true}]', "non_numeric_reward", "boolean"),
    ],
)
def test_unusable_steps_are_rejected_with_a_reason_code(raw: bytes, reason: str, detail: str) -> None:
    with pytest.raises(RowRejected) as caught:
        load_steps(raw)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_every_optional_key_of_a_step_may_be_missing() -> None:
    assert load_steps(b'[{"reward": 0}, {"reward": -0.5, "action": "not an object"}]')[1]["reward"] == -0.5


async def _add_valid_window(game: GameDB, n: int = 3) -> list[str]:
    return [
        await game.add_trajectory(
            f"agent-{i}", [trade_step(0, reward=0.1 * i), social_step(1, success=i % 2 == 0)]
        )
        for i in range(n)
    ]


async def test_each_bad_row_is_counted_by_reason_listed_and_never_fails_the_build(
    pipeline: Pipeline, game: GameDB
) -> None:
    await _add_valid_window(game)
    bad: dict[str, list[str]] = {}

    async def add(reason: str, raw: str, agent: str = "bad-agent") -> None:
        tid = await game.add_trajectory(agent, None, raw_steps=raw)
        bad.setdefault(reason, []).append(tid)

    await add("invalid_json", '[{"reward": 0.1,')
    await add("not_a_list", '{"steps": []}')
    await add("no_steps", "[]")
    await add("no_steps", "null")
    await add("step_not_an_object", '["TRADING_DECISION"]')
    await add("missing_reward", json.dumps([{"action": {"actionType": "CREATE_POST"}}]))
    await add("non_numeric_reward", json.dumps([{"reward": "high"}]))
    await add("missing_agent", json.dumps([trade_step()]), agent="")

    ds = await pipeline.build()
    stats = ds["stats"]
    assert stats["rejected_by_reason"] == {reason: len(tids) for reason, tids in bad.items()}
    assert stats["rows"] == {"read": 3 + 8, "used": 3, "ignored": 0, "rejected": 8}
    assert stats["rejections_listed"] == 8
    for reason, tids in bad.items():
        r = await pipeline.client.get(f"/v1/datasets/{ds['id']}/rejections", params={"reason": reason})
        assert r.status_code == 200
        listed = r.json()["data"]
        assert sorted(x["trajectory_id"] for x in listed) == sorted(tids)
        assert all(x["reason"] == reason and x["detail"] and x["window_id"] == WINDOW for x in listed)


async def test_listed_rejections_are_capped_but_all_are_counted(pipeline: Pipeline, game: GameDB) -> None:
    await _add_valid_window(game)
    for _ in range(5):
        await game.add_trajectory("bad-agent", None, raw_steps="[]")
    ds = await pipeline.build(max_listed_rejections=2)
    assert ds["stats"]["rejected_by_reason"] == {"no_steps": 5}
    assert ds["stats"]["rejections_listed"] == 2
    page = (await pipeline.client.get(f"/v1/datasets/{ds['id']}/rejections", params={"limit": 1})).json()
    assert page["has_more"] is True
    rest = (
        await pipeline.client.get(f"/v1/datasets/{ds['id']}/rejections", params={"after": page["last_id"]})
    ).json()
    assert len(rest["data"]) == 1
    assert rest["has_more"] is False


async def test_recorder_and_plugin_steps_are_both_parsed(pipeline: Pipeline, game: GameDB) -> None:
    recorder = [await game.add_trajectory(f"rec-{i}", [trade_step(0, reward=0.1 * i)]) for i in range(2)]
    with_calls = await game.add_trajectory("plug-0", [plugin_step(0), plugin_step(1, reward=-0.1)])
    bare = plugin_step(0, action_name="SELL_SHARES", reward=0.3)
    bare["llmCalls"] = []
    without_calls = await game.add_trajectory("plug-1", [bare])
    ds = await pipeline.build(min_agents=4, max_group_size=4)
    assert ds["stats"]["step_formats"] == {"plugin": 2, "recorder": 2}
    (group,) = await pipeline.groups(ds["id"])
    by_id = {t["metadata"]["trajectory_id"]: t for t in group["trajectories"]}
    assert set(by_id) == {*recorder, with_calls, without_calls}
    # the plugin's logged prompts become the context (two calls that do not continue each
    # other: the second one is an additional history)
    calls = by_id[with_calls]
    assert calls["metadata"]["context"] == "llm_calls"
    assert calls["messages_and_choices"] == [
        {"role": "system", "content": "You trade."},
        {"role": "user", "content": "What now? (0)"},
        {"role": "assistant", "content": "BUY_SHARES 10"},
    ]
    assert calls["additional_histories"][0]["messages_and_choices"][1] == {
        "role": "user",
        "content": "What now? (1)",
    }
    # the placeholder actionType 'pending' falls back to the attempt's actionName
    env = by_id[without_calls]
    assert env["metadata"]["context"] == "environment"
    assert env["messages_and_choices"][-1] == {"role": "assistant", "content": 'SELL_SHARES {"amount":10}'}
    # and it is scored as the trade it is (RULER's trading steps: TRADING, BUY, SELL)
    assert env["metrics"]["score_timingScore"] == 1.0


async def test_a_scorer_that_cannot_read_a_row_rejects_it_with_the_scorers_reason(
    pipeline: Pipeline, game: GameDB
) -> None:
    await _add_valid_window(game)
    step = trade_step()
    step["environmentState"]["agentPnL"] = "a lot"
    tid = await game.add_trajectory("odd-agent", [step])
    ds = await pipeline.build(scorer="babylon_local")
    assert ds["stats"]["rejected_by_reason"] == {"non_numeric_pnl": 1}
    (rejection,) = (await pipeline.client.get(f"/v1/datasets/{ds['id']}/rejections")).json()["data"]
    assert rejection["trajectory_id"] == tid
    assert "agentPnL" in rejection["detail"]


async def test_a_crashing_plugin_scorer_costs_rows_not_the_build(pipeline: Pipeline, game: GameDB) -> None:
    @scorer("needs_balance", version="1")
    def needs_balance(steps: list[dict[str, Any]], ctx: Any) -> float:
        return float(steps[0]["environmentState"]["agentBalance"]) / 1000

    try:
        await _add_valid_window(game)
        step = trade_step()
        del step["environmentState"]
        await game.add_trajectory("no-env", [step])
        ds = await pipeline.build(scorer="needs_balance")
    finally:
        unregister_scorer("needs_balance")
    assert ds["status"] == "ready"
    assert ds["stats"]["rejected_by_reason"] == {"scorer_error": 1}
