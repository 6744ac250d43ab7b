"""One rule for `best`: the gateway resolves `<name>:best` without a stored alias row by the
same rule the training runner uses to move the alias (`TRAINING__BEST_METRIC_MODE`)."""

from __future__ import annotations

from typing import Literal

import openai
import pytest

from app.registry.models import ModelAlias
from app.registry.policy import move_aliases
from app.state import app_state
from tests.conftest import make_settings
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import FAST_INFERENCE, running_app, sdk_for, seed_model

MESSAGES = [{"role": "user", "content": "hi"}]
# step 2 has the highest reward_mean, step 1 the lowest; step 3 is the latest
REWARDS = {1: {"reward_mean": 0.1}, 2: {"reward_mean": 0.9}, 3: {"reward_mean": 0.5}}


@pytest.mark.parametrize(("mode", "best_step"), [("max", 2), ("min", 1)])
async def test_best_without_an_alias_row_follows_the_configured_mode(
    clean_db: str, emulator: EmulatorHandle, mode: Literal["max", "min"], best_step: int
) -> None:
    settings = make_settings(
        clean_db,
        wandb_base_url=emulator.base_url,
        wandb_api_key=emulator.api_key,
        inference=FAST_INFERENCE,
        training={"best_metric_mode": mode},
    )
    async with running_app(settings) as app:
        seeded = await seed_model(app, emulator, steps=(1, 2, 3), metrics=REWARDS)
        async with app_state(app).sessionmaker() as session:
            assert await session.get(ModelAlias, 1) is None  # no stored alias of any name
        sdk = sdk_for(app)
        completion = await sdk.chat.completions.create(model="agent:best", messages=MESSAGES, max_tokens=2)
        retrieved = await sdk.models.retrieve("agent:best")
        await sdk.close()

        # the alias the runner stores after a step points at the same checkpoint
        async with app_state(app).sessionmaker() as session:
            moved = await move_aliases(session, settings, seeded.model)
    assert completion.model == seeded.artifact(best_step)  # what the upstream was asked for
    assert retrieved.model_extra["served_model"] == seeded.artifact(best_step)  # type: ignore[index]
    assert moved["best"].step == best_step


@pytest.mark.parametrize("mode", ["max", "min"])
async def test_best_without_any_scored_checkpoint_is_the_latest(
    clean_db: str, emulator: EmulatorHandle, mode: Literal["max", "min"]
) -> None:
    settings = make_settings(
        clean_db,
        wandb_base_url=emulator.base_url,
        wandb_api_key=emulator.api_key,
        inference=FAST_INFERENCE,
        training={"best_metric_mode": mode},
    )
    async with running_app(settings) as app:
        seeded = await seed_model(app, emulator, steps=(1, 2))
        sdk = sdk_for(app)
        completion = await sdk.chat.completions.create(model="agent:best", messages=MESSAGES, max_tokens=2)
        await sdk.close()
    assert completion.model == seeded.artifact(2)


async def test_an_unknown_model_line_has_no_best(gw_app: object, sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model="ghost:best", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
