"""Dashboard login sessions and CSRF: what the cookie holds, what the database keeps, and what
ends a session (logout, expiry, a revoked key), through the app with httpx."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.dashboard import service
from app.dashboard.models import DashboardSession
from app.dashboard.router import COOKIE, _safe_next, _same_origin
from app.keys.service import create_key, hash_key, revoke_key
from app.main import create_app
from app.state import app_state
from tests.conftest import TEST_API_KEY, make_settings

BASE = "http://testserver"


def browser(app: FastAPI) -> httpx.AsyncClient:
    """A client with no Authorization header: only the dashboard's cookie authenticates it."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, follow_redirects=False)


async def log_in(client: httpx.AsyncClient, key: str = TEST_API_KEY) -> httpx.Response:
    return await client.post("/dashboard/login", data={"api_key": key, "next": "/dashboard/jobs"})


def csrf_of(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


# -- pure logic (milliseconds) ----------------------------------------------------------------


def test_csrf_token_is_bound_to_the_session_token() -> None:
    token = service.csrf_token("session-a")
    assert service.csrf_matches("session-a", token)
    assert not service.csrf_matches("session-b", token)
    assert not service.csrf_matches("session-a", None)
    assert not service.csrf_matches("session-a", "")
    assert "session-a" not in token


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dashboard/jobs/ftjob-1", "/dashboard/jobs/ftjob-1"),
        ("https://evil.example/dashboard", "/dashboard"),
        ("//evil.example/dashboard", "/dashboard"),
        ("/v1/models", "/dashboard"),
        ("/dashboard.evil.example", "/dashboard"),
        (None, "/dashboard"),
    ],
)
def test_login_redirects_only_within_the_dashboard(target: str | None, expected: str) -> None:
    assert _safe_next(target) == expected


# -- through the app --------------------------------------------------------------------------


async def test_an_unauthenticated_page_redirects_to_the_login(app: FastAPI) -> None:
    async with browser(app) as client:
        page = await client.get("/dashboard/jobs")
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fjobs"
        partial = await client.get("/dashboard/jobs", headers={"HX-Request": "true"})
        assert partial.headers["HX-Redirect"] == "/dashboard/login"
        root = await client.get("/")
        assert (root.status_code, root.headers["location"]) == (307, "/dashboard")
        # an API key in a header is not a dashboard session
        bearer = await client.get("/dashboard", headers={"Authorization": f"Bearer {TEST_API_KEY}"})
        assert bearer.status_code == 303


async def test_login_sets_an_httponly_strict_cookie_holding_neither_the_key_nor_what_is_stored(
    app: FastAPI,
) -> None:
    async with browser(app) as client:
        response = await log_in(client)
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard/jobs"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
        assert "Path=/dashboard" in cookie
        token = client.cookies[COOKIE]
        assert TEST_API_KEY not in cookie
        page = await client.get("/dashboard/jobs")
        assert page.status_code == 200
        assert TEST_API_KEY not in page.text
    async with app_state(app).sessionmaker() as session:
        (row,) = (await session.scalars(sa.select(DashboardSession))).all()
    assert row.key_id == "bootstrap-0"
    assert row.key_hash == hash_key(TEST_API_KEY)
    assert token not in (row.token_hash, row.key_hash)
    assert TEST_API_KEY not in (row.token_hash, row.key_hash)


async def test_a_wrong_key_is_refused_with_the_login_form_again(app: FastAPI) -> None:
    async with browser(app) as client:
        response = await log_in(client, "not-a-key")
        assert response.status_code == 401
        assert "That API key is not valid." in response.text
        assert COOKIE not in client.cookies


async def test_logout_ends_the_session_for_every_copy_of_the_cookie(app: FastAPI) -> None:
    async with browser(app) as client:
        await log_in(client)
        token = client.cookies[COOKIE]
        page = await client.get("/dashboard")
        out = await client.post("/dashboard/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
    async with browser(app) as stolen:
        stolen.cookies.set(COOKIE, token, path="/dashboard")
        assert (await stolen.get("/dashboard")).status_code == 303


async def test_an_expired_session_is_refused(app: FastAPI) -> None:
    async with browser(app) as client:
        await log_in(client)
        async with app_state(app).sessionmaker() as session:
            await session.execute(
                sa.update(DashboardSession).values(
                    expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
                )
            )
            await session.commit()
        assert (await client.get("/dashboard")).status_code == 303


@pytest.fixture
async def uncached_app(db_url: str, settings: object) -> AsyncIterator[FastAPI]:
    """The app with stored keys re-checked on every request (AUTH__KEY_CACHE_TTL_S=0)."""
    application = create_app(make_settings(db_url, auth={"key_cache_ttl_s": 0}))
    async with LifespanManager(application):
        yield application


async def test_revoking_the_key_ends_its_dashboard_sessions(uncached_app: FastAPI) -> None:
    async with app_state(uncached_app).sessionmaker() as session:
        created = await create_key(session, "operator")
        await session.commit()
    async with browser(uncached_app) as client:
        assert (await log_in(client, created.key)).status_code == 303
        assert (await client.get("/dashboard")).status_code == 200
        async with app_state(uncached_app).sessionmaker() as session:
            await revoke_key(session, created.id)
            await session.commit()
        assert (await client.get("/dashboard")).status_code == 303


async def test_a_post_without_this_sessions_csrf_token_or_from_another_origin_is_refused(
    app: FastAPI,
) -> None:
    async with browser(app) as client:
        await log_in(client)
        page = await client.get("/dashboard")
        token = csrf_of(page.text)
        missing = await client.post("/dashboard/jobs/ftjob-x/cancel", data={})
        assert missing.status_code == 403
        forged = await client.post("/dashboard/jobs/ftjob-x/cancel", data={"csrf_token": "0" * 64})
        assert forged.status_code == 403
        cross = await client.post(
            "/dashboard/jobs/ftjob-x/cancel",
            data={"csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        # with the token and from this origin the action runs (the job does not exist: a notice)
        ok = await client.post(
            "/dashboard/jobs/ftjob-x/cancel", data={"csrf_token": token}, headers={"Origin": BASE}
        )
        assert ok.status_code == 303
        assert "does+not+exist" in ok.headers["location"]


def test_same_origin_compares_the_origin_with_the_host() -> None:
    from starlette.requests import Request

    def request(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "headers": raw, "method": "POST", "path": "/"})

    assert _same_origin(request({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}))
    assert not _same_origin(request({"host": "127.0.0.1:8000", "origin": "http://evil.example"}))
    assert not _same_origin(request({"host": "127.0.0.1:8000", "origin": "null"}))
    assert _same_origin(request({"host": "127.0.0.1:8000"}))  # no Origin: not a cross-site browser POST
