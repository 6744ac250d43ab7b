"""The generic trajectory source: trajectories pushed over HTTP (`POST /v1/trajectories`).

Groups are the trajectories' `metadata.scenario_id`; rewards are the ones pushed. Rows are
read in keyset pages ordered by scenario (short read transactions: on SQLite a long read
would hold the write lock this build needs), one scenario's small summaries at a time; only
the trajectories kept in groups are loaded in full. A pushed trajectory without trainable
turns whose id has captured completions gets its turns from those captures.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.captures import captured_trajectory_ids, captures_for, conversation_from_captures
from app.datasets.grouping import Candidate, form_groups
from app.datasets.snapshot import SnapshotWriter
from app.datasets.sources import PUSHED
from app.datasets.stats import (
    FROM_CAPTURES,
    FROM_PUSHED,
    GROUP_DROPPED,
    NOT_REPRESENTATIVE,
    NOT_SELECTED,
    BuildStats,
)
from app.errors import StoredError
from app.trajectories.art_shape import count_turns
from app.trajectories.models import PushedTrajectory

if TYPE_CHECKING:  # the schemas import the source registry, which imports this module
    from app.datasets.schemas import DatasetCreate

PAGE = 2_000
LOAD_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Summary:
    id: str
    trajectory_id: str
    agent: str
    reward: float
    trainable: bool
    created_at: dt.datetime


class PushedSource:
    """Groups are the trajectories' `metadata.scenario_id`; rewards are the ones pushed."""

    name = PUSHED
    default_scorer: str | None = None

    def check_params(self, params: DatasetCreate) -> None:
        if params.window_ids is not None or params.trajectory_ids is not None:
            raise ValueError("the pushed source selects by scenario_ids or a time range")

    def prepare(self, settings: Settings, params: DatasetCreate) -> dict[str, Any]:
        return {}

    def build(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        dataset_id: str,
        params: DatasetCreate,
        stored: dict[str, Any],
    ) -> PushedBuild:
        return PushedBuild(sessionmaker, dataset_id, params)

    def describe_error(self, exc: BaseException, settings: Settings) -> StoredError | None:
        return None


class PushedBuild:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str, params: DatasetCreate
    ) -> None:
        self._sessionmaker = sessionmaker
        self._params = params
        self._rules = params.group_rules()
        self.stats = BuildStats()
        self.writer = SnapshotWriter(
            sessionmaker,
            dataset_id,
            source=PUSHED,
            scorer="pushed",
            scorer_version="1",
            max_listed_rejections=0,
        )

    def _filters(self) -> list[sa.ColumnElement[bool]]:
        p = self._params
        conds: list[sa.ColumnElement[bool]] = []
        if p.scenario_ids is not None:
            conds.append(PushedTrajectory.scenario_id.in_(sorted(set(p.scenario_ids))))
        if p.start_time is not None:
            conds.append(PushedTrajectory.created_at >= p.start_time)
        if p.end_time is not None:
            conds.append(PushedTrajectory.created_at < p.end_time)
        return conds

    async def run(self) -> BuildStats:
        started = time.monotonic()
        async with self._sessionmaker() as session:
            captured = await captured_trajectory_ids(session)
        cols = (
            PushedTrajectory.scenario_id,
            PushedTrajectory.created_at,
            PushedTrajectory.id,
            PushedTrajectory.trajectory_id,
            PushedTrajectory.agent_id,
            PushedTrajectory.reward,
            PushedTrajectory.trainable_turns,
        )
        after: tuple[Any, ...] | None = None
        scenario: str | None = None
        best: dict[str, _Summary] = {}
        rows_in_scenario: dict[str, int] = {}
        while True:
            query = sa.select(*cols).where(*self._filters())
            if after is not None:
                query = query.where(sa.tuple_(cols[0], cols[1], cols[2]) > sa.tuple_(*after))
            async with self._sessionmaker() as session:
                page = (await session.execute(query.order_by(cols[0], cols[1], cols[2]).limit(PAGE))).all()
            if not page:
                break
            for scen, created, pid, tid, agent_id, reward, trainable_turns in page:
                if scen != scenario:
                    if scenario is not None:
                        await self._close(scenario, best, rows_in_scenario)
                    scenario, best, rows_in_scenario = scen, {}, {}
                    self.stats.windows += 1
                self.stats.rows_read += 1
                agent = agent_id or tid  # no agent id: every trajectory is its own "agent"
                rows_in_scenario[agent] = rows_in_scenario.get(agent, 0) + 1
                summary = _Summary(pid, tid, agent, reward, trainable_turns > 0 or tid in captured, created)
                current = best.get(agent)
                if current is None or (summary.trainable, summary.created_at, summary.id) > (
                    current.trainable,
                    current.created_at,
                    current.id,
                ):
                    best[agent] = summary
            last = page[-1]
            after = (last[0], last[1], last[2])
        if scenario is not None:
            await self._close(scenario, best, rows_in_scenario)
        await self.writer.flush()
        self.stats.duration_s = time.monotonic() - started
        self.stats.extra["scorer"] = None
        return self.stats

    async def _close(self, scenario: str, best: dict[str, _Summary], rows: dict[str, int]) -> None:
        for count in rows.values():
            if count > 1:
                self.stats.ignored_by_reason[NOT_REPRESENTATIVE] += count - 1
        grouping = form_groups([Candidate(s.id, s.agent, s.reward, s) for s in best.values()], self._rules)
        if grouping.not_selected:
            self.stats.ignored_by_reason[NOT_SELECTED] += grouping.not_selected
        for reason, count in grouping.dropped.items():
            self.stats.groups_dropped_by_reason[reason] += count
        if grouping.dropped_members:
            self.stats.ignored_by_reason[GROUP_DROPPED] += sum(grouping.dropped_members.values())
        if not grouping.groups:
            return
        ids = [c.key for g in grouping.groups for c in g]
        stored: dict[str, dict[str, Any]] = {}
        async with self._sessionmaker() as session:
            for i in range(0, len(ids), LOAD_CHUNK):
                rows_ = await session.execute(
                    sa.select(PushedTrajectory.id, PushedTrajectory.trajectory).where(
                        PushedTrajectory.id.in_(ids[i : i + LOAD_CHUNK])
                    )
                )
                stored.update(dict(rows_.tuples().all()))
            untrained = [
                c.item.trajectory_id
                for g in grouping.groups
                for c in g
                if count_turns(stored[c.key]).trainable == 0
            ]
            captures = await captures_for(session, untrained) if untrained else {}
        for group in grouping.groups:
            trajectories = []
            rewards = []
            trainable = context_only = with_trainable = 0
            for c in group:
                traj = dict(stored[c.key])
                source = FROM_PUSHED
                caps = captures.get(c.item.trajectory_id)
                if caps:
                    conv = conversation_from_captures(caps)
                    self.stats.captures_invalid += conv.captures_invalid
                    if conv.captures_used:
                        traj["messages_and_choices"] = conv.messages_and_choices
                        traj["tools"] = conv.tools
                        traj["additional_histories"] = conv.additional_histories
                        source = FROM_CAPTURES
                turns = count_turns(traj)
                trainable += turns.trainable
                context_only += turns.context_only
                with_trainable += turns.trainable > 0
                self.stats.context_sources[source] += 1
                trajectories.append(traj)
                rewards.append(float(traj["reward"]))
            self.writer.add_group(scenario, rewards, trajectories, trainable)
            self.stats.add_group(rewards, trainable, context_only, with_trainable)
        await self.writer.flush()
