"""Logging: one configuration, console or json, and the request id on every line of a request."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import make_url

from app.config import Settings
from app.logs import configure_logging
from tests.conftest import asgi_client, make_settings
from tests.fixtures.support import create_test_app


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's included): put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_format_is_one_object_per_line(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    log = logging.getLogger("tests.json")
    log.info("thing.done id=%s", 7)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("thing.failed")
    log.debug("not at INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "thing.done id=7"
    assert (first["level"], first["logger"], first["request_id"]) == ("info", "tests.json", "-")
    assert first["ts"].endswith("+00:00")
    assert "ValueError: boom" in second["exc_info"]


def test_console_format_is_readable_with_request_id(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "console", stream=stream)
    logging.getLogger("tests.console").debug("thing.done id=%s", 7)
    line = stream.getvalue().strip()
    assert re.fullmatch(r"\S+ \S+ DEBUG\s+tests\.console \[-\] thing\.done id=7", line), line


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_every_line_of_a_request_carries_its_request_id(
    settings: Settings, restore_logging: None, fmt: str
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", fmt, stream=stream)
    app = create_test_app(make_settings(settings.database_url, http={"access_log": True}))
    async with LifespanManager(app, startup_timeout=60), asgi_client(app) as client:
        stream.seek(0)
        stream.truncate()
        given = await client.get("/v1/_test/log", headers={"X-Request-ID": "req-from-client-42"})
        generated = await client.get("/v1/_test/log")
        lines = stream.getvalue().splitlines()
    assert given.headers["x-request-id"] == "req-from-client-42"
    new_id = generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", new_id)

    # route.first, route.child_task (a task spawned by the route), route.last, http.request
    assert len(lines) == 8, lines
    for line, expected in zip(lines, ["req-from-client-42"] * 4 + [new_id] * 4, strict=True):
        request_id = json.loads(line)["request_id"] if fmt == "json" else line.split("[")[1].split("]")[0]
        assert request_id == expected, line


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "semi;colon", ""])
async def test_unusable_request_id_is_replaced(test_client: httpx.AsyncClient, bad: str) -> None:
    response = await test_client.get("/healthz", headers={"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_secrets_never_reach_the_logs(db_url: str, restore_logging: None) -> None:
    """Settings with a W&B key, a client key and (on Postgres) a DB password, DEBUG logging,
    and requests that succeed, fail auth and crash: none of the secrets is written."""
    secrets = {"wandb": "wandb-SECRET-logs-1", "client": "client-SECRET-logs-2", "db": "dbpass-SECRET-3"}
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":  # trust auth accepts any password
        url = url.set(password=secrets["db"])
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    settings = make_settings(
        url.render_as_string(hide_password=False),
        wandb_api_key=secrets["wandb"],
        api_keys=secrets["client"],
        migrate_on_start=True,
        http={"access_log": True},
    )
    app = create_test_app(settings)
    logging.getLogger("tests").info("settings=%r", settings)
    async with (
        LifespanManager(app, startup_timeout=60),
        asgi_client(app, api_key=secrets["client"]) as client,
    ):
        await client.get("/health")
        await client.get("/metrics")
        await client.get("/v1/_test/boom")
        await client.get("/metrics", headers={"Authorization": "Bearer client-SECRET-wrong"})
        await client.post("/v1/_test/keys", json={"name": "n"})
    output = stream.getvalue()
    assert "http.request" in output
    for secret in secrets.values():
        assert secret not in output
