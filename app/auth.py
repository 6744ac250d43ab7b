"""Bearer authentication and scopes for every route except the public ones named in the contract.

A route declares the scope a key needs with one dependency, on the route or on its router:
`dependencies=[require_scope(Scope.training)]`. Ordinary routes solve it as a FastAPI
dependency (it authenticates, then checks the scope); the gateway's route class
(app/gateway/route.py) takes the same declaration out of its dependencies and checks it in its
own handler, so the proxy's hot path still solves no dependency. `declared_scopes(route)`
reads the declaration back for the scope matrix test (tests/test_scopes.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Forbidden, Unauthorized
from app.keys.scopes import Scope
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


def check_scope(principal: Principal, scope: Scope) -> None:
    """403 `insufficient_scope` naming the scope, in the words OpenAI uses for restricted keys."""
    if scope not in principal.scopes:
        raise Forbidden(
            f"You have insufficient permissions for this operation. Missing scope: {scope.value}. "
            f"Use a key with the {scope.value!r} scope (training-control keys create NAME --scope "
            f"{scope.value})."
        )


async def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    principal = await authenticate(app_state(request.app).authenticator, request.headers.get("authorization"))
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(require_api_key)]


class AnyKey(StrEnum):
    """The decision "any valid key, whatever its scopes" (e.g. a key reading its own usage)."""

    any = "any"


# What a route declares: the one scope it needs, or explicitly any valid key.
ScopeDecision = Scope | AnyKey
ANY_KEY = AnyKey.any


class ScopeRequirement:
    """The dependency `require_scope` declares: authenticate, then check the scope."""

    def __init__(self, scope: ScopeDecision) -> None:
        self.scope = scope

    async def __call__(self, principal: PrincipalDep) -> Principal:
        if isinstance(self.scope, Scope):
            check_scope(principal, self.scope)
        return principal

    def __repr__(self) -> str:
        return f"require_scope({self.scope.value})"


def require_scope(scope: ScopeDecision) -> params.Depends:
    """Declare the scope of a route or a router: `dependencies=[require_scope(Scope.admin)]`,
    or `require_scope(ANY_KEY)` for a route every valid key may call (a decision, not an omission)."""
    declared: params.Depends = Depends(ScopeRequirement(scope))
    return declared


def scope_requirements(dependencies: Sequence[params.Depends]) -> list[ScopeDecision]:
    return [d.dependency.scope for d in dependencies if isinstance(d.dependency, ScopeRequirement)]


def declared_scopes(route: Any) -> list[ScopeDecision]:
    """Every scope a served route declares: its (effective, router-level included) dependencies'
    and, for a route class that checks it itself, its `required_scope` attribute."""
    found = scope_requirements(getattr(route, "dependencies", None) or [])
    original = getattr(route, "original_route", route)
    own = getattr(original, "required_scope", None)
    if isinstance(own, Scope | AnyKey):
        found.append(own)
    return found
