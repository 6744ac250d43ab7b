"""The game's heuristic formulas (babylon-data.md §5.5, §5.6), checked against values computed
by hand for a small fixture, and the scores' persistence, listing and write-back."""

from __future__ import annotations

from typing import Any

import pytest

from app.babylon.scorers import LOCAL, RULER, MarketOutcomes
from app.errors import BadRequest
from app.scoring.registry import (
    ScoreResult,
    WindowContext,
    get_scorer,
    scorer,
    unregister_scorer,
)
from tests.fixtures.game import WINDOW, GameDB, social_step, trade_step
from tests.fixtures.pipeline import Pipeline


async def _fixture(game: GameDB) -> dict[str, str]:
    """Three agents in one window, with resolved markets (see the numbers in each test)."""
    await game.add_prediction_outcome(WINDOW, "m1", "YES")
    await game.add_prediction_outcome(WINDOW, "m2", "NO")
    await game.add_stock_outcome(WINDOW, "ACME", 2.5)
    await game.add_stock_outcome(WINDOW, "BETA", -0.5)
    ids = {}
    ids["A"] = await game.add_trajectory(
        "a",
        [
            trade_step(0, reward=0.2, market_id="m1", side="YES"),
            trade_step(1, reward=-0.1, ticker="BETA", side="long"),
            social_step(2, kind="CREATE_POST", success=True, reward=0.1),
            social_step(3, kind="CREATE_COMMENT", success=False, reward=0, pnl=150.0),
        ],
    )
    ids["A2"] = await game.add_trajectory("a", [trade_step(0, reward=0, pnl=-50.0, success=False)])
    ids["B"] = await game.add_trajectory("b", [social_step(0, kind="CREATE_POST", success=True, reward=0.1)])
    ids["C"] = await game.add_trajectory(
        "c",
        [
            trade_step(0, reward=1.0, market_id="m2", side="YES"),
            trade_step(1, reward=-0.05, ticker="ACME", side="short", pnl=2000.0),
        ],
    )
    return ids


