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
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup, DatasetRejection
from app.db import utcnow
from app.scoring.registry import ScoreResult

DETAIL_MAX = 500
FLUSH_TRAJECTORIES = 2_000  # trajectories of pending groups
FLUSH_ROWS = 2_000  # pending score and rejection rows
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


_SCORE_COLUMNS = (
    "trajectory_id, source, window_id, agent_id, scorer, scorer_version, score, components, reasoning, "
    "dataset_id, created_at, updated_at"
)
_SCORE_CONFLICT = (
    "ON CONFLICT (trajectory_id, scorer, scorer_version) DO UPDATE SET score = excluded.score, "
    "components = excluded.components, reasoning = excluded.reasoning, window_id = excluded.window_id, "
    "agent_id = excluded.agent_id, source = excluded.source, dataset_id = excluded.dataset_id, "
    "updated_at = excluded.updated_at"
)
# INSERT … ON CONFLICT (trajectory, scorer, version) DO UPDATE: a re-score replaces the old one
SCORE_UPSERT = {
    "sqlite": f"INSERT INTO trajectory_scores ({_SCORE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) {_SCORE_CONFLICT}",
    "postgresql": f"INSERT INTO trajectory_scores ({_SCORE_COLUMNS}) "
    f"VALUES ($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9,$10,$11,$12) {_SCORE_CONFLICT}",
}
ScoreRow = tuple[str, str, str | None, str | None, str, str, float, str, str | None, str, Any, Any]


async def upsert_scores(session: AsyncSession, rows: list[ScoreRow]) -> None:
    """Score rows through the driver's own executemany, inside the session's transaction:
    SQLAlchemy's per-row parameter processing would cost ~4x more at a million rows. The
    session must already have executed a statement (its transaction is open)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # SQLAlchemy's own text form of a naive UTC timestamp on SQLite (rows share few stamps)
        texts: dict[Any, str] = {}
        for stamp in {r[10] for r in rows} | {r[11] for r in rows}:
            texts[stamp] = stamp.astimezone(dt.UTC).strftime(_SQLITE_TIME)
        rows = [(*r[:10], texts[r[10]], texts[r[11]]) for r in rows]
    await driver.executemany(SCORE_UPSERT[dialect], rows)


_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


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
        self._scores: dict[str, ScoreRow] = {}
        self._rejections: list[dict[str, Any]] = []
        self._pending_trajectories = 0

    @property
    def should_flush(self) -> bool:
        """Enough is pending to write it now: memory holds at most this much, and small windows
        share one commit (each commit waits for the disk)."""
        return (
            self._pending_trajectories >= FLUSH_TRAJECTORIES
            or len(self._scores) + len(self._rejections) >= FLUSH_ROWS
        )

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
        self.add_scores([trajectory_id], window_id, agent_id, result)

    def add_scores(
        self, trajectory_ids: list[str], window_id: str | None, agent_id: str | None, result: ScoreResult
    ) -> None:
        """One result for several trajectories (a per-agent scorer): serialised once."""
        now = utcnow()
        window, agent, components = (
            _clip(window_id, ID_MAX),
            _clip(agent_id, ID_MAX),
            _dumps(result.components),
        )
        score, reasoning = float(result.score), result.reasoning
        for trajectory_id in trajectory_ids:
            # keyed by trajectory: one statement must not upsert the same row twice
            self._scores[trajectory_id] = (
                trajectory_id[:ID_MAX],
                self._source,
                window,
                agent,
                self._scorer,
                self._scorer_version,
                score,
                components,
                reasoning,
                self.dataset_id,
                now,
                now,
            )

    def take_scores(self) -> list[tuple[str, float, str | None]]:
        """(trajectory id, score, reasoning) added since the last flush, for the game's write-back."""
        return [(s[0], s[6], s[8]) for s in self._scores.values()]

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
            values: dict[str, Any] = {"heartbeat_at": utcnow()}
            if progress is not None:
                values["stats"] = progress
            # first: this statement opens the transaction the raw score upsert joins
            await session.execute(sa.update(Dataset).where(Dataset.id == self.dataset_id).values(**values))
            if self._groups:
                await session.execute(group_insert(dialect), self._groups)
            if self._scores:
                await upsert_scores(session, list(self._scores.values()))
            if self._rejections:
                await session.execute(sa.insert(DatasetRejection), self._rejections)
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
