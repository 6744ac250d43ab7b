"""How trainable data is born: chat completions with metadata.trajectory_id, made through the
gateway, become the trainable turns of a dataset built by the pipeline (app/datasets)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
from fastapi import FastAPI

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import flush_writers, seed_model
from tests.fixtures.service import running_worker

BOARD = [
    {"role": "system", "content": "You play scenario s1."},
    {"role": "user", "content": "Board s1: move?"},
]


def pushed(tid: str, agent: str, reward: float) -> dict[str, Any]:
    # what a game pushes: its own record of the episode, no logprobs (context only)
    return {
        "messages_and_choices": [*BOARD, {"role": "assistant", "content": "move left"}],
        "reward": reward,
        "metadata": {"scenario_id": "s1", "agent_id": agent, "trajectory_id": tid},
    }


async def test_completions_with_a_trajectory_id_become_trainable_turns_in_a_dataset(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, emulator: EmulatorHandle
) -> None:
    await seed_model(gw_app, emulator, "babylon-agent", steps=(1,))
    agents = {"traj-a": ("agent-a", 0.1), "traj-b": ("agent-b", 0.9), "traj-c": ("agent-c", 0.5)}
    answers: dict[str, str] = {}
    for tid, (agent, _) in agents.items():
        metadata = {"trajectory_id": tid, "agent_id": agent, "step": "0"}
        if tid == "traj-c":  # one agent streams
            stream = await sdk.chat.completions.create(
                model="babylon-agent:latest", messages=BOARD, metadata=metadata, stream=True
            )
            answers[tid] = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        else:
            completion = await sdk.chat.completions.create(
                model="babylon-agent:latest", messages=BOARD, metadata=metadata
            )
            answers[tid] = completion.choices[0].message.content or ""
    await flush_writers(gw_app)

    batch = [pushed(tid, agent, reward) for tid, (agent, reward) in agents.items()]
    accepted = await http.post("/v1/trajectories", json={"trajectories": batch})
    assert accepted.json()["accepted"] == 3, accepted.text
    async with running_worker(gw_app):  # builds the dataset
        built = await http.post("/v1/datasets", params={"wait_s": 120}, json={"source": "pushed"})
    assert built.status_code == 200, built.text
    dataset = built.json()
    assert dataset["status"] == "ready", dataset
    assert dataset["trainable_turns"] == 3

    groups = (await http.get(f"/v1/datasets/{dataset['id']}/groups")).json()["data"]
    [group] = groups
    by_id = {t["metadata"]["trajectory_id"]: t for t in group["trajectories"]}
    assert set(by_id) == set(agents)
    for tid, trajectory in by_id.items():
        turn = trajectory["messages_and_choices"][-1]
        # the sampled Choice the caller got, with the logprobs it never saw
        assert turn["message"]["content"] == answers[tid]
        assert turn["finish_reason"] == "stop"
        assert turn["logprobs"]["content"][0]["token"].startswith("token_id:")
        assert trajectory["messages_and_choices"][: len(BOARD)] == BOARD