async def _scores(p: Pipeline, **params: Any) -> dict[str, dict[str, Any]]:
    r = await p.client.get("/v1/scores", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return {s["trajectory_id"]: s for s in r.json()["data"]}


async def test_ruler_scores_equal_the_games_formula_computed_by_hand(
    pipeline: Pipeline, game: GameDB
) -> None:
    ids = await _fixture(game)
    ds = await pipeline.build(scorer="babylon_ruler", persist_scores="all")
    scores = await _scores(pipeline, window_id=WINDOW)
    assert set(scores) == set(ids.values())
    a = scores[ids["A"]]
    # R = 0.2 - 0.1 + 0.1 + 0 = 0.2; trading steps 2 (1 profitable); social 2 (1 ok)
    # pnl = (0.2+1)/2 = 0.6; wins: m1 YES=YES win, BETA long with -0.5% loss → 1/2
    # risk = (0.2/2 + 1)/2 = 0.55; trading = .4·.6 + .4·.5 + .2·.55 = 0.55
    # timing = 1/2; selection: m1 resolved (good), BETA |−0.5| ≤ 1 (not) → 0.5; strategic 0.5
    # social = .7·(1/2) + .3·min(1, 2/10) = 0.41; overall = .5·.55 + .2·.41 + .3·.5 = 0.507
    assert a["score"] == pytest.approx(0.507)
    assert a["components"] == pytest.approx(
        {
            "tradingScore": 0.55,
            "socialScore": 0.41,
            "strategicScore": 0.5,
            "pnlScore": 0.6,
            "winRate": 0.5,
            "riskAdjustedReturn": 0.55,
            "engagementScore": 0.41,
            "timingScore": 0.5,
            "marketSelectionScore": 0.5,
            "totalReward": 0.2,
        }
    )
    assert a["reasoning"] == "Moderate trading performance (50% win rate)"
    assert (a["scorer"], a["scorer_version"], a["agent_id"], a["dataset_id"]) == (
        "babylon_ruler",
        "1",
        "a",
        ds["id"],
    )
    # B: no trading (all trading parts 0.5); social = .7·1 + .3·.1 = 0.73 → .25 + .146 + .15
    assert scores[ids["B"]]["score"] == pytest.approx(0.546)
    assert (
        scores[ids["B"]]["reasoning"] == "Moderate trading performance (50% win rate). High social engagement"
    )
    # C: R = 0.95; pnl .975; wins 0/2 (m2 YES≠NO, ACME short while +2.5%); risk (.475+1)/2 = .7375
    # trading = .39 + 0 + .1475 = .5375; timing 1/2, selection 2/2 → strategic .3 + .4 = .7
    # overall = .26875 + .1 + .21 = 0.57875
    assert scores[ids["C"]]["score"] == pytest.approx(0.57875)
    assert scores[ids["C"]]["components"]["winRate"] == 0
    assert scores[ids["C"]]["reasoning"] == "Moderate trading performance (0% win rate)"
    # A2: one failed trade (reward 0): pnl .5, win .5 (nothing judged), risk .5, timing 0,
    # selection .5 → trading .5, strategic .2, social .5 → .25 + .1 + .06 = 0.41
    assert scores[ids["A2"]]["score"] == pytest.approx(0.41)
    # the group carries the scores as rewards, one trajectory per agent (A: the longest)
    (group,) = await pipeline.groups(ds["id"])
    rewards = {t["metadata"]["trajectory_id"]: t["reward"] for t in group["trajectories"]}
    assert rewards == pytest.approx({ids["A"]: 0.507, ids["B"]: 0.546, ids["C"]: 0.57875})


async def test_local_scores_equal_the_trainers_formula_per_agent(pipeline: Pipeline, game: GameDB) -> None:
    ids = await _fixture(game)
    ds = await pipeline.build(scorer="babylon_local", persist_scores="all")
    scores = await _scores(pipeline, window_id=WINDOW)
    # agent a: pnl = last step agentPnL per trajectory: 150 and -50 → Σ 100, 1 win 1 loss,
    # 5 steps: .5·(1100/2000) + .3·.5 + .2·(5/20) = .275 + .15 + .05
    for tid in (ids["A"], ids["A2"]):
        assert scores[tid]["score"] == pytest.approx(0.475)
        assert scores[tid]["components"] == pytest.approx(
            {
                "pnlScore": 0.55,
                "winRate": 0.5,
                "activityScore": 0.25,
                "totalPnL": 100.0,
                "actions": 5.0,
                "trajectories": 2.0,
            }
        )
    # b: Σpnl 0, no win or loss, 1 step: .25 + .15 + .01
    assert scores[ids["B"]]["score"] == pytest.approx(0.41)
    # c: Σpnl 2000 → clamp 1, 1 win, 2 steps: .5 + .3 + .02
    assert scores[ids["C"]]["score"] == pytest.approx(0.82)
    (group,) = await pipeline.groups(ds["id"])
    assert sorted(group["rewards"]) == pytest.approx([0.41, 0.475, 0.82])


async def test_scores_are_listed_by_window_and_agent_in_pages(pipeline: Pipeline, game: GameDB) -> None:
    ids = await _fixture(game)
    await game.add_trajectory("a", [trade_step(0, reward=0.3)], window="2025-11-14T11:00")
    await pipeline.build(persist_scores="all", min_agents=1)
    mine = await _scores(pipeline, window_id=WINDOW, agent_id="a")
    assert set(mine) == {ids["A"], ids["A2"]}
    assert len(await _scores(pipeline, agent_id="a")) == 3
    first = (await pipeline.client.get("/v1/scores", params={"window_id": WINDOW, "limit": 3})).json()
    assert first["object"] == "list"
    assert len(first["data"]) == 3
    assert first["has_more"] is True
    rest = (
        await pipeline.client.get("/v1/scores", params={"window_id": WINDOW, "after": first["last_id"]})
    ).json()
    assert len(rest["data"]) == 1
    assert rest["has_more"] is False
    bad = await pipeline.client.get("/v1/scores", params={"after": "nope"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "after"


async def test_persist_scores_keeps_the_dataset_members_by_default_or_nothing(
    pipeline: Pipeline, game: GameDB
) -> None:
    ids = await _fixture(game)
    await pipeline.build(persist_scores="none")
    assert await _scores(pipeline) == {}
    await pipeline.build()
    # the default keeps what trained: one trajectory per agent (A2 was not the representative)
    assert set(await _scores(pipeline)) == {ids["A"], ids["B"], ids["C"]}


async def test_scores_are_written_back_to_ai_judge_reward_when_asked(
    pipeline: Pipeline, game: GameDB
) -> None:
    ids = await _fixture(game)
    ds = await pipeline.build(write_scores=True)
    assert ds["stats"]["scores"]["written_back"] == 3
    rows = {
        r["trajectoryId"]: r
        for r in await game.fetch(
            'SELECT "trajectoryId", "aiJudgeReward", "aiJudgeReasoning", "judgedAt" FROM trajectories'
        )
    }
    assert rows[ids["A"]]["aiJudgeReward"] == pytest.approx(0.507)
    assert rows[ids["A"]]["aiJudgeReasoning"] == "Moderate trading performance (50% win rate)"
    assert rows[ids["A"]]["judgedAt"] is not None
    assert rows[ids["A2"]]["aiJudgeReward"] is None  # not persisted: not written


async def test_scores_are_not_written_back_by_default(pipeline: Pipeline, game: GameDB) -> None:
    await _fixture(game)
    ds = await pipeline.build()
    assert ds["stats"]["scores"]["written_back"] == 0
    assert all(r[0] is None for r in await game.fetch('SELECT "aiJudgeReward" FROM trajectories'))


async def test_scorers_are_listed_with_name_version_and_kind(pipeline: Pipeline) -> None:
    page = (await pipeline.client.get("/v1/scorers")).json()
    by_id = {s["id"]: s for s in page["data"]}
    assert by_id["babylon_ruler@1"]["per_agent"] is False
    assert by_id["babylon_ruler@1"]["uses_market_outcomes"] is True
    assert by_id["babylon_local@1"]["per_agent"] is True
    assert "score_locally" in by_id["babylon_local@1"]["description"]


async def test_registered_scorer_functions_are_selectable_by_name_and_version(
    pipeline: Pipeline, game: GameDB
) -> None:
    @scorer("steps_count", version="1", description="more steps, higher reward")
    def v1(steps: list[dict[str, Any]], ctx: WindowContext) -> float:
        return len(steps) / 10

    @scorer("steps_count", version="2")
    def v2(steps: list[dict[str, Any]], ctx: WindowContext) -> ScoreResult:
        return ScoreResult(score=len(steps) / 100, components={"steps": len(steps)})

    try:
        for i in range(3):
            await game.add_trajectory(f"s-{i}", [trade_step(k) for k in range(i + 1)])
        newest = await pipeline.build(scorer="steps_count")
        pinned = await pipeline.build(scorer="steps_count", scorer_version="1")
        (g2,) = await pipeline.groups(newest["id"])
        (g1,) = await pipeline.groups(pinned["id"])
        r = await pipeline.client.post("/v1/datasets", json={"scorer": "steps_count", "scorer_version": "9"})
    finally:
        unregister_scorer("steps_count")
    assert newest["params"]["scorer_version"] == "2"
    assert sorted(g2["rewards"]) == pytest.approx([0.01, 0.02, 0.03])
    assert sorted(g1["rewards"]) == pytest.approx([0.1, 0.2, 0.3])
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unknown_scorer_version"


def test_unknown_scorer_names_the_registered_ones() -> None:
    with pytest.raises(BadRequest) as caught:
        get_scorer("nope")
    assert "babylon_local" in caught.value.message
    assert caught.value.param == "scorer"


@pytest.mark.parametrize(
    "step",
    [
        {"reward": 0.1},
        {"reward": 0.1, "action": "TRADING"},
        {"reward": 0.1, "action": {"actionType": 7}},
        {"reward": 0.1, "action": {"actionType": "TRADING_DECISION", "parameters": ["YES"]}},
        {
            "reward": 0.1,
            "action": {"actionType": "BUY", "parameters": {"marketId": {"id": 1}, "side": "YES"}},
        },
        {"reward": 0.1, "action": {"actionType": "SELL", "parameters": {"ticker": 5, "side": "long"}}},
        {"reward": 0.1, "environmentState": None},
    ],
)
def test_scorers_tolerate_missing_and_odd_fields(step: dict[str, Any]) -> None:
    ctx = WindowContext("w", MarketOutcomes(predictions={"m": "YES"}, stocks={"T": 2.0}))
    result = RULER.combine([RULER.observe([step], ctx)], ctx)
    assert 0 <= result.score <= 1
    local = LOCAL.combine([LOCAL.observe([step], ctx)], ctx)
    assert local.components["totalPnL"] == 0  # a missing agentPnL counts as 0, as in the game


def test_ruler_without_market_outcomes_judges_nothing() -> None:
    ctx = WindowContext(None, None)  # plugin rows have no window
    steps = [trade_step(0, reward=0.5, market_id="m1", side="YES")]
    result = RULER.combine([RULER.observe(steps, ctx)], ctx)
    assert result.components["winRate"] == 0.5
    assert result.components["marketSelectionScore"] == 0.5


async def test_rescoring_a_trajectory_replaces_its_score(pipeline: Pipeline, game: GameDB) -> None:
    ids = await _fixture(game)
    first = await pipeline.build()
    second = await pipeline.build()
    r = await pipeline.client.get("/v1/scores", params={"trajectory_id": ids["A"]})
    (score,) = r.json()["data"]
    assert score["dataset_id"] == second["id"] != first["id"]
    assert score["score"] == pytest.approx(0.507)
    assert score["updated_at"] >= score["created_at"]
