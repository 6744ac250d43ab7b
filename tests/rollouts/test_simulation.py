"""Reward-gated rollouts end to end through the real gateway and the official openai SDK: a game
whose reward depends on the checkpoint that served (the emulator's `skills`), a better candidate
promoted, a worse one rolled back, and routing sticky by trajectory under concurrency."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import sqlalchemy as sa

from app.gateway.models import CapturedCompletion
from app.jobs.models import WebhookDelivery
from app.rollouts.service import evaluate_running
from app.state import app_state
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import flush_writers
from tests.rollouts.conftest import WEBHOOK_URL, RolloutService
from tests.rollouts.simulation import SERVED_HEADER, play_round

ROUND = 40
MAX_ROUNDS = 8


async def _start(svc: RolloutService, candidate: str, **options: Any) -> dict[str, Any]:
    body = {"alias": "production", "candidate": candidate, "share": 0.5, "min_trajectories": 10, **options}
    response = await svc.http.post("/v1/models/agent/rollouts", json=body)
    assert response.status_code == 200, response.text
    rollout: dict[str, Any] = response.json()
    return rollout


async def _run_until_decided(svc: RolloutService, rollout_id: str, prefix: str) -> dict[str, Any]:
    """Play rounds of the game, evaluating after each as the worker does, until a decision."""
    settings = app_state(svc.app).settings
    for round_ in range(MAX_ROUNDS):
        await play_round(svc.sdk, svc.http, "agent:production", prefix, round_ * ROUND, ROUND)
        await flush_writers(svc.app)
        if await evaluate_running(app_state(svc.app).sessionmaker, settings):
            break
    response = await svc.http.get(f"/v1/models/agent/rollouts/{rollout_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def _served_now(svc: RolloutService) -> str:
    # the decision was applied outside the API (as by a worker): this process's resolver
    # would follow within its cache TTL; forget it to read the move now
    app_state(svc.app).resolver.invalidate()
    response = await svc.http.get("/v1/models/agent:production")
    served: str = response.json()["served_model"]
    return served


async def test_a_better_candidate_is_promoted_and_the_alias_moves(
    rollout_service: RolloutService, emulator: EmulatorHandle
) -> None:
    svc = rollout_service
    emulator.configure(skills={":step1": 0.5, ":step2": 0.95, ":step3": 0.05})
    rollout = await _start(svc, "step2")
    assert (rollout["state"], rollout["candidate"]["step"], rollout["baseline"]["step"]) == ("running", 2, 1)

    final = await _run_until_decided(svc, rollout["id"], "better")

    assert final["state"] == "promoted", final["reason"]
    assert final["difference"]["lower"] > 0
    assert final["candidate_arm"]["n"] >= 10
    assert final["baseline_arm"]["n"] >= 10
    assert final["candidate_arm"]["mean"] > final["baseline_arm"]["mean"]
    assert await _served_now(svc) == svc.agent.artifact(2)
    events = (await svc.http.get(f"/v1/models/agent/rollouts/{rollout['id']}/events")).json()["data"]
    assert [e["type"] for e in events] == ["rollout.started", "rollout.promoted"]
    async with app_state(svc.app).sessionmaker() as session:
        hooks = (await session.scalars(sa.select(WebhookDelivery))).all()
    assert [(h.event_type, h.url, h.rollout_id) for h in hooks] == [
        ("rollout.promoted", WEBHOOK_URL, rollout["id"])
    ]
    assert hooks[0].payload["data"]["state"] == "promoted"


async def test_a_worse_candidate_is_rolled_back_and_the_alias_stays(
    rollout_service: RolloutService, emulator: EmulatorHandle
) -> None:
    svc = rollout_service
    emulator.configure(skills={":step1": 0.5, ":step2": 0.95, ":step3": 0.05})
    rollout = await _start(svc, "step3")

    final = await _run_until_decided(svc, rollout["id"], "worse")

    assert final["state"] == "rolled_back", final["reason"]
    assert final["difference"]["upper"] < 0
    assert "worse" in final["reason"]
    assert await _served_now(svc) == svc.agent.artifact(1)
    # the split is gone: every call serves the baseline again
    played = await play_round(svc.sdk, svc.http, "agent:production", "after", 0, 10)
    assert {p.served for p in played} == {svc.agent.artifact(1)}


async def test_routing_is_sticky_by_trajectory_under_concurrency_and_respects_the_share(
    rollout_service: RolloutService,
) -> None:
    svc = rollout_service
    rollout = await _start(svc, "step2", share=0.3)
    shown = (await svc.http.get("/v1/models/agent:production")).json()
    assert (shown["rollout"], shown["served_model"]) == (rollout["id"], svc.agent.artifact(1))
    trajectories = [f"sticky-{i}" for i in range(150)]
    calls = [tid for tid in trajectories for _ in range(4)]

    async def call(tid: str) -> tuple[str, str]:
        raw = await svc.sdk.chat.completions.with_raw_response.create(
            model="agent:production",
            messages=[{"role": "user", "content": "move?"}],
            metadata={"trajectory_id": tid},
        )
        return tid, raw.headers[SERVED_HEADER]

    # interleaved: the four calls of one trajectory are in flight with everyone else's
    results = await asyncio.gather(*(call(tid) for tid in calls[::2] + calls[1::2]))
    served: dict[str, set[str]] = collections.defaultdict(set)
    for tid, model in results:
        served[tid].add(model)
    assert all(len(models) == 1 for models in served.values())
    on_candidate = sum(models == {svc.agent.artifact(2)} for models in served.values())
    assert {m for models in served.values() for m in models} == {svc.agent.artifact(1), svc.agent.artifact(2)}
    # 150 trajectories at share 0.3: the binomial's sd is 5.6; 4 sd either side
    assert 45 - 23 <= on_candidate <= 45 + 23
    # the captures record the checkpoint each call was served by
    await flush_writers(svc.app)
    async with app_state(svc.app).sessionmaker() as session:
        rows = (
            await session.execute(
                sa.select(CapturedCompletion.trajectory_id, CapturedCompletion.upstream_model)
            )
        ).all()
    assert len(rows) == len(calls)
    assert all({upstream} == served[tid] for tid, upstream in rows)


async def test_an_agent_without_a_trajectory_id_keeps_one_arm(rollout_service: RolloutService) -> None:
    svc = rollout_service
    await _start(svc, "step2", share=0.5)
    arms = []
    for agent in ("a1", "a2", "a3", "a4", "a5", "a6"):
        seen = set()
        for _ in range(3):
            raw = await svc.sdk.chat.completions.with_raw_response.create(
                model="agent:production",
                messages=[{"role": "user", "content": "move?"}],
                metadata={"agent_id": agent},
            )
            seen.add(raw.headers[SERVED_HEADER])
        assert len(seen) == 1
        arms.append(seen.pop())
    # other names of the line are not split: a checkpoint asked for by step is served as is
    raw = await svc.sdk.chat.completions.with_raw_response.create(
        model="agent:step1", messages=[{"role": "user", "content": "move?"}], metadata={"trajectory_id": "x"}
    )
    assert raw.headers[SERVED_HEADER] == svc.agent.artifact(1)
