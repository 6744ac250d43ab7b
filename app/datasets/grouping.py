"""GRPO group formation (art-serverless.md §3): a group trains only with at least two
trajectories whose rewards differ; advantages are (r − mean)/(std + 1e-6) within the group.

A window's candidates are one trajectory per agent. When there are more agents than the
group size, the kept trajectories are spread across the reward range (evenly spaced ranks
of the reward order) instead of the first N, so each group holds high, middle and low
rewards. With `max_groups` > 1 a large window gives several groups: the spread selection is
dealt round-robin, so every group spans the range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

TOO_FEW_AGENTS = "too_few_agents"
EQUAL_REWARDS = "equal_rewards"
GROUP_DROP_REASONS = (TOO_FEW_AGENTS, EQUAL_REWARDS)
# rewards closer than this count as equal (GRPO's std would be ~0: no gradient)
REWARD_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Candidate(Generic[T]):
    key: str  # a stable tie-breaker (the trajectory id)
    agent: str
    reward: float
    item: T


@dataclass(frozen=True)
class GroupRules:
    min_agents: int = 3
    max_group_size: int = 8
    max_groups: int = 1
    drop_equal_rewards: bool = True


@dataclass
class GroupingResult(Generic[T]):
    groups: list[list[Candidate[T]]]
    dropped: dict[str, int]  # reason → groups dropped
    dropped_members: dict[str, int]  # reason → trajectories in dropped groups
    not_selected: int  # candidates left out by the size cap


def spread_indices(n: int, k: int) -> list[int]:
    """k distinct, evenly spaced indices of range(n), always including both ends."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n // 2]
    # floor(x + 0.5), not round(): banker's rounding can map two neighbours to one index
    return [math.floor(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]


def form_groups(candidates: Sequence[Candidate[T]], rules: GroupRules) -> GroupingResult[T]:
    result: GroupingResult[T] = GroupingResult(groups=[], dropped={}, dropped_members={}, not_selected=0)

    def drop(reason: str, members: int) -> None:
        result.dropped[reason] = result.dropped.get(reason, 0) + 1
        result.dropped_members[reason] = result.dropped_members.get(reason, 0) + members

    if not candidates:
        return result
    agents = {c.agent for c in candidates}
    if len(agents) < rules.min_agents:
        drop(TOO_FEW_AGENTS, len(candidates))
        return result
    ordered = sorted(candidates, key=lambda c: (c.reward, c.key))
    n = len(ordered)
    n_groups = max(1, min(rules.max_groups, -(-n // rules.max_group_size)))
    chosen = [ordered[i] for i in spread_indices(n, n_groups * rules.max_group_size)]
    result.not_selected = n - len(chosen)
    dealt: list[list[Candidate[T]]] = [chosen[g::n_groups] for g in range(n_groups)]
    for group in dealt:
        if len({c.agent for c in group}) < rules.min_agents:
            drop(TOO_FEW_AGENTS, len(group))
        elif rules.drop_equal_rewards and (
            len(group) < 2 or max(c.reward for c in group) - min(c.reward for c in group) <= REWARD_TOLERANCE
        ):
            drop(EQUAL_REWARDS, len(group))
        else:
            result.groups.append(sorted(group, key=lambda c: (c.agent, c.key)))
    return result
