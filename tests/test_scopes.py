"""The scope matrix: every route of the app is public (the contract's list) or declares exactly
one scope, and a key answers 403 `insufficient_scope` on exactly the routes whose scope it lacks.

Generic on purpose: routes are found by walking `app.routes` (the gateway's, the game's, the
docs'), path parameters are filled with a placeholder, so routes other engineers add are
covered the moment they are mounted, and one without a scope decision fails here.
"""

from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from app.auth import ANY_KEY, ScopeDecision, declared_scopes, require_scope
from app.config import Settings
from app.dashboard.router import COOKIE
from app.dashboard.service import csrf_token
from app.gateway.route import GatewayRoute
from app.keys import service as keys_service
from app.keys.scopes import ALL_SCOPES, Scope
from app.keys.service import Authenticator, KeyOptions
from app.state import app_state
from tests.conftest import asgi_client, make_settings
from tests.fixtures.gateway import running_app
from tests.test_auth import _call, _concrete, _is_dashboard, _is_public, _requests

HOW_TO_DECIDE = (
    "declares no scope: add `dependencies=[require_scope(Scope.<inference|training|admin>)]` to the "
    "route or its router (app/auth.py, CONTRIBUTING.md 'a new route must declare a scope'), or, "
    "if it must be public, add it to the contract's public list and to PUBLIC in tests/test_auth.py"
)


def scope_decisions(app: FastAPI) -> tuple[dict[tuple[str, str], ScopeDecision], list[str]]:
    """(method, template) → the route's one scope (or ANY_KEY), and the routes without exactly one."""
    decided: dict[tuple[str, str], ScopeDecision] = {}
    problems: list[str] = []
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if isinstance(context.original_route, Mount):
            if not _is_public("GET", path):
                problems.append(
                    f"mount {path}: a mounted app cannot declare a scope; serve it from routes that "
                    "declare one, or, if it is public, add it to PUBLIC_MOUNTS in tests/test_auth.py"
                )
            continue
        for method in sorted(context.methods or {"GET"}):
            if _is_public(method, path):
                continue
            scopes = declared_scopes(context)
            if not scopes:
                problems.append(f"{method} {path} {HOW_TO_DECIDE}")
            elif len(scopes) > 1:
                problems.append(f"{method} {path} declares {len(scopes)} scopes; declare exactly one")
            else:
                decided[(method, path)] = scopes[0]
    return decided, problems


def test_every_route_is_public_or_declares_one_scope(app: FastAPI) -> None:
    decided, problems = scope_decisions(app)
    assert problems == []
    assert set(decided.values()) == {*Scope, ANY_KEY}, "each scope guards some route"


