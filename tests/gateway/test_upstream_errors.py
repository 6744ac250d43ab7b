"""Each upstream failure reaches the client with its status and a distinct code, in the envelope."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from tests.conftest import asgi_client
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BASE_MODEL, flush_writers, gateway_settings, running_app, sdk_for
from tests.fixtures.recording_upstream import RecordingUpstream, Reply

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


async def _failure(sdk: openai.AsyncOpenAI, **extra: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, **extra)
    return caught.value


@pytest.mark.parametrize(
    ("fault", "status", "code", "error_type"),
    [
        ({"status": 429, "retry_after": 7}, 429, "rate_limit_exceeded", "rate_limit_error"),
        (
            {"status": 402, "detail": "You exceeded your current quota"},
            402,
            "insufficient_quota",
            "insufficient_quota",
        ),
        (
            {"status": 400, "detail": "temperature: must be <= 2"},
            400,
            "upstream_rejected",
            "invalid_request_error",
        ),
        ({"status": 401}, 502, "upstream_auth_failed", "upstream_error"),
        ({"status": 403}, 502, "upstream_auth_failed", "upstream_error"),
        ({"status": 500}, 502, "upstream_error", "upstream_error"),
        ({"status": 503}, 502, "upstream_error", "upstream_error"),
    ],
)
async def test_upstream_status_codes_map_to_the_envelope(
    sdk: openai.AsyncOpenAI,
    emulator: EmulatorHandle,
    fault: dict[str, Any],
    status: int,
    code: str,
    error_type: str,
) -> None:
    emulator.inject("chat", "status", **fault)
    error = await _failure(sdk)
    assert error.status_code == status
    assert error.code == code
    assert error.type == error_type
    assert "x-gateway-overhead-ms" in error.response.headers
    if status == 429:
        assert error.response.headers["retry-after"] == "7"
    if "detail" in fault and status < 500:
        assert fault["detail"] in error.message  # the upstream's reason is relayed


async def test_a_stream_refused_upstream_is_an_ordinary_error_response(
    sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    emulator.inject("chat", "status", status=429, retry_after=1)
    error = await _failure(sdk, stream=True)
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"


async def test_a_hanging_upstream_is_504_upstream_timeout(clean_db: str, emulator: EmulatorHandle) -> None:
    settings = gateway_settings(clean_db, emulator.base_url, emulator.api_key, read_timeout_s=0.3)
    emulator.inject("chat", "hang", seconds=5)
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        error = await _failure(sdk)
        await sdk.close()
    assert error.status_code == 504
    assert error.code == "upstream_timeout"


async def test_a_dropped_connection_is_502_upstream_disconnected(
    sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    emulator.inject("chat", "drop")
    error = await _failure(sdk)
    assert error.status_code == 502
    assert error.code == "upstream_disconnected"
    # the next request gets a fresh connection and succeeds
    ok = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
    assert ok.choices[0].message.content


async def test_a_stream_cut_midway_ends_with_an_error_event_the_sdk_raises(
    sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    emulator.configure(stream_chunks=6)
    emulator.inject("chat", "drop", after_chunks=3)
    stream = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, stream=True)
    received: list[Any] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert received  # the pieces before the cut were relayed
    assert "closed the connection" in caught.value.message
    assert caught.value.body["code"] == "upstream_disconnected"  # type: ignore[index]


async def test_an_unreachable_upstream_is_502_upstream_unreachable(clean_db: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = gateway_settings(clean_db, f"http://127.0.0.1:{port}/v1", "key")
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        error = await _failure(sdk)
        await sdk.close()
        await flush_writers(app)
    assert error.status_code == 502
    assert error.code == "upstream_unreachable"


@pytest.mark.parametrize("raw", [b"<html>bad gateway</html>", b"[1, 2]"])
async def test_an_upstream_answer_that_is_not_a_json_object_is_502(
    clean_db: str, recording_upstream: RecordingUpstream, raw: bytes
) -> None:
    recording_upstream.reply = Reply(raw=raw)
    settings = gateway_settings(clean_db, recording_upstream.base_url, "key")
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        error = await _failure(sdk)
        await sdk.close()
    assert error.status_code == 502
    assert error.code == "upstream_invalid_response"


async def test_all_connections_busy_is_503_upstream_busy(clean_db: str, emulator: EmulatorHandle) -> None:
    settings = gateway_settings(
        clean_db, emulator.base_url, emulator.api_key, max_connections=1, pool_timeout_s=0.2, read_timeout_s=5
    )
    emulator.inject("chat", "hang", seconds=0.8)
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        slow = asyncio.create_task(sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES))
        await asyncio.sleep(0.3)
        error = await _failure(sdk)
        assert (await slow).choices[0].message.content  # the first request still completes
        await sdk.close()
    assert error.status_code == 503
    assert error.code == "upstream_busy"
    assert error.response.headers["retry-after"] == "1"


async def test_upstream_failures_are_counted_in_metrics(gw_app: FastAPI, emulator: EmulatorHandle) -> None:
    emulator.inject("chat", "status", status=503, times=2)
    sdk = sdk_for(gw_app)
    for _ in range(2):
        await _failure(sdk)
    await sdk.close()
    async with asgi_client(gw_app) as client:
        metrics = (await client.get("/metrics")).text
    assert 'gateway_upstream_errors_total{code="upstream_error"} 2.0' in metrics
