"""The real openpipe-art 0.5.18 ServerlessBackend (and its wire client) against the emulator over HTTP.

`import art` is slow (~2.5 s), so it happens inside the helpers, once per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.emulator import EmulatorHandle

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"


@pytest.fixture
async def sdk(emulator: EmulatorHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    yield client
    await client.close()


async def _group(sdk: openai.AsyncOpenAI, rewards: list[float], scenario: str = "window-7") -> Any:
    """A trajectory group whose assistant turns are openai Choices with token-id logprobs,
    produced by the emulator's own inference: exactly what the gateway would capture."""
    import art

    trajectories = []
    for i, reward in enumerate(rewards):
        messages = [
            {"role": "system", "content": "You trade."},
            {"role": "user", "content": f"{scenario} #{i}"},
        ]
        completion = await sdk.chat.completions.create(model=BASE_MODEL, messages=messages, logprobs=True)  # type: ignore[arg-type]
        trajectories.append(
            art.Trajectory(
                messages_and_choices=[*messages, completion.choices[0]],
                reward=reward,
                metadata={"scenario_id": scenario},
            )
        )
    return art.TrajectoryGroup(trajectories, metadata={"scenario_id": scenario})


async def _registered(
    emulator: EmulatorHandle, name: str = "agent", base_path: Path | None = None
) -> tuple[Any, Any]:
    import art
    from art.serverless.backend import ServerlessBackend

    backend = ServerlessBackend(api_key=emulator.api_key, base_url=emulator.base_url)
    extra = {"base_path": str(base_path)} if base_path else {}
    model = art.TrainableModel(name=name, project="babylon-rl", base_model=BASE_MODEL, **extra)
    await model.register(backend)
    # No W&B SDK calls at the end of train (art-serverless.md §7.2).
    object.__setattr__(model, "_get_wandb_run", lambda: None)
    return backend, model


async def test_art_register_train_returns_step_one_and_registers_the_checkpoint(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI, loopback_only: list[Any]
) -> None:
    backend, model = await _registered(emulator)
    assert model.entity == emulator.entity
    assert model.inference_model_name == f"wandb-artifact:///{emulator.entity}/babylon-rl/agent"
    assert model.inference_base_url == emulator.base_url + "/"
    assert await model.get_step() == 0

    result = await backend.train(model, [await _group(sdk, [1.0, 0.0, 0.5])], learning_rate=1e-5)

    assert result.step == 1
    assert result.artifact_name == f"{emulator.entity}/babylon-rl/agent:step1"
    assert result.metrics["loss/learning_rate"] == pytest.approx(1e-5)
    assert result.metrics["data/step_trainer_tokens"] > 0  # the Choices' logprob tokens were counted
    assert await model.get_step() == 1
    [checkpoint] = emulator.checkpoints("agent")
    assert checkpoint["step"] == 1
    assert checkpoint["metrics"]["reward"] == pytest.approx(0.5)
    assert emulator.training_posts("agent") == 1
    [job] = emulator.jobs("agent")
    assert job["status"] == "succeeded"
    assert job["experimental_config"]["learning_rate"] == pytest.approx(1e-5)
    assert len(job["trajectory_groups"][0]["trajectories"]) == 3
    await backend.close()
    assert loopback_only == []  # ART talked to nothing but the emulator


