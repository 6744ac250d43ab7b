"""The route class of every gateway route: auth, scope, rate limit, errors, overhead header,
request log.

Auth runs here rather than as a router dependency: the proxy's hot path skips a round of
FastAPI dependency solving, and a 401 passes through this wrapper like every other answer, so
it carries `x-gateway-overhead-ms` too. The routes still declare the Bearer scheme in OpenAPI
(`openapi_extra`), so /docs shows the lock.

A gateway route declares its scope as every route does, `dependencies=[require_scope(…)]`
(app/auth.py); this class takes that declaration out of the dependencies (so none is solved)
and checks it after authenticating.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.auth import ScopeDecision, ScopeRequirement, authenticate, check_scope, scope_requirements
from app.errors import AppError, error_response
from app.gateway.proxy import CLIENT_CLOSED_STATUS, ClientClosed, GatewayCall, StreamRelay
from app.keys.scopes import Scope
from app.state import app_state

CALL_SCOPE_KEY = "gateway.call"


def gateway_call(request: Request) -> GatewayCall:
    call: GatewayCall = request.scope[CALL_SCOPE_KEY]
    return call


class GatewayRoute(APIRoute):
    """Authenticates, renders every error in the envelope and adds the overhead header."""

    # Set on routes whose requests go into the request log (the chat completions).
    log_route: str | None = None
    # Routes that cost money: the key's requests/tokens-per-minute limits apply (app/keys/ratelimit.py).
    rate_limited: bool = False

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        dependencies = list(kwargs.pop("dependencies", None) or [])
        scopes = scope_requirements(dependencies)
        if len(scopes) > 1:
            raise ValueError(f"route {path} declares {len(scopes)} scopes; declare exactly one")
        self.required_scope: ScopeDecision | None = scopes[0] if scopes else None
        kwargs["dependencies"] = [d for d in dependencies if not isinstance(d.dependency, ScopeRequirement)]
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        log_route = self.log_route
        endpoint = self._direct_endpoint()
        required = self.required_scope
        rate_limited = self.rate_limited

        async def handler(request: Request) -> Response:
            call = GatewayCall(start=time.perf_counter(), route=log_route or self.name)
            request.scope[CALL_SCOPE_KEY] = call
            state = app_state(request.app)
            gateway = state.gateway
            try:
                principal = await authenticate(state.authenticator, request.headers.get("authorization"))
                call.key_id = principal.key_id
                call.principal = principal
                request.state.principal = principal
                if isinstance(required, Scope):
                    check_scope(principal, required)
                if rate_limited and principal.limited and gateway is not None:
                    call.rate_headers = await gateway.limiter.admit(principal)
                response = await (endpoint(request) if endpoint is not None else original(request))
            except AppError as exc:
                if call.error_code is None:
                    call.error_code = exc.code
                response = error_response(exc)
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                call.error_code = "client_disconnected"
                response = ClientClosed()
            except Exception as exc:
                handled = await _registered_handler_response(request, exc)
                if handled is None:
                    raise
                response = handled
            if isinstance(response, StreamRelay):
                return response  # sends its own headers and logs when the stream ends
            now = time.perf_counter()
            response.raw_headers.extend(call.response_headers(now))
            if log_route is not None and gateway is not None:
                status = CLIENT_CLOSED_STATUS if isinstance(response, ClientClosed) else response.status_code
                gateway.log_request(call, status, now)
            return response

        return handler

    def _direct_endpoint(self) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
        """The endpoint itself when it takes nothing but the Request (the chat completions):
        FastAPI's request handler would only solve an empty set of dependencies around it,
        which is measurable per request on the hot path (bench/proxy/README.md)."""
        dependant = self.dependant
        takes_only_request = dependant.request_param_name is not None and not (
            dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or dependant.body_params
            or dependant.dependencies
            or dependant.response_param_name
            or dependant.background_tasks_param_name
        )
        if not takes_only_request or not inspect.iscoroutinefunction(self.endpoint):
            return None
        call = self.endpoint

        async def direct(request: Request) -> Response:
            response: Response = await call(request)
            return response

        return direct


async def _registered_handler_response(request: Request, exc: Exception) -> Response | None:
    """Render `exc` with the app's own exception handlers (validation errors, DB errors, …)."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None and cls is not Exception:
            response: Response = await handler(request, exc)
            return response
    return None


class LoggedGatewayRoute(GatewayRoute):
    """A gateway route whose requests go into the request log."""

    log_route = "chat.completions"
    rate_limited = True
