"""OpenAI-compatible inference routes: /v1/chat/completions, /v1/models, aliases.

Every route authenticates in `GatewayRoute` (401 in the envelope without a valid key) and
answers with `x-gateway-overhead-ms`: the time spent in the gateway minus the time waiting for
the upstream (for a stream, up to its response headers; the request log has the whole stream's).
Chat completions also carry `x-gateway-served-model` (and `x-gateway-fallback: base_model` when
the base model stood in for a deleted checkpoint).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.deps import SessionDep, SettingsDep
from app.errors import error_responses
from app.inference.gateway import Gateway
from app.inference.resolution import model_not_found
from app.inference.route import BEARER_SECURITY, GatewayRoute, LoggedGatewayRoute, gateway_call
from app.inference.schemas import CHAT_REQUEST_SCHEMA, AliasObject, AliasRequest, ModelList, ModelObject
from app.inference.service import alias_object, list_models, point_alias, resolved_model_object

router = APIRouter(tags=["inference"], route_class=GatewayRoute)


async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions, streamed (SSE, relayed as it arrives) or not, served by the
    checkpoint or base model the `model` name resolves to.

    A request whose `metadata` has `trajectory_id` is captured as training data: the sampled
    choice with its logprobs (which are removed from the answer unless `logprobs` was asked
    for). `metadata` is never forwarded upstream."""
    gateway: Gateway = request.app.state.gateway
    return await gateway.chat_completions(request, gateway_call(request))


router.add_api_route(
    "/v1/chat/completions",
    chat_completions,
    methods=["POST"],
    summary="Create a chat completion",
    name="chat_completions",
    route_class_override=LoggedGatewayRoute,
    responses=error_responses(400, 401, 402, 404, 413, 429, 502, 503, 504),
    openapi_extra={
        **BEARER_SECURITY,
        "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}},
    },
)


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
