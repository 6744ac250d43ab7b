"""Pushed trajectories: validation item by item, storage, listing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadRequest, NotFound
from app.ids import new_id
from app.pagination import created_page
from app.trajectories.art_shape import count_turns
from app.trajectories.models import PushedTrajectory
from app.trajectories.schemas import AcceptedItem, ItemError, TrajectoryBatchResult
from app.trajectories.validation import Problem, normalize_trajectory

LOOKUP_CHUNK = 1000


async def push_trajectories(session: AsyncSession, items: Sequence[Any]) -> TrajectoryBatchResult:
    """Store every valid item; report each invalid one with its index. Flushes, never commits.
    Raises BadRequest when no item is valid."""
    errors: list[ItemError] = []
    valid: list[tuple[int, dict[str, Any], str]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            traj = normalize_trajectory(item, f"trajectories[{index}]", require_scenario_id=True)
        except Problem as problem:
            errors.append(
                ItemError(index=index, param=problem.param, code=problem.code, message=problem.message)
            )
            continue
        external = traj["metadata"].get("trajectory_id")
        tid = external if isinstance(external, str) and external else new_id("traj")
        if tid in seen:
            errors.append(
                ItemError(
                    index=index,
                    param=f"trajectories[{index}].metadata.trajectory_id",
                    code="duplicate_trajectory_id",
                    message=f"trajectory_id {tid!r} appears twice in this batch",
                )
            )
            continue
        seen.add(tid)
        valid.append((index, traj, tid))
    existing: set[str] = set()
    ids = [tid for _, _, tid in valid]
    for i in range(0, len(ids), LOOKUP_CHUNK):
        existing.update(
            await session.scalars(
                sa.select(PushedTrajectory.trajectory_id).where(
                    PushedTrajectory.trajectory_id.in_(ids[i : i + LOOKUP_CHUNK])
                )
            )
        )
    accepted: list[AcceptedItem] = []
    for index, traj, tid in valid:
        if tid in existing:
            errors.append(
                ItemError(
                    index=index,
                    param=f"trajectories[{index}].metadata.trajectory_id",
                    code="duplicate_trajectory_id",
                    message=f"a trajectory with trajectory_id {tid!r} was already pushed",
                )
            )
            continue
        metadata = traj["metadata"]
        agent = metadata.get("agent_id")
        row = PushedTrajectory(
            id=new_id("traj"),
            trajectory_id=tid,
            scenario_id=str(metadata["scenario_id"]).strip(),
            agent_id=str(agent) if agent is not None else None,
            reward=traj["reward"],
            trajectory=traj,
            trainable_turns=count_turns(traj).trainable,
        )
        session.add(row)
        accepted.append(
            AcceptedItem(
                index=index,
                id=row.id,
                trajectory_id=tid,
                scenario_id=row.scenario_id,
                trainable_turns=row.trainable_turns,
            )
        )
    errors.sort(key=lambda e: e.index)
    if not accepted:
        first = errors[0]
        more = (
            f" (and {len(errors) - 1} more rejected item{'s' if len(errors) > 2 else ''})"
            if len(errors) > 1
            else ""
        )
        raise BadRequest(
            f"no trajectory accepted: {first.param}: {first.message}{more}",
            param=first.param,
            code=first.code,
        )
    await session.flush()
    return TrajectoryBatchResult(accepted=len(accepted), rejected=len(errors), data=accepted, errors=errors)


async def get_pushed(session: AsyncSession, trajectory_id: str) -> PushedTrajectory:
    row = await session.get(PushedTrajectory, trajectory_id)
    if row is None:
        row = await session.scalar(
            sa.select(PushedTrajectory).where(PushedTrajectory.trajectory_id == trajectory_id)
        )
    if row is None:
        raise NotFound(
            f"no pushed trajectory {trajectory_id!r}", param="trajectory_id", code="trajectory_not_found"
        )
    return row


async def list_pushed(
    session: AsyncSession, *, scenario_id: str | None, after: str | None, limit: int
) -> tuple[list[PushedTrajectory], bool]:
    """Oldest first, optionally of one scenario; `after` is the id of the last one seen."""
    query = sa.select(PushedTrajectory)
    if scenario_id is not None:
        query = query.where(PushedTrajectory.scenario_id == scenario_id)
    return await created_page(
        session,
        query,
        PushedTrajectory,
        after=after,
        limit=limit,
        newest_first=False,
        what="pushed trajectory",
    )
