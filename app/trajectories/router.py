"""`/v1/trajectories`: any game pushes ART-shaped trajectories; datasets group them by scenario."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth import require_scope
from app.deps import SessionDep
from app.errors import error_responses
from app.keys.scopes import Scope
from app.pagination import ListPage
from app.trajectories import service
from app.trajectories.schemas import TrajectoryBatch, TrajectoryBatchResult, TrajectoryObject

router = APIRouter(
    prefix="/v1/trajectories", tags=["trajectories"], dependencies=[require_scope(Scope.training)]
)


@router.post("", response_model=TrajectoryBatchResult, responses=error_responses(400, 422))
async def push_trajectories(body: TrajectoryBatch, session: SessionDep) -> TrajectoryBatchResult:
    """Store the valid items of a batch; each invalid item is listed in `errors` with its index,
    the path of the bad field and what is wrong. 400 when no item is valid."""
    result = await service.push_trajectories(session, body.trajectories)
    await session.commit()
    return result


@router.get("", response_model=ListPage[TrajectoryObject], responses=error_responses(400))
async def list_trajectories(
    session: SessionDep,
    scenario_id: Annotated[str | None, Query(max_length=200)] = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPage[TrajectoryObject]:
    rows, has_more = await service.list_pushed(session, scenario_id=scenario_id, after=after, limit=limit)
    data = [TrajectoryObject.from_row(r) for r in rows]
    return ListPage.of(data, has_more)


@router.get("/{trajectory_id}", response_model=TrajectoryObject, responses=error_responses(404))
async def retrieve_trajectory(trajectory_id: str, session: SessionDep) -> TrajectoryObject:
    """By the service's id (traj-…) or by the caller's `metadata.trajectory_id`."""
    return TrajectoryObject.from_row(await service.get_pushed(session, trajectory_id))
