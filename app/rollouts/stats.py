"""The sequential test behind a rollout's decision: pure functions, no I/O.

The question: is the candidate's mean reward above (or below) the baseline's, asked again at
every evaluation while trajectories keep arriving. A fixed-n confidence interval checked
repeatedly would promote a no-better candidate far more often than 1 - confidence (the
"peeking" problem), so the interval here is an *asymptotic confidence sequence*:

    Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and
    asymptotic confidence sequences", Annals of Statistics 2024 (arXiv:2103.06476).

Why this one rather than a mixture SPRT (Johari, Koomen, Pekelis, Walsh, "Always valid
inference", Operations Research 2022): rewards are arbitrary reals (a game's score, not a
conversion), with unknown and unequal variances per arm. The mSPRT needs a parametric (normal,
known-variance) likelihood; the asymptotic CS needs only finite variance and uses the running
sample variance, and it covers exactly our design, a randomised experiment with a known
assignment probability (the paper's §3, confidence sequences for the average treatment effect).

How:
- each trajectory i, in the order its reward arrived, has arm Z_i (1: candidate, drawn with the
  known probability pi = share by the gateway's keyed hash) and reward Y_i;
- its augmented inverse-propensity-weighted (AIPW) term is
      phi_i = (m1 - m0) + Z_i (Y_i - m1) / pi - (1 - Z_i) (Y_i - m0) / (1 - pi)
  with m1, m0 the arms' mean rewards over the trajectories *before* i (predictable, so
  E[phi_i | past] = the true difference whatever m1, m0 are; the paper's §3.2 fits the outcome
  model on past data the same way). The plug-in means only shrink the variance;
- the mean of the phi_i, with the two-sided Gaussian-mixture boundary of the paper's Theorem 2.2
      mean +- sd * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) ),
  is a (1 - alpha) confidence sequence for the difference: with probability about 1 - alpha
  it holds at *every* t at once, so looking after every new trajectory costs nothing;
- rho tunes where the boundary is tightest; `tuned_rho2` puts that at the expected sample size
  (the paper's §B.2 choice).

The guarantee is asymptotic (like any CLT-based interval), hence `min_trajectories` per arm
before any decision; bench/rollouts/ measures the false-promotion rate and the power.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class ArmStats:
    n: int
    mean: float | None
    std: float | None


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence-sequence interval for candidate mean - baseline mean."""

    estimate: float
    lower: float
    upper: float


def arm_stats(values: Sequence[float]) -> ArmStats:
    n = len(values)
    if n == 0:
        return ArmStats(0, None, None)
    mean = math.fsum(values) / n
    if n == 1:
        return ArmStats(1, mean, None)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return ArmStats(n, mean, math.sqrt(var))


def aipw_terms(observations: Sequence[tuple[bool, float]], share: float) -> list[float]:
    """The AIPW terms of (candidate?, reward) observations in arrival order (module docstring)."""
    if not 0.0 < share < 1.0:
        raise ValueError("share must be in (0, 1)")
    terms: list[float] = []
    sums = [0.0, 0.0]  # baseline, candidate
    counts = [0, 0]
    for treated, reward in observations:
        seen = counts[0] + counts[1]
        pooled = (sums[0] + sums[1]) / seen if seen else 0.0
        m0 = sums[0] / counts[0] if counts[0] else pooled
        m1 = sums[1] / counts[1] if counts[1] else pooled
        if treated:
            terms.append(m1 - m0 + (reward - m1) / share)
        else:
            terms.append(m1 - m0 - (reward - m0) / (1.0 - share))
        arm = 1 if treated else 0
        sums[arm] += reward
        counts[arm] += 1
    return terms


def tuned_rho2(alpha: float, n_opt: float) -> float:
    """rho^2 that makes the boundary tightest near `n_opt` samples (Waudby-Smith et al. §B.2)."""
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(log_term + 1.0)) / max(n_opt, 1.0)


