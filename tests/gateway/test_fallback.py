"""A checkpoint that is gone (deleted here or upstream) → 404, or the base model when the
model (or the service) opts into the fallback; the response says which model served."""

from __future__ import annotations

import datetime as dt
from typing import Any

import openai
import pytest
from fastapi import FastAPI

from app.registry.models import Checkpoint
from app.state import app_state
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import (
    BASE_MODEL,
    SeededModel,
    gateway_settings,
    running_app,
    sdk_for,
    seed_model,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


async def _delete_locally(app: FastAPI, seeded: SeededModel, step: int) -> None:
    async with app_state(app).sessionmaker() as session:
        ckpt = await session.get(Checkpoint, seeded.checkpoints[step].id)
        assert ckpt is not None
        ckpt.deleted_at = dt.datetime.now(dt.UTC)
        await session.commit()
    app_state(app).gateway.resolver.invalidate()


def _delete_upstream(emulator: EmulatorHandle, step: int) -> None:
    [model] = [m for m in emulator.models() if m["name"] == "agent"]
    emulator.state.delete_checkpoints(model["id"], [step])


async def test_a_deleted_checkpoint_is_404_without_fallback(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1, 2))
    await _delete_locally(gw_app, seeded, 2)
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model=seeded.artifact(2), messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert "deleted" in caught.value.message
    assert emulator.requests("chat") == 0


async def test_a_model_that_opts_in_falls_back_to_its_base_model(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1, 2), fallback_to_base=True)
    await _delete_locally(gw_app, seeded, 2)

    raw = await sdk.chat.completions.with_raw_response.create(model=seeded.artifact(2), messages=MESSAGES)
    assert raw.parse().model == BASE_MODEL  # what the upstream was asked for
    assert raw.headers["x-gateway-served-model"] == BASE_MODEL
    assert raw.headers["x-gateway-fallback"] == "base_model"
    # a live checkpoint of the same model is still served as itself
    live = await sdk.chat.completions.with_raw_response.create(model=seeded.artifact(1), messages=MESSAGES)
    assert live.headers["x-gateway-served-model"] == seeded.artifact(1)
    assert "x-gateway-fallback" not in live.headers


@pytest.mark.parametrize("stream", [False, True])
async def test_a_checkpoint_gone_upstream_falls_back_when_the_service_says_so(
    clean_db: str, emulator: EmulatorHandle, stream: bool
) -> None:
    settings = gateway_settings(clean_db, emulator.base_url, emulator.api_key, fallback_to_base_model=True)
    async with running_app(settings) as app:
        seeded = await seed_model(app, emulator, steps=(1, 2))
        _delete_upstream(emulator, 2)  # our registry still lists it
        sdk = sdk_for(app)
        raw = await sdk.chat.completions.with_raw_response.create(
            model="agent", messages=MESSAGES, stream=stream
        )
        assert raw.headers["x-gateway-served-model"] == BASE_MODEL
        assert raw.headers["x-gateway-fallback"] == "base_model"
        result = raw.parse()
        if stream:
            models = {c.model async for c in result}  # type: ignore[union-attr]
        else:
            models = {result.model}  # type: ignore[union-attr]
        assert models == {BASE_MODEL}
        assert emulator.requests("chat") == 2  # the 404 for the checkpoint, then the base model
        await sdk.close()
    assert seeded.artifact(2).endswith(":step2")


async def test_a_checkpoint_gone_upstream_is_404_without_fallback(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1, 2))
    _delete_upstream(emulator, 2)
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model=seeded.artifact(2), messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert "not found" in caught.value.message
