"""`/v1/models/{name}/rollouts…`: start, list, read and cancel reward-gated rollouts.

Registered before the model routes (their `GET /v1/models/{model_id:path}` would take these
paths otherwise). Starting or ending a rollout forgets this process's resolved names at once;
other processes follow within `INFERENCE__RESOLVE_CACHE_TTL_S`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import WithJsonSchema

from app.auth import require_scope
from app.deps import SessionDep, SettingsDep
from app.errors import error_responses
from app.keys.scopes import Scope
from app.rollouts import service
from app.rollouts.schemas import (
    ROLLOUT_REQUEST_SCHEMA,
    RolloutEventList,
    RolloutEventObject,
    RolloutList,
    RolloutObject,
)
from app.state import app_state

router = APIRouter(prefix="/v1/models", tags=["rollouts"], dependencies=[require_scope(Scope.admin)])
Limit = Annotated[int, Query(ge=1, le=100)]
RolloutBody = Annotated[Any, Body(), WithJsonSchema(ROLLOUT_REQUEST_SCHEMA)]


def _forget_resolutions(request: Request) -> None:
    gateway = app_state(request.app).gateway
    if gateway is not None:
        gateway.resolver.invalidate()


@router.post("/{name:path}/rollouts", response_model=RolloutObject, responses=error_responses(400, 404, 409))
async def create_rollout(
    name: str, body: RolloutBody, request: Request, session: SessionDep, settings: SettingsDep
) -> RolloutObject:
    """Start serving `candidate` to `share` of `alias`'s traffic (sticky by
    `metadata.trajectory_id`, else `metadata.agent_id` per hour) until the rewards decide:
    promoted, rolled back, or expired after `max_duration`. One running rollout per alias."""
    result = RolloutObject.from_row(*await service.create_rollout(session, settings, name, body))
    await session.commit()
    _forget_resolutions(request)
    return result


@router.get("/{name:path}/rollouts", response_model=RolloutList, responses=error_responses(400, 404))
async def list_rollouts(
    name: str,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
    state: str | None = None,
) -> RolloutList:
    """The model line's rollouts, newest first; `state` filters (running, promoted, …)."""
    views, more = await service.list_rollouts(session, name, after=after, limit=limit, state=state)
    return RolloutList.of([RolloutObject.from_row(*v) for v in views], more)


@router.get(
    "/{name:path}/rollouts/{rollout_id}/events",
    response_model=RolloutEventList,
    responses=error_responses(400, 404),
)
async def list_rollout_events(
    name: str, rollout_id: str, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> RolloutEventList:
    """What happened to the rollout, oldest first: started, then its decision with the stats."""
    rows, more = await service.events(session, name, rollout_id, after=after, limit=limit)
    return RolloutEventList.of([RolloutEventObject.from_row(r) for r in rows], more)


@router.get(
    "/{name:path}/rollouts/{rollout_id}", response_model=RolloutObject, responses=error_responses(404)
)
async def retrieve_rollout(name: str, rollout_id: str, session: SessionDep) -> RolloutObject:
    """Per-arm counts, mean and spread of the reward, the difference with its confidence
    sequence, the state and the reason (updated by each evaluation)."""
    return RolloutObject.from_row(*await service.retrieve_rollout(session, name, rollout_id))


@router.post(
    "/{name:path}/rollouts/{rollout_id}/cancel",
    response_model=RolloutObject,
    responses=error_responses(404, 409),
)
async def cancel_rollout(
    name: str, rollout_id: str, request: Request, session: SessionDep, settings: SettingsDep
) -> RolloutObject:
    """Stop a running rollout: the alias keeps its checkpoint (409 when it is not running)."""
    result = RolloutObject.from_row(*await service.cancel(session, settings, name, rollout_id))
    await session.commit()
    _forget_resolutions(request)
    return result
