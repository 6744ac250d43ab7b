"""Every error is the OpenAI envelope with the right status; bad input is a clear 4xx."""

from __future__ import annotations

import ast
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app import errors
from app.config import Settings
from tests.conftest import asgi_client, make_settings
from tests.fixtures.support import create_test_app

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ENVELOPE_KEYS
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


class TestRouting:
    async def test_unknown_route_is_404_naming_the_route(self, test_client: httpx.AsyncClient) -> None:
        error = error_of(await test_client.get("/v1/no-such-thing"), 404)
        assert error["code"] == "not_found"
        assert error["type"] == "invalid_request_error"
        assert "GET /v1/no-such-thing" in error["message"]

    async def test_unknown_route_without_key_is_still_the_envelope(self, test_app: FastAPI) -> None:
        async with asgi_client(test_app, api_key=None) as anon:
            error_of(await anon.get("/nothing-here"), 404)

    async def test_wrong_method_is_405_with_allow_header(self, test_client: httpx.AsyncClient) -> None:
        response = await test_client.delete("/v1/_test/items/abc")
        error = error_of(response, 405)
        assert error["code"] == "method_not_allowed"
        assert "GET" in response.headers["allow"]
        assert "DELETE" in error["message"]


class TestBadInput:
    async def test_validation_error_is_422_naming_the_field(self, test_client: httpx.AsyncClient) -> None:
        error = error_of(await test_client.post("/v1/_test/items", json={"nam": "x"}), 422)
        assert (error["param"], error["code"]) == ("name", "invalid_value")
        assert error["message"].startswith("name: Field required")

    async def test_wrong_type_is_422_naming_the_field(self, test_client: httpx.AsyncClient) -> None:
        error = error_of(await test_client.post("/v1/_test/items", json={"name": ["x"]}), 422)
        assert error["param"] == "name"

    async def test_malformed_json_is_400_invalid_json(self, test_client: httpx.AsyncClient) -> None:
        response = await test_client.post(
            "/v1/_test/items", content=b'{"name": "x",', headers={"content-type": "application/json"}
        )
        error = error_of(response, 400)
        assert (error["code"], error["type"]) == ("invalid_json", "invalid_request_error")
        assert "not valid JSON" in error["message"]

    @pytest.mark.parametrize(
        ("kwargs", "named"),
        [
            ({"content": b'{"name": "x"}', "headers": {"content-type": "text/plain"}}, "text/plain"),
            ({"data": {"name": "x"}}, "application/x-www-form-urlencoded"),
            ({"files": {"name": ("n.txt", b"x")}}, "multipart/form-data"),
            ({"content": b'{"name": "x"}', "headers": {"content-type": ""}}, "none"),
        ],
        ids=["text", "urlencoded-form", "multipart", "no-content-type"],
    )
    async def test_json_route_given_another_content_type_is_415(
        self, test_client: httpx.AsyncClient, kwargs: dict[str, Any], named: str
    ) -> None:
        error = error_of(await test_client.post("/v1/_test/items", **kwargs), 415)
        assert error["code"] == "unsupported_media_type"
        assert error["param"] == "content-type"
        assert "application/json" in error["message"]
        assert named in error["message"]

    async def test_route_with_several_body_parameters_given_text_is_415(
        self, test_client: httpx.AsyncClient
    ) -> None:
        response = await test_client.post(
            "/v1/_test/pairs", content=b"left=a", headers={"content-type": "text/plain"}
        )
        assert error_of(response, 415)["param"] == "content-type"
        ok = await test_client.post("/v1/_test/pairs", json={"left": {"name": "a"}, "right": {"name": "b"}})
        assert ok.json() == {"left": "a", "right": "b"}

    async def test_json_with_a_charset_is_accepted(self, test_client: httpx.AsyncClient) -> None:
        response = await test_client.post(
            "/v1/_test/items",
            content=b'{"name": "x"}',
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert response.status_code == 200
        assert response.json() == {"name": "x"}

    async def test_missing_body_is_422_saying_so(self, test_client: httpx.AsyncClient) -> None:
        error = error_of(await test_client.post("/v1/_test/items"), 422)
        assert error["code"] == "missing_body"

    async def test_json_array_instead_of_object_is_422(self, test_client: httpx.AsyncClient) -> None:
        error = error_of(await test_client.post("/v1/_test/items", json=[{"name": "x"}]), 422)
        assert error["code"] == "invalid_body"
        assert "JSON object" in error["message"]

    async def test_form_route_given_json_is_415(self, test_client: httpx.AsyncClient) -> None:
        error = error_of(await test_client.post("/v1/_test/uploads", json={"purpose": "x"}), 415)
        assert "multipart/form-data" in error["message"]

    async def test_form_route_accepts_multipart(self, test_client: httpx.AsyncClient) -> None:
        response = await test_client.post(
            "/v1/_test/uploads", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tune"}
        )
        assert response.json() == {"size": 3, "purpose": "fine-tune"}


@pytest.fixture
async def small_limits_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    limited = make_settings(settings.database_url, http={"max_body_bytes": 1000, "max_upload_bytes": 5000})
    app = create_test_app(limited)
    async with LifespanManager(app, startup_timeout=60), asgi_client(app) as client:
        yield client


async def _chunks(total: int) -> AsyncIterator[bytes]:
    yield b'{"name": "'
    for _ in range(total // 100):
        yield b"a" * 100
    yield b'"}'


class TestBodyLimits:
    async def test_declared_oversized_body_is_413_with_the_limit(
        self, small_limits_client: httpx.AsyncClient
    ) -> None:
        response = await small_limits_client.post("/v1/_test/items", json={"name": "a" * 2000})
        error = error_of(response, 413)
        assert error["code"] == "request_too_large"
        assert "1000 bytes" in error["message"]
        assert response.headers["x-request-id"]

    async def test_streamed_oversized_body_is_413_not_400(
        self, small_limits_client: httpx.AsyncClient
    ) -> None:
        # Chunked, no Content-Length: the limit is enforced while the body is read.
        response = await small_limits_client.post(
            "/v1/_test/items", content=_chunks(3000), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        error = error_of(response, 413)
        assert "1000 bytes" in error["message"]

    async def test_streamed_oversized_multipart_is_413(self, small_limits_client: httpx.AsyncClient) -> None:
        async def multipart() -> AsyncIterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            for _ in range(30):
                yield b"x" * 100
            yield b"\r\n--b--\r\n"

        response = await small_limits_client.post(
            "/v1/_test/uploads",
            content=multipart(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        error_of(response, 413)

    async def test_body_under_the_limit_passes(self, small_limits_client: httpx.AsyncClient) -> None:
        response = await small_limits_client.post("/v1/_test/items", json={"name": "a" * 900})
        assert response.status_code == 200

    async def test_files_route_has_its_own_larger_limit(self, small_limits_client: httpx.AsyncClient) -> None:
        # 3000 bytes: over the ordinary limit, under the upload limit.
        body = b"x" * 3000
        under = await small_limits_client.post("/v1/files", content=body)
        assert under.status_code != 413
        over = await small_limits_client.post("/v1/files", content=b"x" * 6000)
        error = error_of(over, 413)
        assert "5000 bytes" in error["message"]
        ordinary = await small_limits_client.post("/v1/_test/items", content=body)
        assert ordinary.status_code == 413

    def test_default_limits_are_a_few_mib_and_larger_for_files(self) -> None:
        settings = make_settings("sqlite+aiosqlite:///unused.db")
        assert 1 << 20 <= settings.http.max_body_bytes <= 16 << 20
        assert settings.http.max_upload_bytes > settings.http.max_body_bytes


class TestUnexpectedException:
    async def test_is_500_envelope_without_internals_logged_once_with_request_id(
        self, test_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        response = await test_client.get("/v1/_test/boom", headers={"X-Request-ID": "req-boom-1"})
        error = error_of(response, 500)
        assert (error["type"], error["code"]) == ("server_error", "internal_error")
        assert "req-boom-1" in error["message"]
        assert response.headers["x-request-id"] == "req-boom-1"
        for leak in ("hunter2", "secret.py", "RuntimeError", "Traceback"):
            assert leak not in response.text
        logged = [r for r in caplog.records if r.exc_info]
        assert len(logged) == 1
        assert logged[0].request_id == "req-boom-1"  # type: ignore[attr-defined]
        assert "hunter2" in caplog.text  # the operator sees the real exception


class TestDatabaseErrors:
    async def test_integrity_error_is_409_without_sql(self, test_client: httpx.AsyncClient) -> None:
        response = await test_client.post("/v1/_test/duplicate-keys")
        error = error_of(response, 409)
        assert error["code"] == "conflict"
        for leak in ("same-hash-value", "INSERT", "api_keys"):
            assert leak not in response.text


class TestAppErrors:
    @pytest.mark.parametrize(
        "cls",
        [
            errors.BadRequest,
            errors.Unauthorized,
            errors.NotFound,
            errors.MethodNotAllowed,
            errors.Conflict,
            errors.PayloadTooLarge,
            errors.UnsupportedMediaType,
            errors.Unprocessable,
            errors.InvalidJSON,
            errors.InternalError,
            errors.ServiceUnavailable,
        ],
    )
    async def test_each_subclass_renders_its_status_in_the_envelope(self, cls: type[errors.AppError]) -> None:
        app = FastAPI()
        errors.install_error_handlers(app)

        @app.get("/raise")
        async def raise_it() -> None:
            raise cls("something specific", param="field_x")

        async with asgi_client(app) as client:
            error = error_of(await client.get("/raise"), cls.status_code)
        assert error == {
            "message": "something specific",
            "type": cls.type,
            "param": "field_x",
            "code": cls.default_code,
        }
        assert 400 <= cls.status_code < 600


class TestStoredErrors:
    def test_an_app_error_is_stored_with_its_code_message_and_param(self) -> None:
        error = errors.BadRequest(
            "seed must be a non-negative 64-bit integer", param="seed", code="invalid_seed"
        )
        assert error.stored() == {
            "code": "invalid_seed",
            "message": "seed must be a non-negative 64-bit integer",
            "param": "seed",
        }

    def test_an_error_without_a_code_is_stored_under_the_callers_default(self) -> None:
        error = errors.AppError("boom")
        assert error.stored(default_code="build_failed") == {
            "code": "build_failed",
            "message": "boom",
            "param": None,
        }

    def test_a_stored_error_reads_back_as_the_response_object(self) -> None:
        stored = errors.stored_error("build_interrupted", "the build stopped")
        assert errors.ErrorObject.model_validate(stored).model_dump() == stored


class TestOneRendering:
    def test_render_error_is_the_envelope_with_every_field(self) -> None:
        rendered = errors.render_error(errors.NotFound("no such thing", param="id", code="thing_not_found"))
        assert rendered == (
            b'{"error":{"message":"no such thing","type":"invalid_request_error",'
            b'"param":"id","code":"thing_not_found"}}'
        )

    def test_an_instance_may_carry_a_status_decided_at_run_time(self) -> None:
        error = errors.AppError(
            "upstream said no", status_code=429, type_="rate_limit_error", code="slow_down"
        )
        response = errors.error_response(error)
        assert response.status_code == 429
        assert response.body == errors.render_error(error)


def _envelope_literals(path: Path) -> list[int]:
    """Lines of dict literals shaped like the envelope: {"error": {"message": …}}."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "error"
                    and isinstance(value, ast.Dict)
                    and any(isinstance(k, ast.Constant) and k.value == "message" for k in value.keys)
                ):
                    found.append(node.lineno)
    return found


def test_only_render_error_builds_the_envelope() -> None:
    app_dir = Path(errors.__file__).parent
    builders = {
        f"{path.relative_to(app_dir)}:{line}"
        for path in app_dir.rglob("*.py")
        for line in _envelope_literals(path)
    }
    assert builders == {f"errors.py:{_envelope_literals(Path(errors.__file__))[0]}"}


class TestDatabaseErrorKinds:
    """A database error is an outage (503, retry), the client's text (400) or a bug (500)."""

    @staticmethod
    async def render(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
        import orjson

        handler = errors._handle_dbapi_error
        response = await handler(None, exc)  # type: ignore[arg-type]
        return response.status_code, orjson.loads(bytes(response.body))["error"], dict(response.headers)

    async def test_a_dropped_connection_is_503_database_unavailable_with_retry_after(self) -> None:
        import sqlalchemy as sa

        dropped = sa.exc.DBAPIError(
            "SELECT 1", {}, Exception("connection was closed"), connection_invalidated=True
        )
        status, error, headers = await self.render(dropped)
        assert (status, error["code"], headers["retry-after"]) == (503, "database_unavailable", "2")

    async def test_text_postgres_cannot_store_is_400_invalid_characters(self) -> None:
        import sqlalchemy as sa

        class NulRejected(Exception):
            sqlstate = "22021"  # character_not_in_repertoire: a NUL in a text value

        status, error, _ = await self.render(
            sa.exc.DBAPIError("INSERT", {}, NulRejected("invalid byte 0x00"))
        )
        assert (status, error["code"]) == (400, "invalid_characters")

    async def test_a_value_the_column_cannot_hold_is_400_invalid_value(self) -> None:
        import sqlalchemy as sa

        class OutOfRange(Exception):
            sqlstate = "22003"  # numeric_value_out_of_range: e.g. 10**11 into an INTEGER column

        request: Any = type("R", (), {"url": type("U", (), {"path": "/v1/keys"})()})()
        response = await errors._handle_dbapi_error(
            request, sa.exc.DBAPIError("INSERT", {}, OutOfRange("int32"))
        )
        assert response.status_code == 400
        assert b'"code":"invalid_value"' in bytes(response.body)

    async def test_any_other_database_error_is_a_500_without_internals(self) -> None:
        import sqlalchemy as sa

        status, error, _ = await self.render(
            sa.exc.DBAPIError("SELEC", {}, Exception("syntax error at SELEC"))
        )
        assert (status, error["code"]) == (500, "internal_error")
        assert "SELEC" not in error["message"]
