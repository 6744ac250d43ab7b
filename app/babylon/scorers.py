"""The game's own heuristic formulas (babylon-data.md §5.5 and §5.6), as scorers.

- `babylon_ruler` v1: `RulerScoringService.ts` (no LLM), per trajectory:
  0.5·trading + 0.2·social + 0.3·strategic, judged against the window's `market_outcomes`.
- `babylon_local` v1: `babylon_trainer.py::score_locally`, per agent in a window:
  0.5·clamp((Σpnl + 1000)/2000) + 0.3·win_rate + 0.2·min(1, Σsteps/20), where a trajectory's
  pnl is its last step's `environmentState.agentPnL`; every trajectory of the agent gets it.

Both take only what the formulas read; any other key may be missing. Step rewards are already
checked numeric by the parser (`babylon_steps.load_steps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.babylon.steps import action_type, to_number
from app.scoring.registry import (
    ScoreRejected,
    ScoreResult,
    TrajectoryScorer,
    WindowContext,
)


@dataclass(frozen=True)
class MarketOutcomes:
    """A window's resolved markets (`market_outcomes`), the `WindowContext.outcomes` of the
    game's scorers: prediction market id → YES/NO, and stock ticker → changePercent."""

    predictions: dict[str, str] = field(default_factory=dict)
    stocks: dict[str, float] = field(default_factory=dict)


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _js_round_percent(x: float) -> int:
    # JavaScript's Math.round (half up), as the game formats "NN% win rate"
    return math.floor(x * 100 + 0.5)


def ruler_reasoning(trading: float, win_rate: float, social: float, strategic: float) -> str:
    parts = []
    quality = "Strong" if trading > 0.7 else "Weak" if trading < 0.3 else "Moderate"
    parts.append(f"{quality} trading performance ({_js_round_percent(win_rate)}% win rate)")
    if social > 0.7:
        parts.append("High social engagement")
    elif social < 0.3:
        parts.append("Low social engagement")
    if strategic > 0.7:
        parts.append("Good strategic decision-making")
    elif strategic < 0.3:
        parts.append("Poor strategic decision-making")
    return ". ".join(parts) or "Baseline performance"


class BabylonRulerScorer(TrajectoryScorer):
    name = "babylon_ruler"
    version = "1"
    description = (
        "The game's RulerScoringService heuristic per trajectory: 0.5·trading (P&L, win rate, "
        "risk-adjusted return) + 0.2·social + 0.3·strategic (timing, market selection), in [0, 1]"
    )
    needs_market_outcomes = True

    def observe(
        self, steps: list[dict[str, Any]], ctx: WindowContext
    ) -> tuple[float, int, int, int, int, int, int, int, int]:
        """Counts over the steps: (R, trading, profitable, social, social ok, wins, judged,
        good selections, selections)."""
        outcomes = ctx.outcomes
        predictions = outcomes.predictions if outcomes is not None else None
        stocks = outcomes.stocks if outcomes is not None else None
        total = 0.0
        n_trading = profitable = n_social = social_ok = wins = judged = good = selections = 0
        for step in steps:
            reward = step["reward"]
            total += reward
            action = step.get("action")
            if type(action) is not dict:
                action = {}
            kind = action_type(action)
            if "TRADING" in kind or "BUY" in kind or "SELL" in kind:
                n_trading += 1
                if reward > 0:
                    profitable += 1
                if predictions is not None and stocks is not None:
                    params = action.get("parameters")
                    if type(params) is dict:
                        market_id = params.get("marketId")
                        side = params.get("side")
                        ticker = params.get("ticker")
                        if market_id:
                            outcome = predictions.get(market_id) if isinstance(market_id, str) else None
                            if outcome is not None:
                                selections += 1
                                good += outcome != "UNRESOLVED"
                                if side:
                                    judged += 1
                                    wins += (side == "YES" and outcome == "YES") or (
                                        side == "NO" and outcome == "NO"
                                    )
                        elif ticker:
                            change = stocks.get(ticker) if isinstance(ticker, str) else None
                            if change is not None:
                                selections += 1
                                good += abs(change) > 1
                                if side:
                                    judged += 1
                                    wins += (side == "long" and change > 0) or (
                                        side == "short" and change < 0
                                    )
            if "POST" in kind or "COMMENT" in kind:
                n_social += 1
                if action.get("success"):
                    social_ok += 1
        return (total, n_trading, profitable, n_social, social_ok, wins, judged, good, selections)

    def result(self, observation: Any, ctx: WindowContext) -> ScoreResult:
        total, n_trading, profitable, n_social, social_ok, wins, judged, good, selections = observation
        if n_trading:
            pnl_score = _clamp01((total + 1) / 2)
            win_rate = wins / judged if judged else 0.5
            risk = _clamp01((total / n_trading + 1) / 2)
            trading = pnl_score * 0.4 + win_rate * 0.4 + risk * 0.2
            timing = profitable / n_trading
            selection = good / selections if selections else 0.5
            strategic = timing * 0.6 + selection * 0.4
        else:
            pnl_score = win_rate = risk = trading = timing = selection = strategic = 0.5
        social = social_ok / n_social * 0.7 + min(1.0, n_social / 10) * 0.3 if n_social else 0.5
        overall = _clamp01(trading * 0.5 + social * 0.2 + strategic * 0.3)
        return ScoreResult(
            score=overall,
            components={
                "tradingScore": trading,
                "socialScore": social,
                "strategicScore": strategic,
                "pnlScore": pnl_score,
                "winRate": win_rate,
                "riskAdjustedReturn": risk,
                "engagementScore": social,
                "timingScore": timing,
                "marketSelectionScore": selection,
                "totalReward": total,
            },
            reasoning=ruler_reasoning(trading, win_rate, social, strategic),
        )


