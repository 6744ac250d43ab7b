"""One pure-ASGI middleware for every request: request id, body-size limit, metrics,
and the last-resort handler for unexpected exceptions.

Pure ASGI rather than BaseHTTPMiddleware: it costs microseconds on the proxy's hot path
and never buffers a streamed response.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import routing as fastapi_routing
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import ConfigError
from app.errors import AppError, PayloadTooLarge, RequestBodyTooLarge, internal_error, render_error
from app.health.metrics import Metrics
from app.logs import reset_request_id, set_request_id

logger = logging.getLogger("app.http")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        max_upload_bytes: int,
        upload_prefixes: tuple[str, ...] = ("/v1/files",),
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.upload_prefixes = upload_prefixes
        self.access_log = access_log

    def _limit_for(self, path: str) -> int:
        return self.max_upload_bytes if path.startswith(self.upload_prefixes) else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        token = set_request_id(request_id)
        start = time.perf_counter()
        limit = self._limit_for(scope["path"])
        status_holder = [500]
        started = [False]
        header_value = request_id.encode()

        declared = _content_length(scope)
        try:
            if declared is not None and declared > limit:
                await _send_error(send, _too_large(limit), header_value)
                status_holder[0] = 413
                return

            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        # Rendered by the app's HTTPException handler (413 envelope).
                        raise RequestBodyTooLarge(limit)
                return message

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    started[0] = True
                    status_holder[0] = message["status"]
                    headers = list(message.get("headers", []))
                    headers.append((b"x-request-id", header_value))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except RequestBodyTooLarge:
                # Raised outside the app's exception handlers (e.g. by another middleware).
                if not started[0]:
                    await _send_error(send, _too_large(limit), header_value)
                    status_holder[0] = 413
            except Exception:
                logger.exception(
                    "request.unhandled_exception method=%s path=%s", scope["method"], scope["path"]
                )
                if not started[0]:
                    await _send_error(send, internal_error(), header_value)
                status_holder[0] = 500
        finally:
            elapsed = time.perf_counter() - start
            template = route_template(scope)
            self.metrics.observe_request(scope["method"], template, status_holder[0], elapsed)
            if self.access_log:
                logger.info(
                    "http.request method=%s path=%s status=%s duration_ms=%.1f",
                    scope["method"],
                    scope["path"],
                    status_holder[0],
                    elapsed * 1000,
                )
            reset_request_id(token)


# FastAPI keeps the matched route's effective context (its full path, include prefixes and
# all) under these scope keys; private names, hence getattr with a fallback to scope["route"].
_FASTAPI_SCOPE_KEY = getattr(fastapi_routing, "_FASTAPI_SCOPE_KEY", "fastapi")
_EFFECTIVE_ROUTE_KEY = getattr(fastapi_routing, "_FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY", "")


def route_template(scope: Scope) -> str:
    """The matched route's template (`/v1/files/{file_id}`), never the raw path: a metrics
    label must not grow with every id. "unmatched" when no route matched."""
    fastapi_scope = scope.get(_FASTAPI_SCOPE_KEY)
    context = fastapi_scope.get(_EFFECTIVE_ROUTE_KEY) if isinstance(fastapi_scope, dict) else None
    template = getattr(context, "path_format", None) or getattr(scope.get("route"), "path", None)
    return str(template) if template else "unmatched"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_REQUEST_ID.match(text) else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(RequestBodyTooLarge(limit).detail)


async def _send_error(send: Send, error: AppError, request_id: bytes) -> None:
    """The error before (or instead of) the app's answer; the app's handlers never saw it."""
    payload = render_error(error)
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class StartupErrorMiddleware:
    """Shortens a configuration error raised in the lifespan to one readable line.

    Starlette reports a failed startup to the server with the full traceback as the message,
    which uvicorn prints; for a ConfigError (e.g. no API key) the operator needs one line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            # Held until we know which exception caused it (raised right after this send).
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
                return
            await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except ConfigError as exc:
            for message in held:
                await send({**message, "message": f"training-control: {exc}"})
            raise
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)
