"""The sequential test's pure functions (app/rollouts/stats.py), in milliseconds."""

from __future__ import annotations

import math
import random

import pytest

from app.registry.resolution import Resolution, RolloutSplit
from app.rollouts.stats import (
    ErrorCounts,
    Verdict,
    aipw_terms,
    arm_stats,
    confidence_sequence,
    cs_radius,
    error_rate_worse,
    evaluate_rewards,
    tuned_rho2,
)


def _observations(n: int, share: float, base: float, delta: float, seed: int) -> list[tuple[bool, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        treated = rng.random() < share
        out.append((treated, rng.gauss(base + (delta if treated else 0.0), 1.0)))
    return out


def test_arm_stats_are_count_mean_and_sample_std() -> None:
    assert arm_stats([]) == arm_stats([])
    assert arm_stats([]).n == 0
    assert arm_stats([]).mean is None
    s = arm_stats([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean) == (4, 2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))


def test_aipw_terms_average_to_the_difference_of_means() -> None:
    obs = _observations(20_000, 0.2, base=3.0, delta=0.5, seed=1)
    terms = aipw_terms(obs, 0.2)
    assert sum(terms) / len(terms) == pytest.approx(0.5, abs=0.06)


def test_aipw_terms_use_only_past_observations() -> None:
    # the first term sees nothing before it: its plug-in means are 0
    assert aipw_terms([(True, 2.0)], 0.5) == [4.0]
    assert aipw_terms([(False, 2.0)], 0.5) == [-4.0]
    # the second: baseline mean 2 is known, the candidate's falls back to the pooled mean (2)
    assert aipw_terms([(False, 2.0), (True, 3.0)], 0.5)[1] == pytest.approx(0 + (3.0 - 2.0) / 0.5)


def test_the_confidence_sequence_narrows_like_sqrt_log_t_over_t() -> None:
    rho2 = tuned_rho2(0.05, 200)
    radii = [cs_radius(t, 1.0, 0.05, rho2) for t in (100, 1_000, 10_000)]
    assert radii[0] > radii[1] > radii[2]
    # wider than the fixed-n 95% interval at the same t: the price of looking at every t
    assert radii[1] > 1.96 / math.sqrt(1_000)
    assert cs_radius(0, 1.0, 0.05, rho2) == math.inf
    assert confidence_sequence([1.0], 0.05, rho2) is None


def test_a_clear_improvement_is_promoted_and_a_clear_loss_rolled_back() -> None:
    better = evaluate_rewards(
        _observations(800, 0.3, 0.0, 0.6, seed=2), share=0.3, confidence=0.95, min_trajectories=20
    )
    assert better.verdict == Verdict.PROMOTE
    assert better.interval is not None
    assert better.interval.lower > 0
    worse = evaluate_rewards(
        _observations(800, 0.3, 0.0, -0.6, seed=3), share=0.3, confidence=0.95, min_trajectories=20
    )
    assert worse.verdict == Verdict.ROLL_BACK
    assert "worse" in worse.reason


def test_no_decision_before_min_trajectories_per_arm() -> None:
    obs = [(True, 10.0)] * 4 + [(False, 0.0), (False, 0.1)] * 20
    result = evaluate_rewards(obs, share=0.5, confidence=0.95, min_trajectories=5)
    assert result.verdict == Verdict.CONTINUE
    assert "candidate 4" in result.reason


def test_repeated_looks_at_no_difference_rarely_promote() -> None:
    # 40 experiments x 30 looks each: a fixed-n 95% interval would promote in far more than 5%
    promoted = naive_decided = 0
    for seed in range(40):
        obs = _observations(600, 0.5, 1.0, 0.0, seed=100 + seed)
        naive = False
        for t in range(20, 601, 20):
            terms = aipw_terms(obs[:t], 0.5)
            s = arm_stats(terms)
            assert s.mean is not None
            assert s.std is not None
            naive = naive or abs(s.mean) > 1.96 * s.std / math.sqrt(t)
            verdict = evaluate_rewards(obs[:t], share=0.5, confidence=0.95, min_trajectories=10).verdict
            if verdict != Verdict.CONTINUE:
                promoted += verdict == Verdict.PROMOTE
                break
        naive_decided += naive
    assert promoted <= 4  # bench/rollouts/ measures the rate over hundreds of runs
    assert naive_decided >= 6  # peeking at a fixed-n interval: the inflation the sequence avoids


def test_a_higher_error_rate_rolls_back_only_with_enough_requests_and_beyond_the_margin() -> None:
    assert (
        error_rate_worse(ErrorCounts(100, 20), ErrorCounts(100, 1), margin=0.05, min_requests=20) is not None
    )
    assert error_rate_worse(ErrorCounts(100, 5), ErrorCounts(100, 1), margin=0.05, min_requests=20) is None
    assert error_rate_worse(ErrorCounts(10, 9), ErrorCounts(100, 0), margin=0.05, min_requests=20) is None


def _split(share: float) -> RolloutSplit:
    candidate = Resolution(requested="agent:production", upstream_model="cand")
    return RolloutSplit.of("rollout-1", share, "salt-" + str(share), candidate)


def test_the_split_is_sticky_and_takes_the_share_of_trajectories() -> None:
    split = _split(0.1)
    ids = [f"traj-{i}" for i in range(20_000)]
    taken = [split.takes(tid, None) for tid in ids]
    assert taken == [split.takes(tid, None) for tid in ids]  # sticky
    assert sum(taken) / len(ids) == pytest.approx(0.1, abs=0.01)  # 4.7 sd of a binomial


def test_the_split_differs_between_rollouts_and_windows_agents_by_the_hour() -> None:
    a, b = _split(0.5), RolloutSplit.of("rollout-2", 0.5, "other-salt", _split(0.5).candidate)
    ids = [f"t{i}" for i in range(2_000)]
    agreement = sum(a.takes(t, None) == b.takes(t, None) for t in ids) / len(ids)
    assert agreement == pytest.approx(0.5, abs=0.06)  # independent assignments
    hour = 3600.0 * 500_000
    assert a.takes(None, "agent-7", hour + 1) == a.takes(None, "agent-7", hour + 3599)
    windows = {a.takes(None, "agent-7", hour + 3600 * k) for k in range(40)}
    assert windows == {True, False}
