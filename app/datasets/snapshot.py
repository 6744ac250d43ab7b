"""Writes a dataset's frozen snapshot to the service DB in short transactions.

The builder hands over one window's groups, scores and rejected rows at a time; `flush`
writes them and refreshes the build's heartbeat in one transaction, so memory holds one
window and SQLite's write lock is held for milliseconds, not for the whole build.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup, DatasetRejection
from app.db import UTCDateTime, utcnow
from app.scoring.models import TrajectoryScore
from app.scoring.registry import ScoreResult

DETAIL_MAX = 500
ID_MAX = 200


def _clip(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def _param(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    # "p_" prefix: a bound parameter may not share its name with a column of the INSERT
    return sa.bindparam(f"p_{name}", type_=type_)


def _json_param(dialect: str, name: str) -> sa.ColumnElement[Any]:
    """A JSON column's value passed as text already serialised (orjson): SQLAlchemy's JSON
    type would run the stdlib encoder, the slowest step of writing a large snapshot."""
    param = _param(name, sa.Text())
    return sa.cast(param, JSONB) if dialect == "postgresql" else param


def _row(values: dict[str, Any]) -> dict[str, Any]:
    return {f"p_{k}": v for k, v in values.items()}


def group_insert(dialect: str) -> sa.Insert:
    return sa.insert(DatasetGroup).values(
        dataset_id=_param("dataset_id"),
        position=_param("position"),
        scenario_id=_param("scenario_id"),
        rewards=_json_param(dialect, "rewards"),
        trajectories=_json_param(dialect, "trajectories"),
        trainable_turns=_param("trainable_turns"),
    )


def score_upsert(dialect: str) -> sa.Insert:
    """INSERT … ON CONFLICT (trajectory, scorer, version) DO UPDATE: a re-score replaces.
    Executed with a list of rows (executemany): compiled once, not once per row."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(TrajectoryScore).values(
        trajectory_id=_param("trajectory_id"),
        source=_param("source"),
        window_id=_param("window_id"),
        agent_id=_param("agent_id"),
        scorer=_param("scorer"),
        scorer_version=_param("scorer_version"),
        score=_param("score"),
        components=_json_param(dialect, "components"),
        reasoning=_param("reasoning"),
        dataset_id=_param("dataset_id"),
        created_at=_param("created_at", UTCDateTime()),
        updated_at=_param("updated_at", UTCDateTime()),
    )
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=["trajectory_id", "scorer", "scorer_version"],
        set_={
            "score": excluded.score,
            "components": excluded.components,
            "reasoning": excluded.reasoning,
            "window_id": excluded.window_id,
            "agent_id": excluded.agent_id,
            "source": excluded.source,
            "dataset_id": excluded.dataset_id,
            "updated_at": excluded.updated_at,
        },
    )


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class SnapshotWriter:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        dataset_id: str,
        *,
        source: str,
        scorer: str,
        scorer_version: str,
        max_listed_rejections: int,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.dataset_id = dataset_id
        self._source = source
        self._scorer = scorer
        self._scorer_version = scorer_version
        self._max_rejections = max_listed_rejections
        self.position = 0
        self.rejections_listed = 0
        self._groups: list[dict[str, Any]] = []
        self._scores: dict[str, dict[str, Any]] = {}
        self._rejections: list[dict[str, Any]] = []
        self._pending_trajectories = 0

    @property
    def pending_scores(self) -> int:
        return len(self._scores)

    @property
    def pending_trajectories(self) -> int:
        return self._pending_trajectories

    def add_group(
        self, scenario_id: str, rewards: list[float], trajectories: list[dict[str, Any]], trainable_turns: int
    ) -> None:
        # serialised now: pending groups are held as compact JSON text, not object graphs
        self._groups.append(
            _row(
                {
                    "dataset_id": self.dataset_id,
                    "position": self.position,
                    "scenario_id": scenario_id[:ID_MAX],
                    "rewards": _dumps(rewards),
                    "trajectories": _dumps(trajectories),
                    "trainable_turns": trainable_turns,
                }
            )
        )
        self.position += 1
        self._pending_trajectories += len(trajectories)

    def add_score(
        self, trajectory_id: str, window_id: str | None, agent_id: str | None, result: ScoreResult
    ) -> None:
        # keyed by trajectory: one statement must not upsert the same row twice
        now = utcnow()
        self._scores[trajectory_id] = {
            "p_trajectory_id": trajectory_id[:ID_MAX],
            "p_source": self._source,
            "p_window_id": _clip(window_id, ID_MAX),
            "p_agent_id": _clip(agent_id, ID_MAX),
            "p_scorer": self._scorer,
            "p_scorer_version": self._scorer_version,
            "p_score": float(result.score),
            "p_components": _dumps(result.components),
            "p_reasoning": result.reasoning,
            "p_dataset_id": self.dataset_id,
            "p_created_at": now,
            "p_updated_at": now,
        }

    def take_scores(self) -> list[tuple[str, float, str | None]]:
        """(trajectory id, score, reasoning) added since the last flush, for the game's write-back."""
        return [(s["p_trajectory_id"], s["p_score"], s["p_reasoning"]) for s in self._scores.values()]

    def add_rejection(
        self,
        trajectory_id: str | None,
        window_id: str | None,
        agent_id: str | None,
        reason: str,
        detail: str | None,
    ) -> None:
        if self.rejections_listed >= self._max_rejections:
            return
        self.rejections_listed += 1
        self._rejections.append(
            {
                "dataset_id": self.dataset_id,
                "trajectory_id": _clip(trajectory_id, ID_MAX),
                "window_id": _clip(window_id, ID_MAX),
                "agent_id": _clip(agent_id, ID_MAX),
                "reason": reason[:64],
                "detail": _clip(detail, DETAIL_MAX),
            }
        )

    async def flush(self, progress: dict[str, Any] | None = None) -> None:
        """Write what is pending and refresh the heartbeat, in one transaction."""
        async with self._sessionmaker() as session:
            dialect = session.get_bind().dialect.name
            if self._groups:
                await session.execute(group_insert(dialect), self._groups)
            if self._scores:
                await session.execute(score_upsert(dialect), list(self._scores.values()))
            if self._rejections:
                await session.execute(sa.insert(DatasetRejection), self._rejections)
            values: dict[str, Any] = {"heartbeat_at": utcnow()}
            if progress is not None:
                values["stats"] = progress
            await session.execute(sa.update(Dataset).where(Dataset.id == self.dataset_id).values(**values))
            await session.commit()
        self._groups.clear()
        self._scores.clear()
        self._rejections.clear()
        self._pending_trajectories = 0

    async def discard(self) -> None:
        """Remove a failed build's partial snapshot (its scores stay: each is a valid score)."""
        self._groups.clear()
        self._scores.clear()
        self._rejections.clear()
        async with self._sessionmaker() as session:
            await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == self.dataset_id))
            await session.execute(
                sa.delete(DatasetRejection).where(DatasetRejection.dataset_id == self.dataset_id)
            )
            await session.commit()


def heartbeat_is_stale(heartbeat: dt.datetime | None, created: dt.datetime, stale_after_s: float) -> bool:
    last = heartbeat or created
    return (utcnow() - last).total_seconds() > stale_after_s
