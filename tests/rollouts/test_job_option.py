"""Jobs opt in with `method.reinforcement.rollout`: a succeeded job rolls its final checkpoint
out on the alias instead of it being handed over at once; the worker evaluates (and expires)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.jobs.handoff import HandoffResult, register_handoff, unregister_handoff
from app.jobs.models import FineTuningJob
from app.registry.models import Rollout, RolloutState
from app.rollouts.service import finish_rollout
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.gateway import seed_model
from tests.fixtures.service import StartService, wait_for_job, wait_until
from tests.jobs.test_webhooks import SECRET, Receiver, webhook_settings
from tests.jobs.test_webhooks import receiver as receiver  # the fixture, shared

BASE = "OpenPipe/Qwen3-14B-Instruct"


class WantsEveryJob:
    """A game that takes every finished job (records what it was handed)."""

    name = "rollout-test-game"

    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, str | None]] = []

    async def wants(self, session: AsyncSession, job: FineTuningJob) -> bool:
        return True

    async def job_started(self, settings: Settings, job: FineTuningJob) -> None:
        return None

    async def deliver(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], job: FineTuningJob
    ) -> HandoffResult:
        self.delivered.append((job.id, job.status, job.fine_tuned_model))
        return HandoffResult(True, "handed to the test game")

    async def poll(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        return 0


@pytest.fixture
def game() -> Iterator[WantsEveryJob]:
    handoff = WantsEveryJob()
    register_handoff(handoff)
    yield handoff
    unregister_handoff(handoff.name)


def _method(rollout: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"rollout": rollout}}


@pytest.mark.parametrize(
    ("rollout", "param"),
    [
        ({"alias": "latest"}, "method.reinforcement.rollout.alias"),
        ({"alias": "production", "candidate": "step1"}, "method.reinforcement.rollout.candidate"),
        ({"alias": "production", "share": 2}, "method.reinforcement.rollout.share"),
        ({"alias": "production", "speed": 2}, "method.reinforcement.rollout.speed"),
    ],
)
async def test_an_invalid_rollout_option_is_400_naming_the_field(
    client: httpx.AsyncClient, rollout: Any, param: str
) -> None:
    response = await client.post(
        "/v1/fine_tuning/jobs", json={"model": BASE, "training_file": "file-x", "method": _method(rollout)}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_a_succeeded_job_rolls_out_its_checkpoint_and_the_game_gets_it_only_once_promoted(
    start_service: StartService, emulator: EmulatorHandle, game: WantsEveryJob, receiver: Receiver
) -> None:
    async with start_service(rollouts={"eval_interval_s": 0.1}, **webhook_settings(receiver)) as svc:
        # the line exists with `production` at step 1; the job continues it
        line = await seed_model(svc.app, emulator, "agent-r", steps=(1,), aliases={"production": 1})

        option = {"alias": "production", "share": 0.5, "min_trajectories": 5, "max_duration": 1}
        second = await svc.sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=(await make_dataset(svc.sessionmaker, groups=1)).id,
            suffix="agent-r",
            method=_method(option),  # type: ignore[arg-type]  # the service's extension of method
        )
        done = await wait_for_job(svc.sdk, second.id)
        assert done.status == "succeeded", done.error

        rollouts = (await svc.http.get("/v1/models/agent-r/rollouts")).json()["data"]
        assert len(rollouts) == 1
        rollout = rollouts[0]
        assert rollout["job_id"] == second.id
        assert rollout["candidate"]["served_model"] == done.fine_tuned_model
        assert rollout["baseline"]["served_model"] == line.artifact(1)
        assert (rollout["alias"], rollout["share"], rollout["min_trajectories"]) == ("production", 0.5, 5)
        events = [e.message async for e in await svc.sdk.fine_tuning.jobs.list_events(second.id, limit=50)]
        assert any(m.startswith(f"Rollout {rollout['id']} started") for m in events)

        async def expired() -> bool:
            body = (await svc.http.get(f"/v1/models/agent-r/rollouts/{rollout['id']}")).json()
            return bool(body["state"] == "expired")

        await wait_until(expired, timeout_s=20, what="the worker expires the rollout")
        production = (await svc.http.get("/v1/models/agent-r:production")).json()
        assert production["served_model"] == line.artifact(1)
        # the game was not handed the job: its hand-off waits for a promotion
        assert game.delivered == []

        # a promotion of the job's checkpoint hands it to the game (Babylon: trained_models)
        again = await svc.http.post(
            "/v1/models/agent-r/rollouts", json={"alias": "production", "candidate": done.fine_tuned_model}
        )
        async with svc.sessionmaker() as session:
            row = await session.get(Rollout, again.json()["id"])
            assert row is not None
            assert await finish_rollout(session, svc.settings, row, RolloutState.PROMOTED, "the test says so")
            await session.commit()
        await wait_until(lambda: game.delivered, timeout_s=20, what="the hand-off after the promotion")
        assert game.delivered == [(second.id, "succeeded", done.fine_tuned_model)]

        # each decision was a signed webhook (Standard Webhooks, as the jobs' are)
        def rollout_events() -> list[dict[str, Any]]:
            return [
                json.loads(body)
                for _, body, _ in receiver.on("/global")
                if json.loads(body)["type"].startswith("rollout.")
            ]

        await wait_until(lambda: len(rollout_events()) == 2, timeout_s=20, what="the rollout webhooks")
        assert [(e["type"], e["data"]["id"]) for e in rollout_events()] == [
            ("rollout.expired", rollout["id"]),
            ("rollout.promoted", again.json()["id"]),
        ]
        client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
        for headers, body, _ in receiver.on("/global"):
            client.webhooks.verify_signature(body.decode(), headers)
