"""Model routes: /v1/models, /v1/models/{id}, alias moves.

They are served with the gateway's route class (auth in the route, as on the hot path, and the
`x-gateway-overhead-ms` header on every answer, 401s included). The registry sits below the
gateway, so the composition root hands that class in: `create_router(GatewayRoute)`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute

from app.auth import BEARER_SECURITY, require_scope
from app.deps import SessionDep, SettingsDep
from app.errors import error_responses
from app.keys.scopes import Scope
from app.keys.service import Principal
from app.registry.catalog import list_models
from app.registry.resolution import ModelResolver, check_access
from app.registry.schemas import AliasObject, AliasRequest, ModelList, ModelObject
from app.registry.service import model_not_found, point_alias
from app.state import app_state


def _resolver(request: Request) -> ModelResolver:
    return app_state(request.app).resolver


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal  # set by the route class's authentication
    return principal


async def models_list(request: Request, session: SessionDep, settings: SettingsDep) -> ModelList:
    """Base models, each model line (serving its latest checkpoint), its aliases and its
    checkpoints. Checkpoint ids (`ftckpt-…`) and job ids (`ftjob-…`) are accepted too. A key
    limited to some models sees only those."""
    access = _principal(request).models
    return ModelList(data=await list_models(session, settings.training.allowed_base_models, access))


async def models_set_alias(
    name: str, body: AliasRequest, request: Request, session: SessionDep
) -> AliasObject:
    """`name` is a model line (`<name>` or `wandb-artifact:///<entity>/<project>/<name>`). The
    alias (`production`, `best`, …) then serves as `<name>:<alias>`; the move takes effect in
    this process at once and in others within `INFERENCE__RESOLVE_CACHE_TTL_S`."""
    principal = getattr(request.state, "principal", None)  # set by the route class's auth
    actor = principal.key_id if principal is not None else None
    model, row, ckpt = await point_alias(session, name, body.alias, body.checkpoint, actor=actor)
    result = AliasObject.from_rows(model, row, ckpt)
    await session.commit()
    _resolver(request).invalidate()
    return result


async def models_retrieve(model_id: str, request: Request) -> ModelObject:
    """Any name `/v1/chat/completions` accepts; `served_model` is the concrete model it serves now."""
    resolution = await _resolver(request).resolve(model_id)
    check_access(_principal(request).models, resolution)
    served, fallback = resolution.upstream_model, False
    if resolution.deleted:
        if not (resolution.fallback and resolution.base_model):
            raise model_not_found(model_id, f"checkpoint {resolution.checkpoint_id} was deleted")
        served, fallback = resolution.base_model, True
    return ModelObject.of_resolution(resolution, served_model=served, fallback=fallback)


def create_router(route_class: type[APIRoute]) -> APIRouter:
    router = APIRouter(tags=["inference"], route_class=route_class)
    router.add_api_route(
        "/v1/models",
        models_list,
        methods=["GET"],
        dependencies=[require_scope(Scope.inference)],
        summary="List models",
        response_model=ModelList,
        responses=error_responses(401),
        openapi_extra=BEARER_SECURITY,
    )
    router.add_api_route(
        "/v1/models/{name:path}/aliases",
        models_set_alias,
        methods=["POST"],
        dependencies=[require_scope(Scope.admin)],
        summary="Point an alias at a checkpoint",
        response_model=AliasObject,
        responses=error_responses(400, 401, 404, 422),
        openapi_extra=BEARER_SECURITY,
    )
    router.add_api_route(
        "/v1/models/{model_id:path}",
        models_retrieve,
        methods=["GET"],
        dependencies=[require_scope(Scope.inference)],
        summary="Retrieve a model",
        response_model=ModelObject,
        responses=error_responses(401, 404, 422),
        openapi_extra=BEARER_SECURITY,
    )
    return router
