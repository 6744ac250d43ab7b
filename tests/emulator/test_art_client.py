"""The real openpipe-art 0.5.18 ServerlessBackend against the emulator over HTTP."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fixtures.emulator import EmulatorHandle

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"


async def _choice(sdk: openai.AsyncOpenAI, prompt: str) -> Any:
    """A trainable assistant turn: an openai Choice with token-id logprobs, from the emulator."""
    completion = await sdk.chat.completions.create(
        model=BASE_MODEL, messages=[{"role": "user", "content": prompt}], logprobs=True
    )
    return completion.choices[0]


async def _group(sdk: openai.AsyncOpenAI, rewards: list[float]) -> Any:
    import art

    trajectories = []
    for i, reward in enumerate(rewards):
        prompt = f"window 7 situation {i}"
        trajectories.append(
            art.Trajectory(
                messages_and_choices=[
                    {"role": "system", "content": "You trade."},
                    {"role": "user", "content": prompt},
                    await _choice(sdk, prompt),
                ],
                reward=reward,
                metadata={"scenario_id": "window-7"},
            )
        )
    return art.TrajectoryGroup(trajectories, metadata={"scenario_id": "window-7"})


@pytest.fixture
async def sdk(emulator: EmulatorHandle) -> Any:
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    yield client
    await client.close()


async def _registered(emulator: EmulatorHandle, name: str = "agent") -> tuple[Any, Any]:
    import art
    from art.serverless.backend import ServerlessBackend

    backend = ServerlessBackend(api_key=emulator.api_key, base_url=emulator.base_url)
    model = art.TrainableModel(name=name, project="babylon-rl", base_model=BASE_MODEL)
    await model.register(backend)
    object.__setattr__(model, "_get_wandb_run", lambda: None)
    return backend, model


async def test_art_register_train_returns_step_one_and_checkpoint_exists(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    backend, model = await _registered(emulator)
    assert model.entity == emulator.entity
    assert model.id is not None
    assert await model.get_step() == 0

    result = await backend.train(model, [await _group(sdk, [1.0, 0.0, 0.5])], learning_rate=1e-5)

    assert result.step == 1
    assert result.artifact_name == f"{emulator.entity}/babylon-rl/agent:step1"
    assert result.metrics["loss/learning_rate"] == pytest.approx(1e-5)
    assert await model.get_step() == 1
    [checkpoint] = emulator.checkpoints("agent")
    assert checkpoint["step"] == 1
    assert checkpoint["metrics"]["reward"] == pytest.approx(0.5)
    assert emulator.training_posts("agent") == 1
    [job] = emulator.jobs("agent")
    assert job["experimental_config"]["learning_rate"] == pytest.approx(1e-5)
    await backend.close()
