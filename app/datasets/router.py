"""`/v1/datasets`: build GRPO datasets and page through their groups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.auth import require_scope
from app.datasets import service, sources
from app.datasets.schemas import (
    GROUP_PREFIX,
    REJECTION_PREFIX,
    DatasetCreate,
    DatasetGroupObject,
    DatasetObject,
    DatasetRejectionObject,
)
from app.datasets.tasks import wait_for_build
from app.deps import SessionDep, SettingsDep
from app.errors import Unprocessable, error_responses
from app.keys.scopes import Scope
from app.pagination import ListPage, numbered_cursor
from app.state import app_state

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[require_scope(Scope.training)])

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
    app_state(request.app).wake_worker()
    dataset = await wait_for_build(app_state(request.app).sessionmaker, dataset_id, wait_s)
    return DatasetObject.from_row(dataset)


@router.get("", response_model=ListPage[DatasetObject], responses=error_responses(400))
async def list_datasets(
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
    source: Annotated[str | None, Query(max_length=64, description="pushed, file or a game's source")] = None,
) -> ListPage[DatasetObject]:
    if source is not None and source != sources.FILE and source not in sources.source_names():
        names = ", ".join([*sources.source_names(), sources.FILE])
        raise Unprocessable(f"source: unknown source {source!r}; available: {names}", param="source")
    rows, has_more = await service.list_datasets(session, after=after, limit=limit, source=source)
    data = [DatasetObject.from_row(r) for r in rows]
    return ListPage.of(data, has_more)


@router.get("/{dataset_id}", response_model=DatasetObject, responses=error_responses(404))
async def retrieve_dataset(dataset_id: str, session: SessionDep) -> DatasetObject:
    return DatasetObject.from_row(await service.get_dataset(session, dataset_id))


@router.get(
    "/{dataset_id}/groups",
    response_model=ListPage[DatasetGroupObject],
    responses=error_responses(400, 404, 409),
)
async def list_groups(
    dataset_id: str,
    session: SessionDep,
    after: Annotated[str | None, Query(description="id of the last group seen (grp-N)")] = None,
    limit: Limit = 20,
) -> ListPage[DatasetGroupObject]:
    """Groups in position order, each with its rewards and ART-ready trajectories."""
    dataset = await service.get_dataset(session, dataset_id)
    service.ensure_ready(dataset)
    last = numbered_cursor(after, GROUP_PREFIX)
    start = last + 1 if last is not None else 0
    rows = await service.list_group_rows(session, dataset_id, start=start, limit=limit + 1)
    data = [DatasetGroupObject.from_row(r) for r in rows[:limit]]
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
    rows, has_more = await service.list_rejections(
        session, dataset_id, reason=reason, after=numbered_cursor(after, REJECTION_PREFIX), limit=limit
    )
    data = [DatasetRejectionObject.from_row(r) for r in rows]
    return ListPage.of(data, has_more)
