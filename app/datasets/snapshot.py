"""Writes a dataset's frozen snapshot to the service DB in short transactions.

The builder hands over one window's groups, scores and rejected rows at a time; `flush`
writes them and refreshes the build's heartbeat in one transaction, so memory holds one
window and SQLite's write lock is held for milliseconds, not for the whole build.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup, DatasetRejection
from app.db import utcnow
from app.scoring.models import TrajectoryScore
from app.scoring.registry import ScoreResult

DETAIL_MAX = 500
ID_MAX = 200


def _clip(value: str | None, limit: int) -> str | None:
    return None if value is None else value[:limit]


def score_upsert(dialect: str, rows: list[dict[str, Any]]) -> sa.Insert:
    """INSERT … ON CONFLICT (trajectory, scorer, version) DO UPDATE: a re-score replaces."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(TrajectoryScore).values(rows)
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

    @property
    def pending_scores(self) -> int:
        return len(self._scores)

    def add_group(
        self, scenario_id: str, rewards: list[float], trajectories: list[dict[str, Any]], trainable_turns: int
    ) -> None:
        self._groups.append(
            {
                "dataset_id": self.dataset_id,
                "position": self.position,
                "scenario_id": scenario_id[:ID_MAX],
                "rewards": rewards,
                "trajectories": trajectories,
                "trainable_turns": trainable_turns,
            }
        )
        self.position += 1

    def add_score(
        self, trajectory_id: str, window_id: str | None, agent_id: str | None, result: ScoreResult
    ) -> None:
        # keyed by trajectory: one statement must not upsert the same row twice
        now = utcnow()
        self._scores[trajectory_id] = {
            "trajectory_id": trajectory_id[:ID_MAX],
            "source": self._source,
            "window_id": _clip(window_id, ID_MAX),
            "agent_id": _clip(agent_id, ID_MAX),
            "scorer": self._scorer,
            "scorer_version": self._scorer_version,
            "score": result.score,
            "components": result.components,
            "reasoning": result.reasoning,
            "dataset_id": self.dataset_id,
            "created_at": now,
            "updated_at": now,
        }

    def take_scores(self) -> list[dict[str, Any]]:
        """The scores added since the last flush (for the write-back to the game)."""
        return list(self._scores.values())

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
                await session.execute(sa.insert(DatasetGroup), self._groups)
            scores = list(self._scores.values())
            for i in range(0, len(scores), 500):
                await session.execute(score_upsert(dialect, scores[i : i + 500]))
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