def cs_radius(t: int, std: float, alpha: float, rho2: float) -> float:
    """Half-width of the two-sided asymptotic confidence sequence at sample size t (Thm 2.2)."""
    if t < 1:
        return math.inf
    scale = t * rho2 + 1.0
    return std * math.sqrt(2.0 * scale / (t * t * rho2) * math.log(math.sqrt(scale) / alpha))


def confidence_sequence(terms: Sequence[float], alpha: float, rho2: float) -> Interval | None:
    """The interval for the mean of `terms` now (None with fewer than two)."""
    t = len(terms)
    if t < 2:
        return None
    summary = arm_stats(terms)
    assert summary.mean is not None
    assert summary.std is not None
    radius = cs_radius(t, summary.std, alpha, rho2)
    return Interval(summary.mean, summary.mean - radius, summary.mean + radius)


def expected_sample_size(min_trajectories: int, share: float) -> float:
    """Trajectories (both arms) until the smaller arm has `min_trajectories`, doubled: the
    horizon the boundary is tuned for (tight around the first moment a decision is allowed)."""
    return 2.0 * min_trajectories / min(share, 1.0 - share)


class Verdict(StrEnum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    ROLL_BACK = "roll_back"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the rewards say now: per-arm summaries, the interval and the verdict with its reason."""

    candidate: ArmStats
    baseline: ArmStats
    interval: Interval | None
    verdict: Verdict
    reason: str


def evaluate_rewards(
    observations: Sequence[tuple[bool, float]],
    *,
    share: float,
    confidence: float,
    min_trajectories: int,
) -> Evaluation:
    """Promote when the interval lies entirely above 0, roll back when entirely below 0, both
    only once each arm has `min_trajectories`; otherwise continue."""
    candidate = arm_stats([y for z, y in observations if z])
    baseline = arm_stats([y for z, y in observations if not z])
    alpha = 1.0 - confidence
    rho2 = tuned_rho2(alpha, expected_sample_size(min_trajectories, share))
    interval = confidence_sequence(aipw_terms(observations, share), alpha, rho2)
    if min(candidate.n, baseline.n) < min_trajectories or interval is None:
        reason = (
            f"waiting for {min_trajectories} trajectories per arm "
            f"(candidate {candidate.n}, baseline {baseline.n})"
        )
        return Evaluation(candidate, baseline, interval, Verdict.CONTINUE, reason)
    bounds = f"[{interval.lower:+.4g}, {interval.upper:+.4g}]"
    level = f"{confidence:.3g}"
    if interval.lower > 0:
        reason = f"the candidate is better: the {level} confidence sequence for the difference is {bounds}, above 0"
        return Evaluation(candidate, baseline, interval, Verdict.PROMOTE, reason)
    if interval.upper < 0:
        reason = (
            f"the candidate is worse: the {level} confidence sequence for the difference is {bounds}, below 0"
        )
        return Evaluation(candidate, baseline, interval, Verdict.ROLL_BACK, reason)
    reason = f"undecided: the {level} confidence sequence for the difference is {bounds}, which contains 0"
    return Evaluation(candidate, baseline, interval, Verdict.CONTINUE, reason)


@dataclass(frozen=True, slots=True)
class ErrorCounts:
    requests: int
    errors: int

    @property
    def rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def error_rate_worse(
    candidate: ErrorCounts, baseline: ErrorCounts, *, margin: float, min_requests: int
) -> str | None:
    """A reason to roll back when the candidate's gateway error rate exceeds the baseline's by
    more than `margin` (both arms with `min_requests`); None otherwise."""
    if candidate.requests < min_requests or baseline.requests < min_requests:
        return None
    c, b = candidate.rate, baseline.rate
    assert c is not None
    assert b is not None
    if c > b + margin:
        return (
            f"the candidate's error rate {c:.1%} ({candidate.errors}/{candidate.requests} requests) "
            f"exceeds the baseline's {b:.1%} ({baseline.errors}/{baseline.requests}) by more than {margin:.1%}"
        )
    return None
