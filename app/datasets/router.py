"""`/v1/datasets`: build GRPO datasets and page through their groups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.datasets import service
from app.datasets.schemas import (
    DatasetCreate,
    DatasetGroupObject,
    DatasetObject,
    DatasetRejectionObject,
)
from app.datasets.tasks import wait_for_build
from app.deps import SessionDep, SettingsDep
from app.errors import BadRequest, error_responses
from app.pagination import ListPage
from app.worker.lifecycle import wake_worker

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=DatasetObject, responses=error_responses(400, 404, 409))
async def create_dataset(
    body: DatasetCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    wait_s: Annotated[float, Query(ge=0, le=300, description="wait up to this long for the build")] = 2.0,
) -> DatasetObject:
    """Queue a dataset build for the workers. The answer comes when the build is done or after
    `wait_s` (status `queued` or `building`); poll `GET /v1/datasets/{id}` until `ready` or
    `failed`."""
    dataset_id = (await service.create_dataset(session, settings, body)).id
    await session.commit()
    wake_worker(request)
    dataset = await wait_for_build(request.app.state.sessionmaker, dataset_id, wait_s)
    return DatasetObject.from_row(dataset)


@router.get("", response_model=ListPage[DatasetObject], responses=error_responses(400))
async def list_datasets(
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
    source: Annotated[str | None, Query(pattern="^(babylon|pushed|file)$")] = None,
) -> ListPage[DatasetObject]:
    rows, has_more = await service.list_datasets(session, after=after, limit=limit, source=source)
    data = [DatasetObject.from_row(r) for r in rows]
    return ListPage.of(data, has_more)


@router.get("/{dataset_id}", response_model=DatasetObject, responses=error_responses(404))
async def retrieve_dataset(dataset_id: str, session: SessionDep) -> DatasetObject:
    return DatasetObject.from_row(await service.get_dataset(session, dataset_id))


def _position_of(group_id: str) -> int:
    prefix = "grp-"
    if not group_id.startswith(prefix) or not group_id[len(prefix) :].isdigit():
        raise BadRequest(
            f"invalid group cursor {group_id!r}; use a group id such as 'grp-7'",
            param="after",
            code="invalid_cursor",
        )
    return int(group_id[len(prefix) :])


@router.get(
    "/{dataset_id}/groups",
    response_model=ListPage[DatasetGroupObject],
    responses=error_responses(400, 404, 409),
)
async def list_groups(
    dataset_id: str,
    session: SessionDep,
    after: Annotated[str | None, Query(description="id of the last group seen (grp-N)")] = None,
    offset: Annotated[int | None, Query(ge=0, description="or: the first position to return")] = None,
    limit: Limit = 20,
) -> ListPage[DatasetGroupObject]:
    """Groups in position order, each with its rewards and ART-ready trajectories."""
    dataset = await service.get_dataset(session, dataset_id)
    service.ensure_ready(dataset)
    if after is not None and offset is not None:
        raise BadRequest("use either after or offset", param="offset")
    start = _position_of(after) + 1 if after is not None else offset or 0
    rows = await service.list_group_rows(session, dataset_id, start=start, limit=limit + 1)
    data = [
        DatasetGroupObject(
            id=f"grp-{r.position}",
            dataset_id=dataset_id,
            position=r.position,
            scenario_id=r.scenario_id,
            rewards=r.rewards,
            trainable_turns=r.trainable_turns,
            trajectories=r.trajectories,
        )
        for r in rows[:limit]
    ]
    return ListPage.of(data, len(rows) > limit)


@router.get(
    "/{dataset_id}/rejections",
    response_model=ListPage[DatasetRejectionObject],
    responses=error_responses(400, 404),
)
async def list_rejections(
    dataset_id: str,
    session: SessionDep,
    reason: Annotated[str | None, Query(max_length=64, description="only this reason code")] = None,
    after: Annotated[str | None, Query(description="id of the last rejection seen (rej-N)")] = None,
    limit: Limit = 20,
) -> ListPage[DatasetRejectionObject]:
    """The game rows the build could not use, each with its reason code and what was wrong."""
    await service.get_dataset(session, dataset_id)
    after_id: int | None = None
    if after is not None:
        if not after.startswith("rej-") or not after[4:].isdigit():
            raise BadRequest(f"invalid rejection cursor {after!r}", param="after", code="invalid_cursor")
        after_id = int(after[4:])
    rows, has_more = await service.list_rejections(
        session, dataset_id, reason=reason, after=after_id, limit=limit
    )
    data = [
        DatasetRejectionObject(
            id=f"rej-{r.id}",
            trajectory_id=r.trajectory_id,
            window_id=r.window_id,
            agent_id=r.agent_id,
            reason=r.reason,
            detail=r.detail,
        )
        for r in rows
    ]
    return ListPage.of(data, has_more)
