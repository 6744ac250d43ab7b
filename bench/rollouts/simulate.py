"""Simulated rollouts: the false-promotion rate under repeated looks, and the power.

Each run is one rollout: trajectories arrive one by one, each assigned to the candidate with
probability `share` (as the gateway's keyed hash does), with a Bernoulli reward (a game won or
lost) of mean `base` (+ `margin` on the candidate); the decision rule of the service
(`app.rollouts.stats.evaluate_rewards`, the very function the worker calls) is applied every
`look_every` trajectories until it decides or `max_trajectories` arrive.

- **null** runs (no true difference): the false-promotion rate (and any false decision), with
  a 95% Clopper-Pearson upper bound; for contrast, the rate at which a fixed-n interval
  (mean ± z·sd/√t of the same AIPW terms) checked at the same looks would have promoted.
- **power** runs (candidate better, then worse, by `margin`): how often the right decision was
  reached, and the trajectories it took (median).

    .venv/bin/python bench/rollouts/simulate.py                  # 400 null + 200 + 200 runs
    .venv/bin/python bench/rollouts/simulate.py --runs 1000 --share 0.5 --json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from statistics import NormalDist

from app.rollouts.stats import Verdict, aipw_terms, arm_stats, evaluate_rewards


@dataclass(frozen=True)
class Config:
    runs: int
    power_runs: int
    share: float
    base: float
    margin: float
    min_trajectories: int
    confidence: float
    look_every: int
    max_trajectories: int
    seed: int


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    trajectories: int
    naive_promoted: bool


def one_run(cfg: Config, delta: float, rng: random.Random) -> Outcome:
    observations: list[tuple[bool, float]] = []
    z = NormalDist().inv_cdf(1 - (1 - cfg.confidence) / 2)
    naive_promoted = False
    for t in range(1, cfg.max_trajectories + 1):
        treated = rng.random() < cfg.share
        p = cfg.base + (delta if treated else 0.0)
        observations.append((treated, 1.0 if rng.random() < p else 0.0))
        if t % cfg.look_every:
            continue
        result = evaluate_rewards(
            observations, share=cfg.share, confidence=cfg.confidence, min_trajectories=cfg.min_trajectories
        )
        if not naive_promoted and min(result.candidate.n, result.baseline.n) >= cfg.min_trajectories:
            summary = arm_stats(aipw_terms(observations, cfg.share))
            if summary.mean is not None and summary.std is not None:
                naive_promoted = summary.mean - z * summary.std / math.sqrt(t) > 0
        if result.verdict != Verdict.CONTINUE:
            return Outcome(result.verdict, t, naive_promoted)
    return Outcome(Verdict.CONTINUE, cfg.max_trajectories, naive_promoted)


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided upper bound of a binomial proportion (bisection on the binomial tail)."""
    if k >= n:
        return 1.0

    def tail(p: float) -> float:  # P(X <= k | p)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if tail(mid) > 1 - level:
            lo = mid
        else:
            hi = mid
    return hi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=400, help="null rollouts (no true difference)")
    parser.add_argument("--power-runs", type=int, default=200, help="rollouts per direction of the margin")
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--base", type=float, default=0.5, help="the baseline's win rate")
    parser.add_argument("--margin", type=float, default=0.15, help="the candidate's true difference")
    parser.add_argument("--min-trajectories", type=int, default=30)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--look-every", type=int, default=50, help="trajectories between evaluations")
    parser.add_argument("--max-trajectories", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = Config(
        args.runs,
        args.power_runs,
        args.share,
        args.base,
        args.margin,
        args.min_trajectories,
        args.confidence,
        args.look_every,
        args.max_trajectories,
        args.seed,
    )
    rng = random.Random(cfg.seed)
    started = time.perf_counter()
    null = [one_run(cfg, 0.0, rng) for _ in range(cfg.runs)]
    better = [one_run(cfg, cfg.margin, rng) for _ in range(cfg.power_runs)]
    worse = [one_run(cfg, -cfg.margin, rng) for _ in range(cfg.power_runs)]
    elapsed = time.perf_counter() - started

    false_promotions = sum(o.verdict == Verdict.PROMOTE for o in null)
    false_decisions = sum(o.verdict != Verdict.CONTINUE for o in null)
    naive = sum(o.naive_promoted for o in null)
    promoted = [o for o in better if o.verdict == Verdict.PROMOTE]
    rolled_back = [o for o in worse if o.verdict == Verdict.ROLL_BACK]
    alpha = 1 - cfg.confidence
    report = {
        "config": asdict(cfg),
        "null": {
            "runs": cfg.runs,
            "false_promotion_rate": false_promotions / cfg.runs,
            "false_promotion_upper_95": clopper_pearson_upper(false_promotions, cfg.runs),
            "false_decision_rate": false_decisions / cfg.runs,
            "naive_fixed_n_promotion_rate": naive / cfg.runs,
            "configured_level": alpha,
        },
        "power": {
            "promoted_when_better": len(promoted) / cfg.power_runs,
            "median_trajectories_to_promote": statistics.median(o.trajectories for o in promoted)
            if promoted
            else None,
            "rolled_back_when_worse": len(rolled_back) / cfg.power_runs,
            "median_trajectories_to_roll_back": statistics.median(o.trajectories for o in rolled_back)
            if rolled_back
            else None,
            "wrong_way": (
                sum(o.verdict == Verdict.ROLL_BACK for o in better)
                + sum(o.verdict == Verdict.PROMOTE for o in worse)
            )
            / (2 * cfg.power_runs),
        },
        "seconds": round(elapsed, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        n, p = report["null"], report["power"]
        print(
            f"share={cfg.share} base={cfg.base} min_trajectories={cfg.min_trajectories} "
            f"confidence={cfg.confidence} look_every={cfg.look_every} max={cfg.max_trajectories}"
        )
        print(
            f"null ({cfg.runs} runs): false promotions {n['false_promotion_rate']:.3f} "
            f"(95% upper {n['false_promotion_upper_95']:.3f}; level {alpha:.3f}), any false decision "
            f"{n['false_decision_rate']:.3f}; a fixed-n interval at the same looks: {n['naive_fixed_n_promotion_rate']:.3f}"
        )
        print(
            f"margin ±{cfg.margin} ({cfg.power_runs} runs each): promoted {p['promoted_when_better']:.3f} "
            f"(median {p['median_trajectories_to_promote']} trajectories), rolled back "
            f"{p['rolled_back_when_worse']:.3f} (median {p['median_trajectories_to_roll_back']}), "
            f"wrong way {p['wrong_way']:.3f}"
        )
        print(f"{elapsed:.1f} s")
    return 0 if false_promotions / cfg.runs <= alpha else 1


if __name__ == "__main__":
    sys.exit(main())
