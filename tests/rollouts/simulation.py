"""A simulated game for the rollout tests and the demo's shape: each trajectory asks the gateway
for a move (the official openai SDK, `metadata.trajectory_id`), wins when the answer starts with
"win" (the emulator's per-checkpoint `skills` decide how often), and pushes its reward."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import openai

SERVED_HEADER = "x-gateway-served-model"


@dataclass(frozen=True)
class Played:
    trajectory_id: str
    served: str
    reward: float


async def play(sdk: openai.AsyncOpenAI, model: str, trajectory_id: str) -> Played:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": f"Trajectory {trajectory_id}: the market is open. Your move?"}],
        metadata={"trajectory_id": trajectory_id, "agent_id": f"agent-{trajectory_id}"},
    )
    completion = raw.parse()
    content = completion.choices[0].message.content or ""
    return Played(trajectory_id, raw.headers[SERVED_HEADER], 1.0 if content.startswith("win") else 0.0)


async def push(http: httpx.AsyncClient, played: list[Played]) -> None:
    batch = [
        {
            "messages_and_choices": [
                {"role": "user", "content": "the market is open"},
                {"role": "assistant", "content": "a move"},
            ],
            "reward": p.reward,
            "metadata": {"scenario_id": "rollout-sim", "trajectory_id": p.trajectory_id},
        }
        for p in played
    ]
    response = await http.post("/v1/trajectories", json={"trajectories": batch})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(played)


async def play_round(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, model: str, prefix: str, start: int, count: int
) -> list[Played]:
    played = list(
        await asyncio.gather(*(play(sdk, model, f"{prefix}-{i}") for i in range(start, start + count)))
    )
    await push(http, played)
    return played
