"""Hand-written rows in a real game database (the game's DDL, `shared/babylon/schema.sql`).

Steps follow the two formats the game writes (babylon-data.md §3.2 Recorder, §3.4 plugin).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import asyncpg

WINDOW = "2025-11-14T10:00"
WINDOW_START = dt.datetime(2025, 11, 14, 10, 0)
_ids = itertools.count(1)


def window_id(hour: int) -> str:
    return f"2025-11-14T{hour:02d}:00"


def env(balance: float = 1000.0, pnl: float = 0.0, positions: int = 0) -> dict[str, Any]:
    return {
        "agentBalance": balance,
        "agentPnL": pnl,
        "openPositions": positions,
        "activeMarkets": 3,
        "timestamp": 1,
    }


def trade_step(
    n: int = 0,
    *,
    reward: Any = 0.1,
    pnl: float = 0.0,
    market_id: str | None = None,
    ticker: str | None = None,
    side: str | None = None,
    success: bool = True,
    llm_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"method": "database", "pnlChange": 0, "initialPnL": pnl, "finalPnL": pnl}
    if market_id is not None:
        params.update(marketId=market_id, side=side, marketType="prediction")
    if ticker is not None:
        params.update(ticker=ticker, side=side, marketType="perp")
    return {
        "stepNumber": n,
        "timestamp": 1763201100412 + n,
        "environmentState": env(pnl=pnl),
        "providerAccesses": [],
        "llmCalls": llm_calls or [],
        "action": {"actionType": "TRADING_DECISION", "parameters": params, "success": success},
        "reward": reward,
    }


def social_step(
    n: int = 1, *, kind: str = "CREATE_POST", success: bool = True, reward: Any = 0.1, pnl: float = 0.0
) -> dict[str, Any]:
    key = "postId" if kind == "CREATE_POST" else "commentId"
    value = f"{key}-{n}" if success else None
    step: dict[str, Any] = {
        "stepNumber": n,
        "timestamp": 1763201100500 + n,
        "environmentState": env(pnl=pnl),
        "providerAccesses": [],
        "llmCalls": [],
        "action": {"actionType": kind, "parameters": {key: value}, "success": success},
        "reward": reward,
    }
    if success:
        step["action"]["result"] = {key: value}
    return step


def plugin_step(
    n: int = 0, *, action_name: str = "BUY_SHARES", reward: float = 0.1, pnl: float = 5.0
) -> dict[str, Any]:
    """The plugin logger's superset format; its actionType may still be the placeholder."""
    return {
        "stepId": f"step-{n}",
        "stepNumber": n,
        "timestamp": 1763201100412 + n,
        "environmentState": {
            "timestamp": 1,
            "agentBalance": 1000,
            "agentPoints": 42,
            "agentPnL": pnl,
            "openPositions": 0,
        },
        "observation": {},
        "llmCalls": [
            {
                "callId": f"call-{n}",
                "timestamp": 1,
                "model": "m",
                "systemPrompt": "You trade.",
                "userPrompt": f"What now? ({n})",
                "response": f"{action_name} 10",
                "temperature": 0.7,
                "maxTokens": 100,
                "purpose": "action",
            }
        ],
        "providerAccesses": [],
        "action": {
            "attemptId": f"a-{n}",
            "timestamp": 1,
            "actionType": "pending",
            "actionName": action_name,
            "parameters": {"amount": 10},
            "success": True,
            "result": {"executed": True},
        },
        "reward": reward,
        "done": False,
    }


class GameDB:
    """Inserts rows the way the game's writers do (quoted camelCase, updatedAt set)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def execute(self, sql: str, *args: Any) -> str:
        conn = await asyncpg.connect(self.dsn)
        try:
            return str(await conn.execute(sql, *args))
        finally:
            await conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def truncate(self) -> None:
        await self.execute(
            'TRUNCATE trajectories, llm_call_logs, market_outcomes, training_batches, trained_models, "User" CASCADE'
        )

    async def add_user(self, user_id: str) -> None:
        await self.execute(
            'INSERT INTO "User" (id, "updatedAt") VALUES ($1, now()) ON CONFLICT (id) DO NOTHING', user_id
        )

    async def add_trajectory(
        self,
        agent: str,
        steps: Any,
        *,
        window: str | None = WINDOW,
        trajectory_id: str | None = None,
        scenario: str | None = None,
        end: dt.datetime | None = None,
        training: bool = True,
        used: bool = False,
        raw_steps: str | None = None,
    ) -> str:
        """Insert one trajectory; `steps` is JSON-encoded unless `raw_steps` gives the text."""
        await self.add_user(agent)
        n = next(_ids)
        tid = trajectory_id or f"traj-{n}"
        end = end or (WINDOW_START + dt.timedelta(minutes=10, seconds=n % 600))
        text = raw_steps if raw_steps is not None else json.dumps(steps)
        length = len(steps) if isinstance(steps, list) else 0
        await self.execute(
            """INSERT INTO trajectories (id, "trajectoryId", "agentId", "startTime", "endTime", "durationMs",
                   "windowId", "scenarioId", "stepsJson", "rewardComponentsJson", "metricsJson", "metadataJson",
                   "totalReward", "episodeLength", "finalStatus", "isTrainingData", "usedInTraining", "updatedAt")
               VALUES ($1, $2, $3, $4, $5, 1000, $6, $7, $8, '{}', '{}', '{}', 0, $9, 'completed', $10, $11, now())""",
            f"row-{n}",
            tid,
            agent,
            end - dt.timedelta(seconds=1),
            end,
            window,
            scenario if scenario is not None else window,
            text,
            length,
            training,
            used,
        )
        return tid

    async def add_prediction_outcome(self, window: str, market_id: str, outcome: str) -> None:
        await self.execute(
            'INSERT INTO market_outcomes (id, "windowId", "predictionMarketId", outcome) VALUES ($1, $2, $3, $4)',
            f"mo-{next(_ids)}",
            window,
            market_id,
            outcome,
        )

    async def add_stock_outcome(self, window: str, ticker: str, change_percent: float) -> None:
        await self.execute(
            'INSERT INTO market_outcomes (id, "windowId", "stockTicker", "changePercent", sentiment) '
            "VALUES ($1, $2, $3, $4, $5)",
            f"mo-{next(_ids)}",
            window,
            ticker,
            change_percent,
            "BULLISH" if change_percent > 0 else "BEARISH",
        )

    async def add_llm_log(self, trajectory_id: str, step: int, system: str, user: str, response: str) -> None:
        n = next(_ids)
        await self.execute(
            """INSERT INTO llm_call_logs (id, "trajectoryId", "stepId", "callId", "timestamp", model, purpose,
                   "systemPrompt", "userPrompt", "messagesJson", response, temperature, "maxTokens")
               VALUES ($1, $2, $3, $4, $5, 'm', 'action', $6, $7, $8, $9, 0.7, 100)""",
            f"log-{n}",
            trajectory_id,
            f"{trajectory_id}-step-{step}",
            f"{trajectory_id}-call-{step}-{n}",
            WINDOW_START + dt.timedelta(seconds=step),
            system,
            user,
            json.dumps([{"role": "system", "content": system}, {"role": "user", "content": user}]),
            response,
        )
