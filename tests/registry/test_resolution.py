"""Every accepted model-name form reaches the upstream as the right concrete model; aliases move
without a restart. The emulator answers with the model it was asked for, so `completion.model`
is what the upstream received."""

from __future__ import annotations

import datetime as dt

import openai
import pytest
from fastapi import FastAPI

from app.registry.models import Checkpoint
from app.registry.service import set_alias
from app.state import app_state
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import (
    BASE_MODEL,
    PROJECT,
    SeededModel,
    gateway_settings,
    running_app,
    sdk_for,
    seed_model,
)

MESSAGES = [{"role": "user", "content": "hi"}]
ARTIFACT = f"wandb-artifact:///emulator-entity/{PROJECT}/agent"


async def _served(sdk: openai.AsyncOpenAI, name: str) -> str:
    completion = await sdk.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2)
    return completion.model


@pytest.fixture
async def seeded(gw_app: FastAPI, emulator: EmulatorHandle) -> SeededModel:
    return await seed_model(
        gw_app,
        emulator,
        steps=(1, 2, 3),
        metrics={1: {"reward_mean": 0.1}, 2: {"reward_mean": 0.9}, 3: {"reward_mean": 0.5}},
        aliases={"production": 1},
        job_id="ftjob-" + "a" * 24,
    )


async def test_every_name_form_resolves_to_its_concrete_checkpoint(
    sdk: openai.AsyncOpenAI, seeded: SeededModel
) -> None:
    expected = {
        seeded.artifact(3): seeded.artifact(3),  # a job's fine_tuned_model
        seeded.checkpoints[2].id: seeded.artifact(2),  # ftckpt-…
        "ftjob-" + "a" * 24: seeded.artifact(3),  # the job's latest good checkpoint
        "agent": seeded.artifact(3),  # bare name = latest
        "agent:latest": seeded.artifact(3),
        "agent:best": seeded.artifact(2),  # highest reward_mean
        "agent:production": seeded.artifact(1),  # an alias set through the registry
        "agent:step2": seeded.artifact(2),
        ARTIFACT: seeded.artifact(3),
        f"{ARTIFACT}:production": seeded.artifact(1),
        f"{ARTIFACT}:best": seeded.artifact(2),
        BASE_MODEL: BASE_MODEL,
    }
    served = {name: await _served(sdk, name) for name in expected}
    assert served == expected


@pytest.mark.parametrize(
    "name",
    [
        "no-such-model",
        "agent:no-such-alias",
        "agent:step9",
        "ftckpt-" + "0" * 24,
        "ftjob-" + "0" * 24,
        "wandb-artifact:///emulator-entity/babylon-rl/other:step1",
        "wandb-artifact:///not-a-valid-name",
        "meta-llama/Not-A-Base-Model",
    ],
)
async def test_unknown_names_are_404_model_not_found(
    sdk: openai.AsyncOpenAI, seeded: SeededModel, emulator: EmulatorHandle, name: str
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model=name, messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    assert emulator.requests("chat") == 0  # resolved in the service, never sent upstream


async def test_a_stored_latest_alias_wins_over_the_highest_step(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1, 2), aliases={"latest": 1})
    assert await _served(sdk, "agent") == seeded.artifact(1)
    assert await _served(sdk, "agent:latest") == seeded.artifact(1)


