"""Scoped keys at the gateway, with the official openai SDK: the models a key may call (404 as
for a model that does not exist), its per-minute limits (RateLimitError with OpenAI's headers),
and its usage (equal to what the upstream reported, streams included) and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from app.keys import service as keys_service
from app.keys.scopes import Scope
from app.keys.service import KeyOptions
from app.state import app_state
from tests.conftest import asgi_client
from tests.fixtures.gateway import (
    BASE_MODEL,
    flush_writers,
    gateway_settings,
    running_app,
    sdk_for,
    seed_model,
)
from tests.fixtures.recording_upstream import RecordingUpstream, Reply, chunk, completion

MESSAGES: list[Any] = [{"role": "user", "content": "What should agent 7 trade?"}]


@pytest.fixture
async def app(clean_db: str, recording_upstream: RecordingUpstream) -> AsyncIterator[FastAPI]:
    async with running_app(gateway_settings(clean_db, recording_upstream.base_url, None)) as application:
        await seed_model(application, None, "babylon-agent", steps=(1, 2), aliases={"production": 1})
        await seed_model(application, None, "other-agent", steps=(1,))
        yield application


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    assert isinstance(body, dict)
    return str(body["message"])


async def _key(app: FastAPI, name: str, **options: Any) -> str:
    async with app_state(app).sessionmaker() as session:
        created = await keys_service.create_key(session, name, KeyOptions(**options))
        await session.commit()
    return created.key


async def test_a_key_calls_only_its_models_and_others_look_like_they_do_not_exist(app: FastAPI) -> None:
    key = await _key(app, "agents", scopes=frozenset({Scope.inference}), models=("babylon-agent:*",))
    sdk = sdk_for(app, key)
    artifact = "wandb-artifact:///emulator-entity/babylon-rl/babylon-agent:step2"  # ART's name for it
    for name in ("babylon-agent", "babylon-agent:production", "babylon-agent:step1", artifact):
        await sdk.chat.completions.create(model=name, messages=MESSAGES)
    messages = {}
    for name in ("other-agent", BASE_MODEL, "no-such-model"):
        with pytest.raises(openai.NotFoundError) as refused:
            await sdk.chat.completions.create(model=name, messages=MESSAGES)
        assert refused.value.code == "model_not_found"
        messages[name] = _message(refused.value)
    assert messages == {n: f"The model {n!r} does not exist." for n in messages}

    listed = {m.id for m in (await sdk.models.list()).data}
    assert "babylon-agent" in listed
    assert "babylon-agent:production" in listed
    assert not {m for m in listed if "other-agent" in m or m == BASE_MODEL}
    with pytest.raises(openai.NotFoundError) as hidden:
        await sdk.models.retrieve("other-agent")
    assert _message(hidden.value) == "The model 'other-agent' does not exist."
    await sdk.close()


async def test_over_its_requests_per_minute_a_key_gets_rate_limit_error_with_openai_headers(
    app: FastAPI,
) -> None:
    key = await _key(app, "slow", rpm=3)
    sdk = sdk_for(app, key)
    for remaining in ("2", "1", "0"):
        raw = await sdk.chat.completions.with_raw_response.create(model=BASE_MODEL, messages=MESSAGES)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
    error = limited.value
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert "requests per min (RPM): Limit 3" in _message(error)
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    await sdk.close()
    # the full-access key from API_KEYS is not limited
    unlimited = sdk_for(app)
    raw = await unlimited.chat.completions.with_raw_response.create(model=BASE_MODEL, messages=MESSAGES)
    assert "x-ratelimit-limit-requests" not in raw.headers
    await unlimited.close()


async def test_over_its_tokens_per_minute_a_key_is_refused_after_the_answer_that_crossed_it(
    app: FastAPI, recording_upstream: RecordingUpstream
) -> None:
    key = await _key(app, "thrifty", tpm=15)  # each answer costs 11 tokens (recording upstream)
    sdk = sdk_for(app, key)
    await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
    # 4 left: admitted; a stream's tokens are charged from its usage chunk when it ends
    usage = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    recording_upstream.reply = Reply(
        events=[chunk({"content": "hi"}, "stop"), {**chunk({}), "choices": [], "usage": usage}]
    )
    stream = await sdk.chat.completions.create(
        model=BASE_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    _ = [c async for c in stream]
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(model=BASE_MODEL, messages=MESSAGES)
    assert limited.value.type == "tokens"
    assert limited.value.response.headers["x-ratelimit-limit-tokens"] == "15"
    await sdk.close()


async def test_usage_equals_the_tokens_the_upstream_reported_streams_included(
    app: FastAPI, recording_upstream: RecordingUpstream
) -> None:
    agents = await _key(app, "agents", scopes=frozenset({Scope.inference}))
    ops = await _key(app, "ops", scopes=frozenset({Scope.admin}))
    sdk = sdk_for(app, agents)
    reported = {"prompt": 0, "completion": 0}
    for prompt, completion_tokens in ((5, 6), (7, 9)):
        recording_upstream.reply = Reply(
            json=completion(
                usage={
                    "prompt_tokens": prompt,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt + completion_tokens,
                }
            )
        )
        await sdk.chat.completions.create(model="babylon-agent", messages=MESSAGES)
        reported["prompt"] += prompt
        reported["completion"] += completion_tokens
    usage_chunk = {
        **chunk({}),
        "choices": [],
        "usage": {"prompt_tokens": 13, "completion_tokens": 4, "total_tokens": 17},
    }
    recording_upstream.reply = Reply(events=[chunk({"content": "hi"}), chunk({}, "stop"), usage_chunk])
    stream = await sdk.chat.completions.create(
        model="babylon-agent", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    _ = [c async for c in stream]
    reported["prompt"] += 13
    reported["completion"] += 4
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="ghost", messages=MESSAGES)
    await flush_writers(app)

    async with asgi_client(app, api_key=agents) as client:
        own = (await client.get("/v1/usage")).json()["data"]
    assert [(b["key_name"], b["model"]) for b in own] == [("agents", "babylon-agent"), ("agents", "ghost")]
    agent_bucket, ghost_bucket = own
    assert agent_bucket["prompt_tokens"] == reported["prompt"]
    assert agent_bucket["completion_tokens"] == reported["completion"]
    assert agent_bucket["total_tokens"] == reported["prompt"] + reported["completion"]
    assert (agent_bucket["requests"], agent_bucket["errors"]) == (3, 0)
    assert (ghost_bucket["requests"], ghost_bucket["errors"]) == (1, 1)

    # another key's usage needs admin; admin sees every key
    async with asgi_client(app, api_key=agents) as client:
        others = await client.get("/v1/usage", params={"key_id": "bootstrap-0"})
    assert others.status_code == 403
    assert others.json()["error"]["code"] == "insufficient_scope"
    async with asgi_client(app, api_key=ops) as client:
        everything = (await client.get("/v1/usage")).json()["data"]
        metrics = await client.get("/metrics")
    assert sum(b["total_tokens"] for b in everything) == reported["prompt"] + reported["completion"]
    text = metrics.text
    assert f'gateway_key_tokens_total{{key="agents",kind="prompt"}} {float(reported["prompt"])}' in text
    assert 'gateway_key_requests_total{key="agents"} 4.0' in text
    assert 'gateway_key_errors_total{key="agents"} 1.0' in text
    assert agents not in text
    await sdk.close()


async def test_usage_refuses_an_unbounded_or_reversed_range(app: FastAPI) -> None:
    async with asgi_client(app) as client:
        too_long = await client.get(
            "/v1/usage", params={"start_date": "2026-01-01", "end_date": "2026-12-01"}
        )
        reversed_ = await client.get(
            "/v1/usage", params={"start_date": "2026-12-02", "end_date": "2026-12-01"}
        )
    assert too_long.status_code == 400
    assert "at most 93 days" in too_long.json()["error"]["message"]
    assert reversed_.status_code == 400


async def test_an_admin_creates_lists_and_revokes_keys_over_the_api(app: FastAPI) -> None:
    async with asgi_client(app) as admin:
        created = await admin.post(
            "/v1/keys",
            json={"name": "agents", "scopes": ["inference"], "models": ["babylon-agent:*"], "rpm": 100},
        )
        assert created.status_code == 200, created.text
        body = created.json()
        key = body["key"]
        assert (body["status"], body["scopes"], body["models"], body["rpm"]) == (
            "active",
            ["inference"],
            ["babylon-agent:*"],
            100,
        )
        sdk = sdk_for(app, key)
        raw = await sdk.chat.completions.with_raw_response.create(model="babylon-agent", messages=MESSAGES)
        assert raw.headers["x-ratelimit-limit-requests"] == "100"

        listed = await admin.get("/v1/keys")
        assert key not in listed.text
        assert [k["name"] for k in listed.json()["data"]] == ["agents"]

        revoked = await admin.delete(f"/v1/keys/{body['id']}")
        assert revoked.json()["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError):  # at once in this process
            await sdk.chat.completions.create(model="babylon-agent", messages=MESSAGES)
        await sdk.close()

        unknown_scope = await admin.post("/v1/keys", json={"name": "x", "scopes": ["root"]})
        assert unknown_scope.status_code == 422
        # a limit the INTEGER column cannot hold is refused naming the field (was a 500 on Postgres)
        too_big = await admin.post("/v1/keys", json={"name": "x", "tpm": 2**31})
        assert too_big.status_code == 422
        assert too_big.json()["error"]["param"] == "tpm"
        missing = await admin.delete("/v1/keys/key-nope")
        assert missing.json()["error"]["code"] == "key_not_found"
