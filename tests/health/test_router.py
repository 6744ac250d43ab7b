"""Health endpoints, Prometheus metrics, Swagger UI and the OpenAPI document."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.config import Settings
from app.main import create_app
from tests.conftest import asgi_client, make_settings
from tests.fixtures.support import free_port

PUBLIC_PATHS = {"/health", "/healthz", "/readyz"}


class TestHealth:
    async def test_babylon_health_shape(self, anon_client: httpx.AsyncClient) -> None:
        response = await anon_client.get("/health")
        assert response.status_code == 200
        body = response.json()
        # the Babylon fields, unchanged, plus the worker registry and W&B's view of the key
        assert set(body) == {"status", "database", "wandb", "timestamp", "wandb_key", "workers"}
        assert (body["status"], body["database"], body["wandb"]) == ("healthy", "connected", "not_configured")
        assert body["wandb_key"] == "not_configured"
        assert body["workers"] == {"live": 0, "can_train": 0, "jobs_running": 0}
        stamp = dt.datetime.fromisoformat(body["timestamp"])
        assert stamp.tzinfo is not None

    async def test_health_says_wandb_configured_without_showing_the_key(self, settings: Settings) -> None:
        app = create_app(make_settings(settings.database_url, wandb_api_key="wandb-SECRET-health"))
        async with LifespanManager(app, startup_timeout=60), asgi_client(app, api_key=None) as client:
            response = await client.get("/health")
        assert response.json()["wandb"] == "configured"
        assert "wandb-SECRET" not in response.text

    async def test_liveness(self, anon_client: httpx.AsyncClient) -> None:
        response = await anon_client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    async def test_ready_when_database_is_at_head(self, anon_client: httpx.AsyncClient) -> None:
        response = await anon_client.get("/readyz")
        assert response.status_code == 200
        body = response.json()
        assert (body["status"], body["checks"]) == ("ready", {"database": "ok", "migrations": "ok"})
        # reported, not gating readiness
        assert body["workers"] == {"live": 0, "can_train": 0, "jobs_running": 0, "workers": []}
        assert body["wandb_key"]["status"] == "not_configured"


@pytest.fixture
def unreachable_app() -> FastAPI:
    """Postgres URL at a closed port; nothing touches the DB at start (keys from API_KEYS)."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    return create_app(make_settings(url, migrate_on_start=False))


class TestDatabaseDown:
    async def test_health_is_503_in_babylon_shape(self, unreachable_app: FastAPI) -> None:
        async with LifespanManager(unreachable_app), asgi_client(unreachable_app, api_key=None) as client:
            response = await client.get("/health")
            live = await client.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert (body["status"], body["database"]) == ("unhealthy", "disconnected")
        assert set(body) == {"status", "database", "wandb", "timestamp", "wandb_key", "workers"}
        assert body["workers"] is None  # unknown without the database
        assert live.status_code == 200  # liveness touches no dependency

    async def test_readyz_is_503(self, unreachable_app: FastAPI) -> None:
        async with LifespanManager(unreachable_app), asgi_client(unreachable_app, api_key=None) as client:
            response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "unreachable"


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


class TestMetrics:
    async def test_requests_counted_by_route_template_method_and_status(
        self, test_client: httpx.AsyncClient
    ) -> None:
        for item in ("a", "b", "c"):
            assert (await test_client.get(f"/v1/_test/items/{item}")).status_code == 200
        await test_client.post("/v1/_test/items", json={})  # 422
        await test_client.get("/v1/not-a-route")  # 404
        response = await test_client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = _samples(response.text)

        template = {"route": "/v1/_test/items/{item_id}", "method": "GET", "status": "200"}
        assert _value(samples, "http_requests_total", **template) == 3
        assert _value(samples, "http_request_duration_seconds_count", **template) == 3
        assert _value(samples, "http_request_duration_seconds_bucket", **template, le="+Inf") == 3
        invalid = {"route": "/v1/_test/items", "method": "POST", "status": "422"}
        assert _value(samples, "http_requests_total", **invalid) == 1
        assert _value(samples, "http_requests_total", route="unmatched", status="404") == 1
        await test_client.get("/v1/_inc/things/t1")
        samples = _samples((await test_client.get("/metrics")).text)
        assert _value(samples, "http_requests_total", route="/v1/_inc/things/{thing_id}") == 1
        # Raw paths never become labels.
        assert not [s for s in samples if "/v1/_test/items/a" in s.labels.get("route", "")]

    async def test_database_pool_gauges(self, test_client: httpx.AsyncClient, settings: Settings) -> None:
        samples = _samples((await test_client.get("/metrics")).text)
        for name in ("db_pool_size", "db_pool_checked_out", "db_pool_checked_in", "db_pool_overflow"):
            assert _value(samples, name) is not None, name
        if not settings.is_sqlite:
            assert _value(samples, "db_pool_size") == settings.db.pool_size

    async def test_metrics_need_a_key(self, anon_client: httpx.AsyncClient) -> None:
        assert (await anon_client.get("/metrics")).status_code == 401


class TestDocs:
    async def test_swagger_ui_is_served_without_a_key(self, anon_client: httpx.AsyncClient) -> None:
        response = await anon_client.get("/docs")
        assert response.status_code == 200
        assert "swagger-ui" in response.text
        assert "/openapi.json" in response.text

    async def test_redoc_is_not_an_extra_public_route(self, anon_client: httpx.AsyncClient) -> None:
        assert (await anon_client.get("/redoc")).status_code == 404

    async def test_openapi_lists_every_route_with_errors_and_bearer_auth(
        self, app: FastAPI, anon_client: httpx.AsyncClient
    ) -> None:
        doc: dict[str, Any] = (await anon_client.get("/openapi.json")).json()
        schemes = doc["components"]["securitySchemes"]
        assert {"type": "http", "scheme": "bearer"}.items() <= schemes["HTTPBearer"].items()
        error_ref = "#/components/schemas/ErrorResponse"
        problems = []
        documented = 0
        for context in iter_route_contexts(app.routes):
            route = context.original_route
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            path = context.path_format or ""  # {name:path} is {name} in OpenAPI
            for method in context.methods or set():
                operation = doc["paths"].get(path, {}).get(method.lower())
                if operation is None:
                    problems.append(f"{method} {path}: missing from /openapi.json")
                    continue
                documented += 1
                responses = operation["responses"]
                refs = {
                    code: body.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                    for code, body in responses.items()
                }
                if refs.get("500") != error_ref:
                    problems.append(f"{method} {path}: 500 not documented as the error envelope")
                if "422" in refs and refs["422"] != error_ref:
                    problems.append(f"{method} {path}: 422 is not the error envelope")
                if path in PUBLIC_PATHS:
                    if operation.get("security"):
                        problems.append(f"{method} {path}: public route marked as secured")
                    continue
                if {"HTTPBearer": []} not in operation.get("security", []):
                    problems.append(f"{method} {path}: no Bearer security requirement")
                if refs.get("401") != error_ref:
                    problems.append(f"{method} {path}: 401 not documented")
        assert documented >= 4
        assert problems == []
        assert "HTTPValidationError" not in doc["components"]["schemas"]
