"""One error hierarchy, rendered everywhere as OpenAI's envelope:
`{"error": {"message", "type", "param", "code"}}`.

- Raise an `AppError` subclass (`BadRequest`, `NotFound`, …) with a `code` and, when a field is
  at fault, `param`.
- `render_error(error)` is the one function that turns an error into the envelope's bytes:
  the app's exception handlers, the gateway's route class, the middleware (413 before the app
  runs, last-resort 500) and errors sent in-band on an SSE stream all go through it.
- Errors stored on rows (a failed dataset, job, step) are `StoredError`s, made by
  `stored_error(...)` or `AppError.stored()`, and answered as `ErrorObject`.
"""

from __future__ import annotations

import email.message
import http
import logging
from typing import Any, TypedDict

import orjson
from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.logs import current_request_id

logger = logging.getLogger(__name__)


class StoredError(TypedDict):
    """An error kept on a row (JSON column): what went wrong, for the API to show later."""

    code: str
    message: str
    param: str | None


def stored_error(code: str, message: str, param: str | None = None) -> StoredError:
    return {"code": code, "message": message, "param": param}


class ErrorObject(BaseModel):
    """A stored error in a response (`dataset.error`, `job.error`)."""

    code: str
    message: str
    param: str | None = None


class AppError(Exception):
    """An error a client gets as the envelope. Subclasses fix the status and type; an instance
    may set both when the status is decided at run time (e.g. relaying an upstream's)."""

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
        status_code: int | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers
        if status_code is not None:
            self.status_code = status_code
        if type_ is not None:
            self.type = type_

    def stored(self, default_code: str = "error") -> StoredError:
        """This error as kept on a row."""
        return stored_error(self.code or default_code, self.message, self.param)


class BadRequest(AppError):
    status_code, type, default_code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(AppError):
    status_code, type, default_code = 401, "authentication_error", "invalid_api_key"


class Forbidden(AppError):
    """The key is valid but may not do this. OpenAI answers a restricted key's missing scope
    with "You have insufficient permissions for this operation. Missing scopes: …" and
    `invalid_request_error` (its SDK raises PermissionDeniedError for 403)."""

    status_code, type, default_code = 403, "invalid_request_error", "insufficient_scope"


class RateLimited(AppError):
    """Over a key's limit. OpenAI's own 429s carry `type` "requests" or "tokens" (the limit that
    was hit) and `code` rate_limit_exceeded; the SDK raises RateLimitError."""

    status_code, type, default_code = 429, "requests", "rate_limit_exceeded"


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


class InvalidJSON(AppError):
    status_code, type, default_code = 400, "invalid_request_error", "invalid_json"


class InternalError(AppError):
    """An unexpected failure; the message must not carry internals."""

    status_code, type, default_code = 500, "server_error", "internal_error"


class ServiceUnavailable(AppError):
    status_code, type, default_code = 503, "server_error", "service_unavailable"