NON_NUMERIC_PNL = "non_numeric_pnl"


class BabylonLocalScorer:
    name = "babylon_local"
    version = "1"
    description = (
        "The game's babylon_trainer.py score_locally per agent in a window: 0.5·pnl_score + "
        "0.3·win_rate + 0.2·activity, pnl = last step's environmentState.agentPnL"
    )
    per_agent = True
    needs_market_outcomes = False

    def observe(self, steps: list[dict[str, Any]], ctx: WindowContext) -> tuple[float, int]:
        last = steps[-1]
        env = last.get("environmentState")
        pnl = 0.0
        if type(env) is dict:
            raw = env.get("agentPnL")
            if raw is not None:
                number = to_number(raw)
                if number is None:
                    raise ScoreRejected(
                        NON_NUMERIC_PNL,
                        f"last step environmentState.agentPnL is not a number: {str(raw)[:50]!r}",
                    )
                pnl = number
        return (pnl, len(steps))

    def combine(self, observations: Sequence[tuple[float, int]], ctx: WindowContext) -> ScoreResult:
        total_pnl = 0.0
        actions = wins = losses = 0
        for pnl, n in observations:
            total_pnl += pnl
            actions += n
            if pnl > 0:
                wins += 1
            elif pnl < 0:
                losses += 1
        pnl_score = _clamp01((total_pnl + 1000) / 2000)
        win_rate = wins / (wins + losses) if wins + losses else 0.5
        activity = min(1.0, actions / 20)
        score = 0.5 * pnl_score + 0.3 * win_rate + 0.2 * activity
        return ScoreResult(
            score=score,
            components={
                "pnlScore": pnl_score,
                "winRate": win_rate,
                "activityScore": activity,
                "totalPnL": total_pnl,
                "actions": float(actions),
                "trajectories": float(len(observations)),
            },
            reasoning=(
                f"Local heuristic over {len(observations)} trajectories of this agent in the window: "
                f"P&L {total_pnl:.2f}, win rate {_js_round_percent(win_rate)}%, {actions} actions"
            ),
        )


# Registered by the game adapter (app/babylon/adapter.py), not on import.
RULER = BabylonRulerScorer()
LOCAL = BabylonLocalScorer()
SCORERS = (RULER, LOCAL)
DEFAULT_SCORER = RULER.name
