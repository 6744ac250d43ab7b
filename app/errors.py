"""One error hierarchy, rendered everywhere as OpenAI's envelope:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from app.logs import current_request_id

logger = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 500
    type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers


class BadRequest(AppError):
    status_code, type, default_code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(AppError):
    status_code, type, default_code = 401, "authentication_error", "invalid_api_key"


class Forbidden(AppError):
    status_code, type, default_code = 403, "permission_error", "forbidden"


class NotFound(AppError):
    status_code, type, default_code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(AppError):
    status_code, type, default_code = 405, "invalid_request_error", "method_not_allowed"


class Conflict(AppError):
    status_code, type, default_code = 409, "conflict_error", "conflict"


class PayloadTooLarge(AppError):
    status_code, type, default_code = 413, "invalid_request_error", "request_too_large"


class UnsupportedMediaType(AppError):
    status_code, type, default_code = 415, "invalid_request_error", "unsupported_media_type"


class Unprocessable(AppError):
    status_code, type, default_code = 422, "invalid_request_error", "invalid_value"


class RateLimited(AppError):
    status_code, type, default_code = 429, "rate_limit_error", "rate_limited"


class UpstreamError(AppError):
    status_code, type, default_code = 502, "upstream_error", "upstream_error"


class ServiceUnavailable(AppError):
    status_code, type, default_code = 503, "server_error", "service_unavailable"


class UpstreamTimeout(AppError):
    status_code, type, default_code = 504, "upstream_error", "upstream_timeout"


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(message, type_, param=param, code=code), status_code=status, headers=headers
    )


def app_error_response(exc: AppError) -> JSONResponse:
    return error_response(
        exc.status_code, exc.message, exc.type, param=exc.param, code=exc.code, headers=exc.headers
    )


# OpenAPI `responses=` for routes: every documented error uses the envelope.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid request",
        401: "Missing or invalid API key",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Request body too large",
        415: "Unsupported content type",
        422: "Validation error",
        429: "Rate limited",
        502: "Upstream error",
        503: "Service unavailable",
        504: "Upstream timeout",
    }
    return {s: {"model": ErrorResponse, "description": descriptions.get(s, "Error")} for s in statuses}


def _loc_to_param(loc: Any) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _handle_app_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    if exc.status_code >= 500:
        logger.warning("request.failed status=%s code=%s message=%s", exc.status_code, exc.code, exc.message)
    return app_error_response(exc)


async def _handle_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    param = _loc_to_param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', msg)}"
        return error_response(400, message, "invalid_request_error", code="invalid_json")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, message, "invalid_request_error", param=param, code="invalid_value")


async def _handle_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        return error_response(404, "Unknown route", "invalid_request_error", code="not_found")
    if status == 405:
        return error_response(
            405,
            "Method not allowed for this route",
            "invalid_request_error",
            code="method_not_allowed",
            headers=dict(exc.headers or {}),
        )
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return error_response(status, str(exc.detail), type_, code=None, headers=dict(exc.headers or {}))


async def _handle_integrity_error(_request: Request, exc: Exception) -> Response:
    logger.warning("db.integrity_error error=%s", exc)
    return error_response(409, "the request conflicts with stored data", "conflict_error", code="conflict")


async def _handle_operational_error(_request: Request, exc: Exception) -> Response:
    logger.error("db.unavailable error=%s", exc)
    return error_response(
        503, "the database is unavailable; retry later", "server_error", code="database_unavailable"
    )


def internal_error_body() -> dict[str, Any]:
    """What a client sees of an unexpected exception: the request id, no internals."""
    return error_body(
        f"The server had an error processing the request (request id {current_request_id()}).",
        "server_error",
        code="internal_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _handle_app_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(IntegrityError, _handle_integrity_error)
    app.add_exception_handler(OperationalError, _handle_operational_error)
    # Unexpected exceptions are caught by RequestContextMiddleware (app/middleware.py), which
    # logs them once with the request id; Starlette's own catch-all would re-raise them.
