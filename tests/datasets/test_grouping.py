"""GRPO group rules: distinct agents, a capped size that keeps a spread of rewards, no
groups without reward signal."""

from __future__ import annotations

import pytest

from app.datasets.grouping import Candidate, GroupRules, form_groups, spread_indices
from tests.fixtures.game import GameDB, trade_step, window_id
from tests.fixtures.pipeline import Pipeline


def cands(rewards: list[float]) -> list[Candidate[None]]:
    return [Candidate(f"t{i}", f"a{i}", r, None) for i, r in enumerate(rewards)]


def test_the_size_cap_keeps_the_reward_extremes_and_an_even_spread() -> None:
    rewards = [i / 100 for i in range(100)]
    result = form_groups(cands(rewards), GroupRules(max_group_size=5))
    (group,) = result.groups
    assert sorted(c.reward for c in group) == [0.0, 0.25, 0.5, 0.74, 0.99]
    assert result.not_selected == 95


def test_too_few_distinct_agents_drop_the_window() -> None:
    result = form_groups(cands([0.1, 0.9]), GroupRules(min_agents=3))
    assert result.groups == []
    assert result.dropped == {"too_few_agents": 1}
    assert result.dropped_members == {"too_few_agents": 2}


def test_groups_whose_rewards_are_all_equal_are_dropped_unless_asked_not_to() -> None:
    equal = cands([0.5, 0.5, 0.5])
    assert form_groups(equal, GroupRules()).dropped == {"equal_rewards": 1}
    kept = form_groups(equal, GroupRules(drop_equal_rewards=False))
    assert len(kept.groups) == 1


def test_a_large_window_splits_into_groups_that_each_span_the_rewards() -> None:
    rewards = [i / 20 for i in range(20)]
    result = form_groups(cands(rewards), GroupRules(max_group_size=4, max_groups=10))
    assert len(result.groups) == 5
    assert result.not_selected == 0
    for group in result.groups:
        values = sorted(c.reward for c in group)
        assert len(values) == 4
        assert values[-1] - values[0] >= 0.75  # lowest and highest quarters in every group
    assert sorted(c.key for g in result.groups for c in g) == sorted(f"t{i}" for i in range(20))


def test_spread_indices_are_distinct_and_include_both_ends() -> None:
    for n in range(1, 40):
        for k in range(2, n + 1):
            idx = spread_indices(n, k)
            assert len(set(idx)) == k
            assert (idx[0], idx[-1]) == (0, n - 1)


async def test_windows_become_groups_by_the_rules(pipeline: Pipeline, game: GameDB) -> None:
    # window 10: 10 agents, distinct rewards → one group of 4 spanning them
    for i in range(10):
        await game.add_trajectory(f"a{i}", [trade_step(0, reward=i / 10 - 0.5)], window=window_id(10))
    # window 11: 2 agents → dropped; window 12: 3 agents all scoring the same → dropped
    for i in range(2):
        await game.add_trajectory(f"b{i}", [trade_step(0, reward=0.3 * i)], window=window_id(11))
    for i in range(3):
        await game.add_trajectory(f"c{i}", [trade_step(0, reward=0.1)], window=window_id(12))
    # window 13: one agent with three ticks and two other agents → the agent counts once
    for k in range(3):
        await game.add_trajectory("d0", [trade_step(0, reward=0.05 * k)], window=window_id(13))
    for i in (1, 2):
        await game.add_trajectory(f"d{i}", [trade_step(0, reward=-0.2 * i)], window=window_id(13))
    ds = await pipeline.build(max_group_size=4)
    stats = ds["stats"]
    assert stats["groups"] == {
        "kept": 2,
        "dropped": 2,
        "dropped_by_reason": {"equal_rewards": 1, "too_few_agents": 1},
    }
    assert stats["ignored_by_reason"] == {"group_dropped": 5, "not_representative": 2, "not_selected": 6}
    assert stats["trajectories_per_group"] == {"min": 3, "max": 4, "mean": 3.5}
    groups = await pipeline.groups(ds["id"])
    assert [g["scenario_id"] for g in groups] == [window_id(10), window_id(13)]
    # RULER grows with a lone trade's reward: the cap kept the worst and the best agent
    agents = {t["metadata"]["agent_id"] for t in groups[0]["trajectories"]}
    assert {"a0", "a9"} <= agents
    assert len(agents) == 4
    all_rewards = [r for g in groups for r in g["rewards"]]
    assert stats["reward"]["mean"] == pytest.approx(sum(all_rewards) / len(all_rewards))
    assert stats["reward"]["min"] == min(all_rewards)
    assert stats["reward"]["max"] == max(all_rewards)
