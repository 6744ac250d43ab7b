"""Chat completions through the gateway with the official openai SDK, against the W&B emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import TEST_API_KEY
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BASE_MODEL, gateway_settings, live_server, running_app, seed_model
from tests.fixtures.recording_upstream import RecordingUpstream, Reply, chunk

MESSAGES: list[Any] = [{"role": "user", "content": "What should agent 7 trade?"}]


async def test_non_streaming_completion_through_the_async_sdk(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1, 2))

    raw = await sdk.chat.completions.with_raw_response.create(model="agent", messages=MESSAGES, max_tokens=8)
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].logprobs is None
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    # the emulator echoes the model it was asked for: bare name = latest checkpoint
    assert completion.model == seeded.artifact(2)
    assert raw.headers["x-gateway-served-model"] == seeded.artifact(2)
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0


async def test_streaming_completion_through_the_async_sdk(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    emulator.configure(stream_chunks=3)
    stream = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    non_stream = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
    assert text == non_stream.choices[0].message.content  # the emulator is deterministic
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {BASE_MODEL}


async def test_sync_and_async_sdk_stream_chunk_by_chunk_over_a_real_server(
    clean_db: str, recording_upstream: RecordingUpstream
) -> None:
    # The upstream sends each next piece only after the client has received the previous one:
    # a gateway that buffered any part of the stream would never deliver it (the wait fails).
    pieces = [f"piece-{i} " for i in range(4)]
    recording_upstream.reply = Reply(
        events=[
            chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": p}) for p in pieces),
            chunk({}, "stop"),
        ],
        gated=True,
    )
    app = create_app(gateway_settings(clean_db, recording_upstream.base_url, "key"))
    async with live_server(app) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=TEST_API_KEY, max_retries=0)
        stream = await client.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, stream=True)
        chunks = aiter(stream)
        received: list[str] = []
        while True:
            try:
                item = await asyncio.wait_for(anext(chunks), 10)
            except StopAsyncIteration:
                break
            if item.choices and item.choices[0].delta.content:
                received.append(item.choices[0].delta.content)
            recording_upstream.release()
        await client.close()
        assert received == pieces

        recording_upstream.reply = Reply(events=[chunk({"content": p}) for p in pieces] + [chunk({}, "stop")])

        def sync_stream() -> list[str]:
            with openai.OpenAI(base_url=f"{url}/v1", api_key=TEST_API_KEY, max_retries=0) as sync:
                return [
                    c.choices[0].delta.content or ""
                    for c in sync.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, stream=True)
                    if c.choices
                ]

        assert "".join(await asyncio.to_thread(sync_stream)) == "".join(pieces)


async def test_the_sync_sdk_gets_plain_completions(clean_db: str, emulator: EmulatorHandle) -> None:
    app = create_app(gateway_settings(clean_db, emulator.base_url, emulator.api_key))
    async with live_server(app) as url:

        def sync_call() -> str:
            with openai.OpenAI(base_url=f"{url}/v1", api_key=TEST_API_KEY, max_retries=0) as sync:
                return (
                    sync.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
                    .choices[0]
                    .message.content
                    or ""
                )

        assert await asyncio.to_thread(sync_call)


async def test_logprobs_reach_the_caller_only_when_asked(gw_app: FastAPI, sdk: openai.AsyncOpenAI) -> None:
    asked = await sdk.chat.completions.create(
        model=BASE_MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2, metadata={"trajectory_id": "t-1"}
    )
    not_asked = await sdk.chat.completions.create(
        model=BASE_MODEL, messages=MESSAGES, metadata={"trajectory_id": "t-2"}
    )

    assert asked.choices[0].logprobs is not None
    content = asked.choices[0].logprobs.content or []
    assert content
    assert content[0].token.startswith("token_id:")
    assert len(content[0].top_logprobs) == 2  # the caller's top_logprobs is kept
    assert not_asked.choices[0].logprobs is None


async def test_streamed_logprobs_reach_the_caller_only_when_asked(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI
) -> None:
    captured = {"trajectory_id": "t-stream"}
    silent = [
        c
        async for c in await sdk.chat.completions.create(
            model=BASE_MODEL, messages=MESSAGES, stream=True, metadata=captured
        )
    ]
    loud = [
        c
        async for c in await sdk.chat.completions.create(
            model=BASE_MODEL, messages=MESSAGES, stream=True, logprobs=True, metadata=captured
        )
    ]

    assert all(c.choices[0].logprobs is None for c in silent if c.choices)
    assert all(c.usage is None for c in silent)  # the usage chunk the gateway asked for is dropped
    assert any(c.choices and c.choices[0].logprobs for c in loud)


async def test_gateway_routes_answer_401_in_the_envelope_without_a_valid_key(gw_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=gw_app)
    requests = [
        ("POST", "/v1/chat/completions", {"model": BASE_MODEL, "messages": MESSAGES}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/wandb-artifact:///e/p/agent:step3", None),
        ("POST", "/v1/models/agent/aliases", {"alias": "production", "checkpoint": 1}),
    ]
    for key in (None, "not-a-key"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:
            for method, path, body in requests:
                response = await client.request(method, path, json=body)
                assert response.status_code == 401, (method, path)
                assert response.json()["error"]["type"] == "authentication_error"
                assert "x-gateway-overhead-ms" in response.headers


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": BASE_MODEL}, "messages"),
        ({"model": BASE_MODEL, "messages": []}, "messages"),
        ({"model": BASE_MODEL, "messages": MESSAGES, "stream": "yes"}, "stream"),
        (
            {"model": BASE_MODEL, "messages": MESSAGES, "metadata": {"trajectory_id": ""}},
            "metadata.trajectory_id",
        ),
        (
            {"model": BASE_MODEL, "messages": MESSAGES, "metadata": {"trajectory_id": "t", "step": "x"}},
            "metadata.step",
        ),
        ({"model": BASE_MODEL, "messages": MESSAGES, "metadata": "t-1"}, "metadata"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_a_body_that_is_not_json_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_the_app_runs_without_a_wandb_key_and_says_so_upstream(
    clean_db: str, emulator: EmulatorHandle
) -> None:
    # No key configured: no Authorization goes upstream; the emulator insists, so the caller
    # learns the gateway's credentials are missing (502), not that its own key is wrong.
    async with running_app(gateway_settings(clean_db, emulator.base_url, None)) as app:
        from tests.fixtures.gateway import sdk_for

        client = sdk_for(app)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
        await client.close()
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_failed"
    assert "no WANDB_API_KEY" in caught.value.message