def test_a_route_without_a_scope_decision_fails_with_what_to_do(app: FastAPI) -> None:
    forgot = APIRouter()

    @forgot.get("/v1/forgot/{item_id}")
    async def forgot_scope(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    gateway_forgot = APIRouter(route_class=GatewayRoute)

    @gateway_forgot.get("/v1/gateway-forgot")
    async def gateway_forgot_scope() -> dict[str, str]:
        return {}

    app.include_router(forgot)
    app.include_router(gateway_forgot)
    _, problems = scope_decisions(app)
    assert problems == [
        f"GET /v1/forgot/{{item_id}} {HOW_TO_DECIDE}",
        f"GET /v1/gateway-forgot {HOW_TO_DECIDE}",
    ]


def test_router_level_and_gateway_route_declarations_are_read(app: FastAPI) -> None:
    declared = APIRouter(dependencies=[require_scope(Scope.admin)])

    @declared.get("/v1/declared")
    async def declared_route() -> dict[str, str]:
        return {}

    gateway = APIRouter(route_class=GatewayRoute, dependencies=[require_scope(Scope.training)])

    @gateway.get("/v1/gateway-declared")
    async def gateway_declared() -> dict[str, str]:
        return {}

    app.include_router(declared)
    app.include_router(gateway)
    decided, problems = scope_decisions(app)
    assert problems == []
    assert decided[("GET", "/v1/declared")] is Scope.admin
    assert decided[("GET", "/v1/gateway-declared")] is Scope.training


async def _keys(app: FastAPI) -> dict[frozenset[Scope], str]:
    """A stored key holding only each scope, and one holding all but each scope."""
    sets = {frozenset({s}) for s in Scope} | {ALL_SCOPES - {s} for s in Scope}
    keys = {}
    async with app_state(app).sessionmaker() as session:
        for scopes in sets:
            name = "+".join(sorted(scopes))
            keys[scopes] = (await keys_service.create_key(session, name, KeyOptions(scopes=scopes))).key
        await session.commit()
    return keys


async def test_each_route_answers_403_insufficient_scope_exactly_to_keys_without_its_scope(
    app: FastAPI,
) -> None:
    decided, problems = scope_decisions(app)
    assert problems == []
    keys = await _keys(app)
    wrong = []
    for scopes, key in keys.items():
        async with asgi_client(app, api_key=key) as client, asgi_client(app, api_key=None) as browser:
            # The dashboard's pages take the key from a login session, not a Bearer header.
            login = await browser.post("/dashboard/login", data={"api_key": key})
            assert login.status_code == 303, login.text
            csrf = csrf_token(browser.cookies[COOKIE])
            for method, template, path in _requests(app):
                scope = decided.get((method if method != "HEAD" else "GET", template))
                if scope is None:
                    continue  # public
                if _is_dashboard(template):
                    form = {"csrf_token": csrf} if method == "POST" else None
                    response = await browser.request(method, path, data=form)
                    page_code = re.search(r'data-code="([^"]*)"', response.text)
                    code = page_code.group(1) if page_code else None
                    message = response.text
                else:
                    response = await _call(client, method, path)
                    is_json = response.headers.get("content-type", "").startswith("application/json")
                    body = response.json() if is_json and response.content else {}
                    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                    message = body["error"]["message"] if code else ""
                label = f"{method} {template} with {'+'.join(sorted(scopes))}"
                if scope is ANY_KEY or scope in scopes:
                    if response.status_code in (401, 403) or response.headers.get("location", "").startswith(
                        "/dashboard/login"
                    ):
                        wrong.append(f"{label}: {response.status_code} {code} but the key has {scope}")
                elif response.status_code != 403 or code != "insufficient_scope":
                    wrong.append(f"{label}: {response.status_code} {code}, expected 403 insufficient_scope")
                elif f"Missing scope: {scope.value}" not in message:
                    wrong.append(f"{label}: the message does not name {scope}: {message[:200]}")
    assert wrong == []


async def test_api_keys_are_full_access_unless_restricted_by_setting(settings: Settings) -> None:
    async with running_app(
        make_settings(settings.database_url, auth={"api_keys_scopes": "inference"})
    ) as app:
        async with asgi_client(app) as client:
            metrics = await client.get("/metrics")
            models = await client.get("/v1/models")
    assert metrics.status_code == 403
    assert metrics.json()["error"]["code"] == "insufficient_scope"
    assert models.status_code == 200


def test_an_unknown_scope_in_the_setting_is_refused() -> None:
    with pytest.raises(
        Exception, match="AUTH__API_KEYS_SCOPES__1: Input should be 'admin', 'inference' or 'training'"
    ):
        make_settings("sqlite+aiosqlite:///unused.db", auth={"api_keys_scopes": "inference,root"})


async def test_an_expired_key_is_refused_even_while_its_check_is_cached(app: FastAPI) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    async with app_state(app).sessionmaker() as session:
        created = await keys_service.create_key(session, "soon", KeyOptions(expires_at=expires))
        await session.commit()
    now = [expires.timestamp() - 10]
    authenticator = Authenticator([], app_state(app).sessionmaker, ttl_s=3600, clock=lambda: now[0])
    assert await authenticator.verify(created.key) is not None
    now[0] = expires.timestamp() + 1  # the cached entry (TTL one hour) is still fresh
    assert await authenticator.verify(created.key) is None


async def test_an_expired_or_revoked_stored_key_is_401(app: FastAPI) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    async with app_state(app).sessionmaker() as session:
        expired = await keys_service.create_key(session, "expired", KeyOptions(expires_at=past))
        revoked = await keys_service.create_key(session, "revoked")
        await keys_service.revoke_key(session, "revoked")
        await session.commit()
    for key in (expired.key, revoked.key):
        async with asgi_client(app, api_key=key) as client:
            response = await client.get("/v1/models")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_placeholder_fills_every_path_parameter() -> None:
    assert _concrete("/v1/models/{name:path}/aliases") == "/v1/models/x1/aliases"


async def test_scope_matrix_covers_routes_mounted_after_start(app: FastAPI) -> None:
    """A route added the way other packages add theirs is in the matrix at once."""
    late = APIRouter(dependencies=[require_scope(Scope.training)])

    @late.post("/v1/late/{thing_id}/run")
    async def late_route(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    app.include_router(late)
    decided, _ = scope_decisions(app)
    assert decided[("POST", "/v1/late/{thing_id}/run")] is Scope.training
    keys = await _keys(app)
    async with asgi_client(app, api_key=keys[frozenset({Scope.inference})]) as client:
        response: httpx.Response = await client.post("/v1/late/x1/run")
    assert response.status_code == 403


def test_a_route_with_two_scope_declarations_is_refused(app: FastAPI) -> None:
    twice = APIRouter(dependencies=[require_scope(Scope.training)])

    @twice.delete("/v1/twice/{item_id}", dependencies=[require_scope(Scope.admin)])
    async def twice_declared(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    app.include_router(twice)
    _, problems = scope_decisions(app)
    assert problems == ["DELETE /v1/twice/{item_id} declares 2 scopes; declare exactly one"]

    gateway = APIRouter(route_class=GatewayRoute, dependencies=[require_scope(Scope.training)])
    with pytest.raises(ValueError, match="declares 2 scopes; declare exactly one"):
        gateway.add_api_route("/v1/g", twice_declared, dependencies=[require_scope(Scope.admin)])
