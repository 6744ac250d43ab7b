"""Captures: a completion with metadata.trajectory_id becomes a stored Choice with logprobs."""

from __future__ import annotations

import logging
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from app.gateway.models import CapturedCompletion
from app.state import app_state
from tests.conftest import asgi_client
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import (
    BASE_MODEL,
    flush_writers,
    gateway_settings,
    running_app,
    sdk_for,
    seed_model,
)
from tests.fixtures.recording_upstream import RecordingUpstream

MESSAGES: list[Any] = [
    {"role": "system", "content": "You trade on prediction markets."},
    {"role": "user", "content": "Market 42 moved. What now?"},
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "place_order",
            "parameters": {
                "type": "object",
                "properties": {
                    "market": {"type": "integer"},
                    "side": {"type": "string", "enum": ["YES", "NO"]},
                },
            },
        },
    }
]


async def _captures(app: FastAPI) -> list[CapturedCompletion]:
    await flush_writers(app)
    async with app_state(app).sessionmaker() as session:
        return list(
            (
                await session.scalars(sa.select(CapturedCompletion).order_by(CapturedCompletion.created_at))
            ).all()
        )


async def test_a_non_streamed_completion_is_captured_with_its_logprobs(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1,))
    completion = await sdk.chat.completions.create(
        model="agent",
        messages=MESSAGES,
        metadata={"trajectory_id": "traj-1", "agent_id": "agent-7", "step": "3"},
    )

    [row] = await _captures(gw_app)
    assert (row.trajectory_id, row.agent_id, row.step) == ("traj-1", "agent-7", 3)
    assert (row.model, row.upstream_model) == ("agent", seeded.artifact(1))
    assert row.messages == MESSAGES
    assert row.tools is None
    assert row.choice["message"]["content"] == completion.choices[0].message.content
    assert row.choice["finish_reason"] == "stop"
    tokens = row.choice["logprobs"]["content"]
    assert tokens
    assert all(t["token"].startswith("token_id:") for t in tokens)
    assert completion.usage is not None
    assert row.usage == {
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "total_tokens": completion.usage.total_tokens,
    }
    assert row.latency_ms is not None
    assert row.latency_ms > 0
    # the caller did not ask for logprobs: it got none, the capture has them
    assert completion.choices[0].logprobs is None


async def test_a_streamed_tool_call_is_captured_as_the_choice_a_plain_call_returns(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    emulator.configure(stream_chunks=3)
    common: dict[str, Any] = {
        "model": BASE_MODEL,
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": "required",
    }
    await sdk.chat.completions.create(**common, metadata={"trajectory_id": "plain"})
    streamed = [
        c
        async for c in await sdk.chat.completions.create(
            **common, stream=True, metadata={"trajectory_id": "streamed", "step": "1"}
        )
    ]

    rows = {r.trajectory_id: r for r in await _captures(gw_app)}
    plain, assembled = rows["plain"].choice, rows["streamed"].choice
    assert assembled["finish_reason"] == plain["finish_reason"] == "tool_calls"
    assert assembled["message"]["tool_calls"] == plain["message"]["tool_calls"]
    assert assembled["message"]["tool_calls"][0]["function"]["name"] == "place_order"
    assert assembled["message"]["content"] is None
    assert assembled["logprobs"]["content"] == plain["logprobs"]["content"]
    assert rows["streamed"].tools == TOOLS
    assert rows["streamed"].usage == rows["plain"].usage  # asked upstream, dropped for the caller
    # what the caller saw of the stream carried no logprobs and no usage chunk
    assert all(c.usage is None for c in streamed)
    assert all(c.choices[0].logprobs is None for c in streamed if c.choices)


async def test_a_streamed_text_answer_is_assembled_in_order(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    emulator.configure(stream_chunks=5)
    plain = await sdk.chat.completions.create(
        model=BASE_MODEL, messages=MESSAGES, metadata={"trajectory_id": "a"}
    )
    stream = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        logprobs=True,
        metadata={"trajectory_id": "b"},
    )
    chunks = [c async for c in stream]
    rows = {r.trajectory_id: r for r in await _captures(gw_app)}

    assert rows["b"].choice["message"]["content"] == plain.choices[0].message.content
    assert rows["b"].choice["logprobs"]["content"] == rows["a"].choice["logprobs"]["content"]
    # this caller asked for usage and logprobs: both stay in its stream
    assert chunks[-1].usage is not None
    assert any(c.choices and c.choices[0].logprobs for c in chunks)


async def test_requests_without_trajectory_id_are_not_captured(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI
) -> None:
    await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
    await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, metadata={"agent_id": "a"})
    assert await _captures(gw_app) == []


async def test_capture_asks_upstream_for_logprobs_and_never_forwards_metadata(
    clean_db: str, recording_upstream: RecordingUpstream
) -> None:
    settings = gateway_settings(clean_db, recording_upstream.base_url, "wandb-key")
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        await sdk.chat.completions.create(
            model=BASE_MODEL,
            messages=MESSAGES,
            top_logprobs=3,
            frequency_penalty=0.5,
            metadata={"trajectory_id": "t-1"},
            extra_body={"reasoning_format": "hidden"},
        )
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, metadata={"note": "x"})
        await sdk.close()

    captured, plain = (r.body for r in recording_upstream.requests)
    assert "metadata" not in captured
    assert "metadata" not in plain
    assert captured["logprobs"] is True
    assert captured["top_logprobs"] == 3
    assert captured["return_tokens_as_token_ids"] is True
    # unknown and extra fields reach the upstream untouched
    assert captured["frequency_penalty"] == 0.5
    assert captured["reasoning_format"] == "hidden"
    assert "logprobs" not in plain


async def test_shutdown_writes_captures_still_pending(clean_db: str, emulator: EmulatorHandle) -> None:
    # A flush interval longer than the test: only the shutdown flush can write them.
    settings = gateway_settings(clean_db, emulator.base_url, emulator.api_key, flush_interval_s=3600)
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        for i in range(3):
            await sdk.chat.completions.create(
                model=BASE_MODEL, messages=MESSAGES, metadata={"trajectory_id": f"t-{i}"}
            )
        await sdk.close()
        async with app_state(app).sessionmaker() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(CapturedCompletion)) == 0
        assert len(app_state(app).gateway.captures) == 3
    # the app is shut down: read with an engine of our own
    engine = create_async_engine(clean_db)
    async with engine.connect() as conn:
        ids = (await conn.execute(sa.select(CapturedCompletion.trajectory_id))).scalars().all()
    await engine.dispose()
    assert sorted(ids) == ["t-0", "t-1", "t-2"]


async def test_a_full_capture_buffer_is_counted_in_metrics_and_logged(
    clean_db: str, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway_settings(
        clean_db, emulator.base_url, emulator.api_key, capture_buffer_size=2, flush_interval_s=3600
    )
    caplog.set_level(logging.WARNING, logger="app.gateway.writer")
    async with running_app(settings) as app:
        sdk = sdk_for(app)
        for i in range(5):
            await sdk.chat.completions.create(
                model=BASE_MODEL, messages=MESSAGES, metadata={"trajectory_id": f"t-{i}"}
            )
        await sdk.close()
        async with asgi_client(app) as client:
            metrics = (await client.get("/metrics")).text
    assert 'gateway_writer_dropped_total{reason="buffer_full",table="captured_completions"} 3.0' in metrics
    assert "gateway.writer_overflow table=captured_completions dropped=1" in caplog.text
