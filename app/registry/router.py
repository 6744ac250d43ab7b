"""Model routes: /v1/models, /v1/models/{id}, alias moves.

They use the gateway's route class: auth in the route (as on the hot path) and the
`x-gateway-overhead-ms` header on every answer, 401s included.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import SessionDep, SettingsDep
from app.errors import error_responses
from app.gateway.proxy import Gateway
from app.gateway.route import BEARER_SECURITY, GatewayRoute
from app.registry.catalog import alias_object, list_models, point_alias, resolved_model_object
from app.registry.resolution import model_not_found
from app.registry.schemas import AliasObject, AliasRequest, ModelList, ModelObject

router = APIRouter(tags=["inference"], route_class=GatewayRoute)


@router.get(
    "/v1/models",
    summary="List models",
    response_model=ModelList,
    responses=error_responses(401),
    openapi_extra=BEARER_SECURITY,
)
async def models_list(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Base models, each model line (serving its latest checkpoint), its aliases and its
    checkpoints. Checkpoint ids (`ftckpt-…`) and job ids (`ftjob-…`) are accepted too."""
    return {"object": "list", "data": await list_models(session, settings.training.allowed_base_models)}


@router.post(
    "/v1/models/{name:path}/aliases",
    summary="Point an alias at a checkpoint",
    response_model=AliasObject,
    responses=error_responses(400, 401, 404, 422),
    openapi_extra=BEARER_SECURITY,
)
async def models_set_alias(
    name: str, body: AliasRequest, request: Request, session: SessionDep
) -> dict[str, Any]:
    """`name` is a model line (`<name>` or `wandb-artifact:///<entity>/<project>/<name>`). The
    alias (`production`, `best`, …) then serves as `<name>:<alias>`; the move takes effect in
    this process at once and in others within `INFERENCE__RESOLVE_CACHE_TTL_S`."""
    model, row, ckpt = await point_alias(session, name, body.alias, body.checkpoint)
    result = alias_object(model, row, ckpt)
    await session.commit()
    request.app.state.gateway.resolver.invalidate()
    return result


@router.get(
    "/v1/models/{model_id:path}",
    summary="Retrieve a model",
    response_model=ModelObject,
    responses=error_responses(401, 404, 422),
    openapi_extra=BEARER_SECURITY,
)
async def models_retrieve(model_id: str, request: Request) -> JSONResponse:
    """Any name `/v1/chat/completions` accepts; `served_model` is the concrete model it serves now."""
    gateway: Gateway = request.app.state.gateway
    resolution = await gateway.resolver.resolve(model_id)
    served, fallback = resolution.upstream_model, False
    if resolution.deleted:
        if not (resolution.fallback and resolution.base_model):
            raise model_not_found(model_id, f"checkpoint {resolution.checkpoint_id} was deleted")
        served, fallback = resolution.base_model, True
    return JSONResponse(resolved_model_object(resolution, served_model=served, fallback=fallback))
