"""The gateway route: /v1/chat/completions.

Every route authenticates in `GatewayRoute` (401 in the envelope without a valid key) and
answers with `x-gateway-overhead-ms`: the time spent in the gateway minus the time waiting for
the upstream (for a stream, up to its response headers; the request log has the whole stream's).
Chat completions also carry `x-gateway-served-model` (and `x-gateway-fallback: base_model` when
the base model stood in for a deleted checkpoint).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.auth import BEARER_SECURITY, require_scope
from app.errors import error_responses
from app.gateway.route import GatewayRoute, LoggedGatewayRoute, gateway_call
from app.gateway.schemas import CHAT_REQUEST_SCHEMA
from app.keys.scopes import Scope
from app.state import app_state

router = APIRouter(tags=["inference"], route_class=GatewayRoute)


async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions, streamed (SSE, relayed as it arrives) or not, served by the
    checkpoint or base model the `model` name resolves to.

    A request whose `metadata` has `trajectory_id` is captured as training data: the sampled
    choice with its logprobs (which are removed from the answer unless `logprobs` was asked
    for). `metadata` is never forwarded upstream."""
    gateway = app_state(request.app).gateway
    assert gateway is not None, "the gateway runs while the app serves"
    return await gateway.chat_completions(request, gateway_call(request))


router.add_api_route(
    "/v1/chat/completions",
    chat_completions,
    methods=["POST"],
    summary="Create a chat completion",
    name="chat_completions",
    dependencies=[require_scope(Scope.inference)],
    route_class_override=LoggedGatewayRoute,
    responses=error_responses(400, 401, 402, 403, 404, 413, 429, 502, 503, 504),
    openapi_extra={
        **BEARER_SECURITY,
        "requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST_SCHEMA}}},
    },
)
