"""The W&B key goes upstream and nowhere else; the caller's key never goes upstream; hop-by-hop
headers are not relayed."""

from __future__ import annotations

import logging
import os
from typing import Any

import openai
import pytest

from tests.conftest import TEST_API_KEY, asgi_client
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BASE_MODEL, gateway_settings, running_app, sdk_for
from tests.fixtures.recording_upstream import RecordingUpstream, Reply, chunk, completion

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
WANDB_KEY = "wandb-secret-" + "k" * 27


async def test_the_wandb_key_is_injected_upstream_and_the_callers_key_is_not(
    clean_db: str, recording_upstream: RecordingUpstream
) -> None:
    async with running_app(gateway_settings(clean_db, recording_upstream.base_url, WANDB_KEY)) as app:
        sdk = sdk_for(app)
        await sdk.chat.completions.create(
            model=BASE_MODEL, messages=MESSAGES, extra_headers={"X-Request-Id": "req-42"}
        )
        await sdk.close()
    [request] = recording_upstream.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {WANDB_KEY}"
    assert TEST_API_KEY not in str(request.headers)
    assert request.headers["x-request-id"] == "req-42"  # traceable end to end
    assert request.body["model"] == BASE_MODEL


async def test_the_wandb_key_never_appears_in_responses_or_logs(
    clean_db: str, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with running_app(gateway_settings(clean_db, emulator.base_url, emulator.api_key)) as app:
        sdk = sdk_for(app)
        ok = await sdk.chat.completions.with_raw_response.create(model=BASE_MODEL, messages=MESSAGES)
        seen += [ok.http_response.text, str(ok.headers)]
        stream = await sdk.chat.completions.with_raw_response.create(
            model=BASE_MODEL, messages=MESSAGES, stream=True
        )
        seen += [str(stream.headers), "".join([str(c) async for c in stream.parse()])]
        for fault in ({"status": 401}, {"status": 429}, {"status": 500}):
            emulator.inject("chat", "status", **fault)
            with pytest.raises(openai.APIStatusError) as caught:
                await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
            seen += [caught.value.response.text, str(caught.value.response.headers)]
        emulator.inject("chat", "drop")
        with pytest.raises(openai.APIStatusError) as dropped:
            await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
        seen.append(dropped.value.response.text)
        async with asgi_client(app) as client:
            for path in ("/v1/models", f"/v1/models/{BASE_MODEL}", "/metrics", "/openapi.json", "/health"):
                seen.append((await client.get(path)).text)
        await sdk.close()
    assert len(caplog.records) > 0
    for text in [*seen, caplog.text]:
        assert emulator.api_key not in text
    assert emulator.api_key not in str(os.environ)


async def test_an_upstream_that_echoes_the_key_is_scrubbed(
    clean_db: str, recording_upstream: RecordingUpstream
) -> None:
    recording_upstream.reply = Reply(
        status=400, json={"error": {"message": f"bad request from key {WANDB_KEY}", "code": "bad"}}
    )
    async with running_app(gateway_settings(clean_db, recording_upstream.base_url, WANDB_KEY)) as app:
        sdk = sdk_for(app)
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
        await sdk.close()
    assert WANDB_KEY not in caught.value.response.text
    assert "bad request from key ***" in caught.value.message
    assert caught.value.code == "bad"


@pytest.mark.parametrize("stream", [False, True])
async def test_hop_by_hop_headers_are_not_relayed(
    clean_db: str, recording_upstream: RecordingUpstream, stream: bool
) -> None:
    recording_upstream.reply = Reply(
        json=completion(),
        events=[chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop")] if stream else None,
        headers=[
            ("Connection", "keep-alive, X-Upstream-Private"),
            ("Keep-Alive", "timeout=5"),
            ("X-Upstream-Private", "internal"),
            ("Proxy-Authenticate", "Basic"),
            ("Set-Cookie", "session=1"),
            ("X-Ratelimit-Remaining-Requests", "99"),
            ("Openai-Processing-Ms", "12"),
        ],
    )
    async with running_app(gateway_settings(clean_db, recording_upstream.base_url, "key")) as app:
        async with asgi_client(app) as client:
            response = await client.post(
                "/v1/chat/completions", json={"model": BASE_MODEL, "messages": MESSAGES, "stream": stream}
            )
    assert response.status_code == 200
    headers = response.headers
    for name in ("keep-alive", "x-upstream-private", "proxy-authenticate", "set-cookie", "connection"):
        assert name not in headers, name
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["openai-processing-ms"] == "12"
    assert headers["content-type"].startswith("text/event-stream" if stream else "application/json")
