"""Bearer authentication for every route except the public ones named in the contract."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized
from app.keys.service import Authenticator, Principal
from app.state import app_state

# auto_error=False: a missing header must answer 401 in our envelope, not FastAPI's 403.
bearer_scheme = HTTPBearer(
    auto_error=False, description="An API key from API_KEYS or `training-control keys create`."
)

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}

# `openapi_extra` of routes that authenticate in their route class instead of a dependency
# (the gateway's): /docs still shows the lock.
BEARER_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(authenticator: Authenticator, header: str | None) -> Principal:
    token = parse_bearer(header)
    if token is None:
        raise Unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>'.",
            code="missing_api_key",
            headers=_UNAUTHORIZED_HEADERS,
        )
    principal = await authenticator.verify(token)
    if principal is None:
        raise Unauthorized("Invalid API key.", code="invalid_api_key", headers=_UNAUTHORIZED_HEADERS)
    return principal


async def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    principal = await authenticate(app_state(request.app).authenticator, request.headers.get("authorization"))
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(require_api_key)]
