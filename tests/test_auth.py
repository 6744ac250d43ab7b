"""Bearer API keys: every non-public route is closed without a key; keys from API_KEYS and
from `training-control keys create`, stored hashed, revocable; no key configured → no start."""

from __future__ import annotations

import hmac
import re
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from app.config import ConfigError, Settings
from app.db import create_engine, create_sessionmaker
from app.keys import service as keys_service
from app.main import create_app
from app.state import app_state
from tests.conftest import TEST_API_KEY, asgi_client, make_settings

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/openapi.json"),
}
# Swagger UI's own script, CSS and icon (app/docs.py); the folder itself lists nothing (404).
# The dashboard's assets likewise (app/dashboard/static).
PUBLIC_MOUNTS = {("GET", "/docs/assets"), ("GET", "/dashboard/static")}
# The dashboard (app/dashboard) authenticates with its own session cookie, not a Bearer key:
# its login, its logout (it only ends the cookie's own session) and `/` (a redirect to it) are
# public; every other page and action answers a request without a session with a redirect to
# the login, and declares the scope its key needs (tests/test_scopes.py).
DASHBOARD_PUBLIC = {
    ("GET", "/"),
    ("GET", "/dashboard/login"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
}


def _is_dashboard(template: str) -> bool:
    return template == "/dashboard" or template.startswith("/dashboard/")


def _concrete(path: str) -> str:
    # A plausible value for every path parameter, whatever its converter.
    return re.sub(r"\{[^}]+\}", "x1", path)


def _requests(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, template, concrete path) for every route the app serves, features included.

    FastAPI keeps included routers nested; iter_route_contexts flattens them as OpenAPI does."""
    found = []
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if isinstance(context.original_route, Mount):
            found.append(("GET", path, _concrete(path) + "/"))
            continue
        for method in sorted(context.methods or {"GET"}):
            found.append((method, path, _concrete(path)))
    return found


async def _call(client: httpx.AsyncClient, method: str, path: str) -> httpx.Response:
    kwargs: dict[str, Any] = {"json": {}} if method in {"POST", "PUT", "PATCH"} else {}
    return await client.request(method, path, **kwargs)


def _is_public(method: str, template: str) -> bool:
    return (method if method != "HEAD" else "GET", template) in PUBLIC | PUBLIC_MOUNTS | DASHBOARD_PUBLIC


def _redirects_to_login(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/dashboard/login")


async def unprotected_routes(app: FastAPI) -> list[str]:
    """Every route that answers a request without a key other than 401 in the envelope
    (or a public route that wrongly demands one)."""
    wrong = []
    async with asgi_client(app, api_key=None) as anon:
        for method, template, path in _requests(app):
            response = await _call(anon, method, path)
            if _is_public(method, template):
                if response.status_code == 401:
                    wrong.append(f"{method} {template}: public route demanded a key")
                continue
            if _is_dashboard(template):
                if not _redirects_to_login(response):
                    wrong.append(f"{method} {template}: {response.status_code} without a dashboard session")
                continue
            body = response.json() if response.content else {}
            if response.status_code != 401 or body.get("error", {}).get("code") != "missing_api_key":
                wrong.append(f"{method} {template}: {response.status_code} {response.text[:120]}")
            elif response.headers.get("www-authenticate") != "Bearer":
                wrong.append(f"{method} {template}: no WWW-Authenticate: Bearer")
    return wrong


async def test_every_non_public_route_answers_401_without_a_key(app: FastAPI) -> None:
    assert len(_requests(app)) > 2 * len(PUBLIC)  # the product routers are mounted
    assert await unprotected_routes(app) == []


async def test_the_route_check_catches_a_router_mounted_without_auth(app: FastAPI) -> None:
    forgot = APIRouter()

    @forgot.post("/v1/forgot/{item_id}")
    async def forgot_auth(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    app.include_router(forgot)
    assert await unprotected_routes(app) == ['POST /v1/forgot/{item_id}: 200 {"id":"x1"}']


async def test_every_non_public_route_rejects_a_wrong_key(app: FastAPI) -> None:
    wrong = []
    async with asgi_client(app, api_key="not-a-real-key") as client:
        for method, template, path in _requests(app):
            if _is_public(method, template):
                continue
            response = await _call(client, method, path)
            if _is_dashboard(template):
                if not _redirects_to_login(response):
                    wrong.append(f"{method} {template}: {response.status_code}")
                continue
            if response.status_code != 401 or response.json()["error"]["code"] != "invalid_api_key":
                wrong.append(f"{method} {template}: {response.status_code}")
    assert wrong == []


async def test_public_routes_answer_without_a_key(anon_client: httpx.AsyncClient) -> None:
    for _method, path in sorted(PUBLIC):
        response = await anon_client.get(path)
        assert response.status_code == 200, path


@pytest.mark.parametrize(
    "header", ["Basic dGVzdDp0ZXN0", "Bearer", "Bearer ", TEST_API_KEY, f"Token {TEST_API_KEY}"]
)
async def test_malformed_authorization_header_is_401(app: FastAPI, header: str) -> None:
    async with asgi_client(app, api_key=None) as client:
        response = await client.get("/metrics", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_bootstrap_key_from_api_keys_is_accepted(app: FastAPI) -> None:
    async with asgi_client(app, api_key=None) as client:
        response = await client.get("/metrics", headers={"Authorization": f"bearer {TEST_API_KEY}"})
    assert response.status_code == 200


async def test_keys_are_compared_in_constant_time(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.keys.service.hmac.compare_digest", spy)
    async with asgi_client(app) as client:
        assert (await client.get("/metrics")).status_code == 200
    assert calls, "the bootstrap key was compared without hmac.compare_digest"


async def test_stored_key_checks_are_cached_for_the_configured_ttl(settings: Settings) -> None:
    app = create_app(make_settings(settings.database_url, auth={"key_cache_ttl_s": 0}))
    async with LifespanManager(app, startup_timeout=60):
        assert app_state(app).authenticator._ttl_s == 0
    default = create_app(settings)
    async with LifespanManager(default, startup_timeout=60):
        assert app_state(default).authenticator._ttl_s == 5.0


class TestRefuseToStartWithoutKey:
    async def test_production_without_any_key_does_not_start(self, settings: Settings) -> None:
        app = create_app(make_settings(settings.database_url, api_keys="", environment="production"))
        with pytest.raises(ConfigError, match="no API key configured"):
            async with LifespanManager(app, startup_timeout=60):
                pass

    @pytest.mark.parametrize("environment", ["production", "test"])
    async def test_a_revoked_key_does_not_count(self, settings: Settings, environment: str) -> None:
        engine = create_engine(settings, pool=False)
        try:
            async with create_sessionmaker(engine)() as session:
                await keys_service.create_key(session, "old")
                await keys_service.revoke_key(session, "old")
                await session.commit()
        finally:
            await engine.dispose()
        app = create_app(make_settings(settings.database_url, api_keys="", environment=environment))
        with pytest.raises(ConfigError):
            async with LifespanManager(app, startup_timeout=60):
                pass

    async def test_development_starts_without_a_key(self, settings: Settings) -> None:
        app = create_app(make_settings(settings.database_url, api_keys="", environment="development"))
        async with LifespanManager(app, startup_timeout=60), asgi_client(app, api_key=None) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