async def test_a_job_id_skips_deleted_checkpoints(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    job = "ftjob-" + "b" * 24
    seeded = await seed_model(gw_app, emulator, steps=(1, 2), job_id=job)
    async with app_state(gw_app).sessionmaker() as session:
        ckpt = await session.get(Checkpoint, seeded.checkpoints[2].id)
        assert ckpt is not None
        ckpt.deleted_at = dt.datetime.now(dt.UTC)
        await session.commit()
    app_state(gw_app).gateway.resolver.invalidate()
    assert await _served(sdk, job) == seeded.artifact(1)
    assert await _served(sdk, "agent") == seeded.artifact(1)


async def test_alias_moves_through_the_api_take_effect_at_once(
    sdk: openai.AsyncOpenAI, seeded: SeededModel
) -> None:
    assert await _served(sdk, "agent:production") == seeded.artifact(1)  # now cached

    moved = await sdk.post(
        "/models/agent/aliases",
        body={"alias": "production", "checkpoint": "step3"},
        cast_to=object,
    )
    assert moved["served_model"] == seeded.artifact(3)  # type: ignore[index]
    assert moved["id"] == "agent:production"  # type: ignore[index]
    assert await _served(sdk, "agent:production") == seeded.artifact(3)
    assert await _served(sdk, f"{ARTIFACT}:production") == seeded.artifact(3)

    # a new alias, by checkpoint id, on the wandb-artifact form of the model line
    await sdk.post(
        f"/models/{ARTIFACT}/aliases",
        body={"alias": "canary", "checkpoint": seeded.checkpoints[2].id},
        cast_to=object,
    )
    assert await _served(sdk, "agent:canary") == seeded.artifact(2)


async def test_alias_moves_by_another_process_are_seen_without_restart(
    clean_db: str, emulator: EmulatorHandle
) -> None:
    # A zero TTL reads the registry on every request (the default 1 s bounds the delay).
    settings = gateway_settings(clean_db, emulator.base_url, emulator.api_key, resolve_cache_ttl_s=0)
    async with running_app(settings) as app:
        seeded = await seed_model(app, emulator, steps=(1, 2), aliases={"production": 1})
        sdk = sdk_for(app)
        assert await _served(sdk, "agent:production") == seeded.artifact(1)
        # the jobs worker (or another replica) moves the alias in the shared database
        async with app_state(app).sessionmaker() as session:
            await set_alias(session, seeded.model, "production", seeded.checkpoints[2])
            await session.commit()
        assert await _served(sdk, "agent:production") == seeded.artifact(2)
        await sdk.close()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"alias": "production", "checkpoint": "step9"}, 404, "checkpoint_not_found"),
        ({"alias": "production", "checkpoint": "ftckpt-" + "0" * 24}, 404, "checkpoint_not_found"),
        ({"alias": "production", "checkpoint": "yesterday"}, 404, "checkpoint_not_found"),
        ({"alias": "step4", "checkpoint": 1}, 400, "invalid_alias"),
        ({"alias": "has space", "checkpoint": 1}, 400, "invalid_alias"),
        ({"alias": "production"}, 422, "invalid_value"),
    ],
)
async def test_bad_alias_requests_are_rejected_clearly(
    sdk: openai.AsyncOpenAI, seeded: SeededModel, body: dict[str, object], status: int, code: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.post("/models/agent/aliases", body=body, cast_to=object)
    assert caught.value.status_code == status
    assert caught.value.code == code


async def test_aliases_on_an_unknown_model_are_404(sdk: openai.AsyncOpenAI, seeded: SeededModel) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.post("/models/ghost/aliases", body={"alias": "production", "checkpoint": 1}, cast_to=object)
    assert caught.value.code == "model_not_found"


async def test_models_list_and_retrieve_through_the_sdk(sdk: openai.AsyncOpenAI, seeded: SeededModel) -> None:
    listed = {m.id: m for m in (await sdk.models.list()).data}
    assert BASE_MODEL in listed
    assert {"agent", "agent:production", seeded.artifact(1), seeded.artifact(3)} <= set(listed)
    assert listed["agent"].model_extra["served_model"] == seeded.artifact(3)  # type: ignore[index]

    # ids with slashes and colons
    for name, served in [
        (seeded.artifact(2), seeded.artifact(2)),
        ("agent:production", seeded.artifact(1)),
        (f"{ARTIFACT}:best", seeded.artifact(2)),
        (BASE_MODEL, BASE_MODEL),
    ]:
        model = await sdk.models.retrieve(name)
        assert model.id == name
        assert model.model_extra["served_model"] == served  # type: ignore[index]

    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("agent:step42")
