"""With `--babylon-db`: write the demo game into the game's own tables (Prisma schema), as the
game's TrajectoryRecorder would, so the dataset is read back through the Babylon source."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets

import asyncpg

from app.babylon.connection import connect
from app_dev.demo.game import GameResult, PlayedTrajectory


def _naive_utc(value: dt.datetime) -> dt.datetime:
    # The game's columns are TIMESTAMP(3) without time zone holding UTC.
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _step(t: PlayedTrajectory, at: dt.datetime) -> dict[str, object]:
    traded = t.decision != "HOLD"
    pnl_change = round(t.reward * 250, 2)
    return {
        "stepNumber": 0,
        "timestamp": int(at.timestamp() * 1000),
        "environmentState": {
            "agentBalance": 10_000,
            "agentPnL": pnl_change,
            "openPositions": 1 if traded else 0,
        },
        "providerAccesses": [],
        "llmCalls": [
            {
                "model": t.completion_model,
                "systemPrompt": t.messages[0]["content"],
                "userPrompt": t.messages[1]["content"],
                "response": t.answer,
                "temperature": 0.7,
                "maxTokens": 24,
                "purpose": "action",
                "actionType": "TRADING_DECISION",
            }
        ],
        "action": {
            "actionType": "TRADING_DECISION",
            "parameters": {
                "method": "database",
                "pnlChange": pnl_change,
                "initialPnL": 0,
                "finalPnL": pnl_change,
                **(
                    {"marketId": f"demo-market-{t.window_id}", "side": t.decision, "marketType": "prediction"}
                    if traded
                    else {}
                ),
            },
            "success": traded,
        },
        "reward": t.reward,
    }


async def _write(dsn: str, game: GameResult) -> int:
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            now = _naive_utc(dt.datetime.now(dt.UTC))
            for agent_id in sorted({t.agent_id for t in game.trajectories}):
                await conn.execute(
                    'INSERT INTO "User" (id, "updatedAt", "isAgent", username) VALUES ($1, $2, true, $1) '
                    "ON CONFLICT (id) DO NOTHING",
                    agent_id,
                    now,
                )
            for t in game.trajectories:
                start = dt.datetime.strptime(t.window_id, "%Y-%m-%dT%H:%M").replace(
                    tzinfo=dt.UTC
                ) + dt.timedelta(minutes=5)
                end = start + dt.timedelta(seconds=2)
                steps = [_step(t, start)]
                await conn.execute(
                    """
                    INSERT INTO trajectories (
                        id, "trajectoryId", "agentId", "startTime", "endTime", "durationMs", "windowId",
                        "scenarioId", "episodeId", "stepsJson", "rewardComponentsJson", "metricsJson",
                        "metadataJson", "totalReward", "episodeLength", "finalStatus", "finalPnL",
                        "tradesExecuted", "postsCreated", "isTrainingData", "usedInTraining", "updatedAt")
                    VALUES ($1,$2,$3,$4,$5,$6,$7,$7,$8,$9,$10,$11,$12,$13,1,$14,$15,0,0,true,false,$16)
                    ON CONFLICT ("trajectoryId") DO NOTHING
                    """,
                    secrets.token_hex(9),
                    t.trajectory_id,
                    t.agent_id,
                    _naive_utc(start),
                    _naive_utc(end),
                    2000,
                    t.window_id,
                    f"{t.window_id}-{int(start.timestamp() * 1000)}",
                    json.dumps(steps),
                    json.dumps({"environmentReward": t.reward}),
                    json.dumps(
                        {
                            "episodeLength": 1,
                            "finalStatus": "completed",
                            "tradesExecuted": 0,
                            "postsCreated": 0,
                            "errorCount": 0,
                        }
                    ),
                    json.dumps(
                        {
                            "isTrainingData": True,
                            "gameKnowledge": {"actualOutcomes": {t.window_id: t.outcome}},
                        }
                    ),
                    t.reward,
                    "completed" if t.decision != "HOLD" else "completed_with_errors",
                    round(t.reward * 250, 2),
                    _naive_utc(end),
                )
            for window in game.windows:
                outcome = next(t.outcome for t in game.trajectories if t.window_id == window)
                await conn.execute(
                    'INSERT INTO market_outcomes (id, "windowId", "predictionMarketId", question, outcome) '
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                    f"demo-outcome-{window}",
                    window,
                    f"demo-market-{window}",
                    "demo market",
                    outcome,
                )
    finally:
        await conn.close()
    return len(game.trajectories)


# The game's tables the demo writes into and the service reads back (babylon-data.md).
GAME_TABLES = ("User", "trajectories", "market_outcomes", "training_batches", "trained_models")
SCHEMA_FIXTURE = "tests/fixtures/babylon_game/schema.sql"


class GameDatabaseUnusable(Exception):
    """`--babylon-db` cannot be used; the message says why and what to do. `schema_missing`
    tells a database without the game's tables from one that cannot be reached."""

    def __init__(self, message: str, *, schema_missing: bool) -> None:
        super().__init__(message)
        self.schema_missing = schema_missing


async def _missing_tables(dsn: str) -> list[str]:
    conn = await connect(dsn, connect_timeout_s=10.0)
    try:
        found = {
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY($1)",
                list(GAME_TABLES),
            )
        }
    finally:
        await conn.close()
    return [t for t in GAME_TABLES if t not in found]


def check_game_database(dsn: str) -> None:
    """Before anything starts: the game's database answers and has the game's tables."""
    try:
        missing = asyncio.run(_missing_tables(dsn))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        raise GameDatabaseUnusable(
            f"cannot connect to the game's database at --babylon-db: {reason}", schema_missing=False
        ) from None
    if missing:
        names = ", ".join(f'"{t}"' for t in missing)
        raise GameDatabaseUnusable(
            f"the game's schema is missing in the --babylon-db database (no table {names}): load the "
            f"game's DDL into an empty database first, e.g. `psql -v ON_ERROR_STOP=1 -d <database> -f "
            f"{SCHEMA_FIXTURE}` (in this repository), then rerun",
            schema_missing=True,
        )


def write_game(dsn: str, game: GameResult) -> int:
    """Insert the game's agents, trajectories and market outcomes; returns the trajectories written."""
    return asyncio.run(_write(dsn, game))
