"""Chat completions served by the emulator, with the official openai SDK as the client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.emulator import EmulatorHandle

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"
MESSAGES = [{"role": "system", "content": "You trade."}, {"role": "user", "content": "Market 42 is at 0.3"}]
TRADE_TOOL = {
    "type": "function",
    "function": {
        "name": "place_trade",
        "description": "Buy or sell shares",
        "parameters": {
            "type": "object",
            "properties": {
                "market_id": {"type": "integer"},
                "side": {"type": "string", "enum": ["YES", "NO"]},
                "amount": {"type": "number"},
            },
            "required": ["market_id", "side"],
        },
    },
}


@pytest.fixture
def sync_sdk(emulator: EmulatorHandle) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    yield client
    client.close()


@pytest.fixture
async def sdk(emulator: EmulatorHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    yield client
    await client.close()


def test_chat_answers_deterministically_with_usage(sync_sdk: openai.OpenAI) -> None:
    first = sync_sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    again = sync_sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    other = sync_sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "user", "content": "something else"}],
    )

    choice = first.choices[0]
    assert first.object == "chat.completion"
    assert first.model == BASE_MODEL
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.logprobs is None
    assert again.choices[0].message.content == choice.message.content
    assert other.choices[0].message.content != choice.message.content
    assert first.usage is not None
    assert first.usage.completion_tokens == len(choice.message.content.split())
    assert first.usage.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


async def test_chat_logprobs_are_token_ids_with_requested_top_logprobs(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=3,
    )

    choice = completion.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(bytes(t.bytes or []).decode() for t in tokens) == choice.message.content
    assert len(tokens) == completion.usage.completion_tokens  # type: ignore[union-attr]
    for token in tokens:
        assert token.token.startswith("token_id:")
        assert int(token.token.removeprefix("token_id:")) >= 0
        assert token.logprob < 0
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token
    # What ART trains on: the choice survives a JSON round trip as a valid Choice.
    assert choice.model_dump(mode="json")["logprobs"]["content"][0]["token"].startswith("token_id:")


async def test_chat_max_tokens_cuts_the_answer_with_finish_reason_length(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


async def test_chat_calls_a_tool_named_in_the_last_user_message(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "user", "content": "Use place_trade on market 42"}],
        tools=[TRADE_TOOL],  # type: ignore[list-item]
        logprobs=True,
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "place_trade"
    arguments = json.loads(call.function.arguments)
    assert arguments == {"market_id": 1, "side": "YES", "amount": 1.5}
    assert choice.logprobs is not None
    assert choice.logprobs.content


async def test_chat_tool_choice_forces_or_forbids_tool_calls(sdk: openai.AsyncOpenAI) -> None:
    forced = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=[TRADE_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "place_trade"}},
    )
    forbidden = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=[{"role": "user", "content": "Use place_trade"}],
        tools=[TRADE_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    unrelated = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=[TRADE_TOOL],  # type: ignore[list-item]
    )

    assert forced.choices[0].message.tool_calls is not None
    assert forbidden.choices[0].message.tool_calls is None
    assert forbidden.choices[0].finish_reason == "stop"
    assert unrelated.choices[0].message.tool_calls is None


async def test_chat_stream_sends_chunks_with_logprobs_and_usage(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    emulator.configure(stream_chunks=3)
    plain = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]

    stream = await sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        logprobs=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 3
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == plain.choices[0].message.content
    streamed_tokens = [t for c in content_chunks for t in (c.choices[0].logprobs.content or [])]  # type: ignore[union-attr]
    assert len(streamed_tokens) == plain.usage.completion_tokens  # type: ignore[union-attr]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]


def test_chat_stream_of_a_tool_call_sends_argument_deltas(sync_sdk: openai.OpenAI) -> None:
    stream = sync_sdk.chat.completions.create(
        model=BASE_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        tools=[TRADE_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        stream=True,
    )
    chunks = list(stream)

    first_call = chunks[0].choices[0].delta.tool_calls
    assert first_call is not None
    assert first_call[0].function is not None
    assert first_call[0].function.name == "place_trade"
    arguments = "".join(
        (c.choices[0].delta.tool_calls or [])[0].function.arguments or ""  # type: ignore[union-attr]
        for c in chunks[1:]
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments)["side"] == "YES"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_raw_stream_ends_with_done_line(emulator: EmulatorHandle) -> None:
    response = httpx.post(
        f"{emulator.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        json={"model": BASE_MODEL, "messages": MESSAGES, "stream": True},
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


async def test_chat_serves_existing_checkpoints_and_404s_unknown_or_deleted_ones(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    seeded = emulator.add_checkpoint("agent", step=3)
    name = seeded["inference_name"]
    assert name == f"wandb-artifact:///{emulator.entity}/babylon-rl/agent:step3"

    served = await sdk.chat.completions.create(model=name, messages=MESSAGES)  # type: ignore[arg-type]
    latest = await sdk.chat.completions.create(model=name.removesuffix(":step3"), messages=MESSAGES)  # type: ignore[arg-type]
    base = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert served.model == name
    assert latest.choices[0].message.content
    assert served.choices[0].message.content != base.choices[0].message.content

    for missing in (name.replace(":step3", ":step4"), "wandb-artifact:///x/y/z:step1", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.chat.completions.create(model=missing, messages=MESSAGES)  # type: ignore[arg-type]
        assert caught.value.body == {"detail": f"Model '{missing}' not found"}

    emulator.state.delete_checkpoints(seeded["model_id"], [3])
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model=name, messages=MESSAGES)  # type: ignore[arg-type]


async def test_chat_rejects_bad_requests_and_bad_keys(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await sdk.chat.completions.create(model=BASE_MODEL, messages=[])
    assert caught.value.body["detail"][0]["loc"] == ["body", "messages"]  # type: ignore[index]

    with pytest.raises(openai.UnprocessableEntityError):
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, top_logprobs=50, logprobs=True)  # type: ignore[arg-type]

    wrong = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    await wrong.close()


def test_chat_is_reachable_without_the_v1_prefix(emulator: EmulatorHandle) -> None:
    root = emulator.base_url.removesuffix("/v1")
    response = httpx.post(
        f"{root}/chat/completions",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        json={"model": BASE_MODEL, "messages": MESSAGES},
    )

    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert emulator.requests("chat") == 1


async def test_chat_429_with_retry_after_and_midstream_drop_reach_the_sdk(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    emulator.inject("chat", "status", status=429, retry_after=2)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.body == {"detail": "Concurrency limit reached for requests"}

    emulator.inject("chat", "drop", after_chunks=2)
    stream = await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    received: list[Any] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIConnectionError):
        await consume()
    assert len(received) == 2  # the role chunk and the first content piece, then the socket closed

    emulator.inject("chat", "status", status=402)
    with pytest.raises(openai.APIStatusError) as quota:
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert quota.value.status_code == 402
    assert "quota" in str(quota.value.body)