class RequestBodyTooLarge(StarletteHTTPException):
    """Raised by the body-limit middleware while the app reads the body. A Starlette
    HTTPException so FastAPI's body parsing passes it through instead of turning it into
    "There was an error parsing the body" (400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


def render_error(error: AppError) -> bytes:
    """The envelope of `error` as JSON bytes: the one rendering of every error."""
    return orjson.dumps(
        {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    )


def error_response(error: AppError) -> Response:
    """`error` as an HTTP response: its status, its headers, the envelope."""
    return Response(
        render_error(error),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )


# OpenAPI `responses=` for routes: every documented error uses the envelope.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid request",
        401: "Missing or invalid API key",
        403: "The key lacks the scope the route needs (`insufficient_scope`)",
        404: "Not found",
        405: "Method not allowed",
        409: "Conflict with the current state",
        413: "Request body too large",
        415: "Unsupported content type",
        422: "Validation error",
        429: "Rate limited",
        500: "Internal error (the message carries the request id, never internals)",
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
    return error_response(exc)


_JSON_TYPES = ("application/json",)
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _media_type(request: Request) -> str | None:
    header = request.headers.get("content-type")
    if not header:
        return None
    message = email.message.Message()
    message["content-type"] = header
    return message.get_content_type()


def _is_json(media_type: str | None) -> bool:
    return media_type is not None and (media_type in _JSON_TYPES or media_type.endswith("+json"))


def _body_type_error(request: Request, errors: list[dict[str, Any]]) -> AppError | None:
    """A 415 (or a clear 422) when the body could not be read as what the route expects.

    FastAPI hands a JSON route a non-JSON body as raw bytes, and its validation error says
    "Input should be a valid dictionary": true, but it does not tell the client what to fix.
    """
    body_field = getattr(request.scope.get("route"), "body_field", None)
    if body_field is None or not any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors):
        return None
    media_type = _media_type(request)
    if isinstance(body_field.field_info, params.Form):
        if media_type not in _FORM_TYPES:
            return UnsupportedMediaType(
                f"Content-Type must be multipart/form-data, got {media_type or 'none'}",
                param="content-type",
            )
        return None
    if not _is_json(media_type) and (media_type is not None or _has_body(request)):
        return UnsupportedMediaType(
            f"Content-Type must be application/json, got {media_type or 'none'}", param="content-type"
        )
    whole_body = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    if not whole_body:
        return None
    if whole_body[0].get("type") == "missing":
        return Unprocessable("the request body is required: send a JSON object", code="missing_body")
    return Unprocessable(
        f"the request body must be a JSON object: {whole_body[0].get('msg', 'wrong type')}",
        code="invalid_body",
    )


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


async def _handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [dict(e) for e in exc.errors()]
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", first.get("msg", "malformed"))
        return error_response(InvalidJSON(f"request body is not valid JSON: {reason}"))
    body_error = _body_type_error(request, errors)
    if body_error is not None:
        return error_response(body_error)
    param = _loc_to_param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid request"))
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(Unprocessable(message, param=param))


def _is_default_detail(exc: StarletteHTTPException) -> bool:
    return exc.detail == http.HTTPStatus(exc.status_code).phrase


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    # Routing errors and any HTTPException raised by a library: same envelope as AppError.
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    custom = None if _is_default_detail(exc) else str(exc.detail)
    error: AppError
    if status == 404:
        error = NotFound(custom or f"Unknown route: {request.method} {request.url.path}")
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow")
        error = MethodNotAllowed(
            custom
            or f"Method {request.method} is not allowed on {request.url.path}"
            + (f"; allowed: {allowed}" if allowed else "")
        )
    elif status == 413:
        error = PayloadTooLarge(str(exc.detail))
    elif status == 401:
        error = Unauthorized(custom or "Missing or invalid API key.")
    else:
        type_ = "invalid_request_error" if status < 500 else "server_error"
        error = AppError(str(exc.detail), status_code=status, type_=type_)
    error.headers = headers or None
    return error_response(error)


async def _handle_integrity_error(_request: Request, exc: Exception) -> Response:
    # The message names constraints and values, not secrets; the client gets a generic line.
    logger.warning("db.integrity_error error=%s", str(exc).splitlines()[0])
    return error_response(Conflict("the request conflicts with stored data"))


# How long a client should wait before retrying while the database is away (RFC 9110 §10.2.3).
DATABASE_RETRY_AFTER_S = 2


def database_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the database is unavailable; retry later",
        code="database_unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _handle_operational_error(_request: Request, exc: Exception) -> Response:
    # One line, no traceback: an outage makes every request fail the same way.
    logger.error("db.unavailable error=%s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return error_response(database_unavailable())


# SQLSTATEs of text Postgres cannot store: a NUL byte (22021 character_not_in_repertoire),
# an untranslatable character (22P05). Any other class 22 "data exception" (22003 numeric value
# out of range, 22001 string too long, ...) is a value from the request the column cannot hold.
# Input, not a server fault (PostgreSQL docs, Appendix A).
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})
_DATA_EXCEPTION_CLASS = "22"


async def _handle_dbapi_error(request: Request, exc: Exception) -> Response:
    # A dropped connection (Postgres restarting) is an outage; text the database cannot store
    # is the client's input; any other DBAPI error is a bug.
    assert isinstance(exc, DBAPIError)
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    # 08 connection exception, 57P operator intervention ("the database system is starting
    # up"): the database is away (the same rule as app/db.is_unavailable)
    if exc.connection_invalidated or sqlstate.startswith(("08", "57P")):
        return await _handle_operational_error(request, exc)
    if sqlstate in _UNSTORABLE_TEXT_SQLSTATES:
        return error_response(
            BadRequest(
                "the request contains text the database cannot store (e.g. a NUL character \\u0000)",
                code="invalid_characters",
            )
        )
    if sqlstate.startswith(_DATA_EXCEPTION_CLASS):
        # a route whose schema should have bounded the value (logged so it gets that bound)
        logger.warning("request.value_not_storable sqlstate=%s path=%s", sqlstate, request.url.path)
        return error_response(
            BadRequest(
                f"a value in the request is out of range or cannot be stored (SQLSTATE {sqlstate})",
                code="invalid_value",
            )
        )
    logger.error("request.db_error error=%s", type(exc).__name__, exc_info=exc)
    return error_response(internal_error())


def internal_error() -> InternalError:
    """What a client sees of an unexpected exception: the request id, no internals."""
    return InternalError(
        f"The server had an error processing the request (request id {current_request_id()})."
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _handle_app_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(IntegrityError, _handle_integrity_error)
    # Database unreachable, connection dropped, or no pooled connection in time: 503, retry.
    app.add_exception_handler(OperationalError, _handle_operational_error)
    app.add_exception_handler(InterfaceError, _handle_operational_error)
    app.add_exception_handler(PoolTimeoutError, _handle_operational_error)
    app.add_exception_handler(DBAPIError, _handle_dbapi_error)
    # Unexpected exceptions are caught by RequestContextMiddleware (app/middleware.py), which
    # logs them once with the request id; Starlette's own catch-all would re-raise them.