async def test_art_second_train_continues_from_latest_step_and_register_is_idempotent(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    emulator.add_checkpoint("agent", step=4, metrics={"reward": 0.1})
    backend, model = await _registered(emulator)
    _, again = await _registered(emulator)
    assert again.id == model.id
    assert len(emulator.models()) == 1

    result = await backend.train(model, [await _group(sdk, [0.2, 0.9])], learning_rate=2e-5)

    assert result.step == 5
    assert [c["step"] for c in emulator.checkpoints("agent")] == [4, 5]
    await backend.close()


async def test_art_train_follows_events_revealed_over_time(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    # Events at 0, 0.6, 1.2, 1.8 s: ART's 1 s polls see them across several pages and `after` cursors.
    emulator.set_pace(0.6)
    backend, model = await _registered(emulator)

    result = await backend.train(model, [await _group(sdk, [1.0, 0.0])])

    assert result.step == 1
    assert emulator.requests("events") >= 2
    assert result.metrics["data/step_num_gradient_steps"] == 2
    await backend.close()


async def test_art_train_raises_when_the_job_emits_training_failed(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    emulator.inject("training_jobs.create", "training_failed", error_message="CUDA OOM", after_steps=1)
    backend, model = await _registered(emulator)

    with pytest.raises(RuntimeError, match="Training job failed: CUDA OOM"):
        await backend.train(model, [await _group(sdk, [1.0, 0.0])])

    assert emulator.checkpoints("agent") == []
    [job] = emulator.jobs("agent")
    assert job["status"] == "failed"
    await backend.close()


async def test_art_post_accepted_but_answered_5xx_leaves_a_job_the_client_never_saw(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    emulator.inject("training_jobs.create", "accept_then_status", status=502)
    backend, model = await _registered(emulator)

    with pytest.raises(openai.InternalServerError) as caught:
        await backend.train(model, [await _group(sdk, [1.0, 0.0])])

    assert caught.value.status_code == 502
    # POSTs are never retried by ART: one attempt, and the server did create the job and its checkpoint.
    assert emulator.requests("training_jobs.create") == 1
    assert emulator.training_posts("agent") == 1
    assert await model.get_step() == 1
    await backend.close()


async def test_art_post_accepted_then_connection_dropped_is_a_connection_error(
    emulator: EmulatorHandle, sdk: openai.AsyncOpenAI
) -> None:
    emulator.inject("training_jobs.create", "accept_then_drop")
    backend, model = await _registered(emulator)

    with pytest.raises(openai.APIConnectionError):
        await backend.train(model, [await _group(sdk, [1.0, 0.0])])

    assert emulator.training_posts("agent") == 1
    assert [c["step"] for c in emulator.checkpoints("agent")] == [1]
    await backend.close()


async def test_art_stalled_job_shows_training_started_and_nothing_else(emulator: EmulatorHandle) -> None:
    emulator.inject("training_jobs.create", "stall")
    backend, model = await _registered(emulator)
    client = backend._client
    group = {"trajectories": [{"messages_and_choices": [], "reward": 1.0}]}

    job = await client.training_jobs.create(model_id=model.id, trajectory_groups=[_Dumpable(group)])
    events = [e async for e in client.training_jobs.events.list(training_job_id=job.id)]

    assert [e.type for e in events] == ["training_started"]
    assert emulator.jobs("agent")[0]["status"] == "stalled"
    assert await model.get_step() == 0
    await backend.close()


class _Dumpable:
    """A pre-serialised group for the raw ART client (it calls `model_dump(mode="json")`)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self.data


async def test_art_client_gets_422_details_for_a_choice_without_finish_reason(
    emulator: EmulatorHandle,
) -> None:
    backend, model = await _registered(emulator)
    bad_choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
    group = {"trajectories": [{"messages_and_choices": [bad_choice], "reward": 1.0}]}

    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await backend._client.training_jobs.create(model_id=model.id, trajectory_groups=[_Dumpable(group)])

    [error] = caught.value.body["detail"]  # type: ignore[index]
    assert error["loc"][-1] == "finish_reason"
    assert error["type"] == "missing"
    assert emulator.training_posts("agent") == 0
    await backend.close()


async def test_art_checkpoint_paging_and_delete_checkpoints_keep_only_the_latest(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    for step in range(1, 26):
        emulator.add_checkpoint("agent", step=step, metrics={"reward": step / 100})
    backend, model = await _registered(emulator, base_path=tmp_path)

    listed = [c.step async for c in backend._client.models.checkpoints.list(model_id=model.id, limit=7)]
    assert listed == list(range(1, 26))  # 4 pages of ≤7, ascending by default
    newest_first = backend._client.models.checkpoints.list(model_id=model.id, order="desc", limit=10)
    assert [c.step async for c in newest_first][:3] == [25, 24, 23]

    before = emulator.requests("checkpoints.list")
    # No local history.jsonl, so ART keeps only the latest step; its listing pages through 20 + 5.
    await model.delete_checkpoints()

    assert [c["step"] for c in emulator.checkpoints("agent")] == [25]
    assert emulator.requests("checkpoints.list") - before == 3  # get_step + two pages
    assert emulator.requests("checkpoints.delete") == 1
    await backend.close()


async def test_art_get_requests_retry_through_503_and_429(emulator: EmulatorHandle) -> None:
    backend, model = await _registered(emulator)
    emulator.add_checkpoint("agent", step=2)
    emulator.inject("checkpoints.list", "status", status=503)
    emulator.inject("checkpoints.list", "status", status=429, retry_after=0.1)

    assert await model.get_step() == 2

    assert emulator.requests("checkpoints.list") == 3
    assert emulator.counters()["faults_fired"] == {"checkpoints.list": 2}
    await backend.close()


async def test_art_register_sees_dropped_connection_as_api_connection_error(emulator: EmulatorHandle) -> None:
    emulator.inject("models.create", "drop")

    with pytest.raises(openai.APIConnectionError):
        await _registered(emulator)
    assert emulator.models() == []


async def test_art_wrong_key_is_rejected_with_authentication_error(emulator: EmulatorHandle) -> None:
    import art
    from art.serverless.backend import ServerlessBackend

    backend = ServerlessBackend(api_key="not-the-key", base_url=emulator.base_url)
    model = art.TrainableModel(name="agent", project="babylon-rl", base_model=BASE_MODEL)

    with pytest.raises(openai.AuthenticationError) as caught:
        await model.register(backend)
    assert caught.value.body == {"detail": "Invalid API key"}
    await backend.close()


async def test_art_concurrent_registers_create_one_model(emulator: EmulatorHandle) -> None:
    results = await asyncio.gather(*[_registered(emulator) for _ in range(8)])

    assert len({model.id for _, model in results}) == 1
    assert len(emulator.models()) == 1
    for backend, _ in results:
        await backend.close()
