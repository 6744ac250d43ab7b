"""Test data for jobs: datasets of GRPO groups inserted directly (the shape the pipeline stores).

A trainable turn is an assistant entry that is a `Choice` dict with non-empty logprobs, as the
gateway captures it; `trainable=False` stores plain assistant messages instead (context only).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup
from app.db import utcnow
from app.ids import new_id


def choice(content: str, token_id: int = 33907) -> dict[str, Any]:
    return {
        "finish_reason": "stop",
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "logprobs": {
            "content": [
                {
                    "token": f"token_id:{token_id}",
                    "bytes": list(content[:3].encode()),
                    "logprob": -0.41,
                    "top_logprobs": [],
                }
            ],
            "refusal": None,
        },
    }


def trajectory(
    reward: float, scenario_id: str, *, trainable: bool = True, agent: str = "a1"
) -> dict[str, Any]:
    answer = f"BUY YES on market {int(reward * 100)}"
    assistant = choice(answer) if trainable else {"role": "assistant", "content": answer}
    return {
        "messages_and_choices": [
            {"role": "system", "content": "You trade on Babylon's prediction markets."},
            {"role": "user", "content": f"Window {scenario_id}: markets are open. Decide."},
            assistant,
        ],
        "additional_histories": [],
        "reward": reward,
        "metrics": {},
        "metadata": {"scenario_id": scenario_id, "agent_id": agent},
        "logs": [],
    }


async def make_dataset(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    groups: int = 3,
    per_group: int = 3,
    trainable: bool = True,
    status: str = "ready",
) -> Dataset:
    """A dataset of `groups` windows × `per_group` trajectories with distinct rewards."""
    dataset_id = new_id("ds")
    rows = []
    for g in range(groups):
        scenario = f"2025-11-14T{g:02d}:00"
        rewards = [round(0.1 + 0.8 * (i + g) / (per_group + groups), 4) for i in range(per_group)]
        trajectories = [
            trajectory(r, scenario, trainable=trainable, agent=f"a{i}") for i, r in enumerate(rewards)
        ]
        rows.append(
            DatasetGroup(
                dataset_id=dataset_id,
                position=g,
                scenario_id=scenario,
                rewards=rewards,
                trajectories=trajectories,
                trainable_turns=per_group if trainable else 0,
            )
        )
    dataset = Dataset(
        id=dataset_id,
        status=status,
        source="pushed",
        params={},
        stats={},
        error={"code": "build_failed", "message": "the game DB was unreachable"}
        if status == "failed"
        else None,
        group_count=groups if status == "ready" else 0,
        trajectory_count=groups * per_group if status == "ready" else 0,
        trainable_turns=(groups * per_group if trainable else 0) if status == "ready" else 0,
        finished_at=utcnow() if status in ("ready", "failed") else None,
    )
    async with sessionmaker() as session:
        session.add(dataset)
        await session.flush()
        if status == "ready":
            session.add_all(rows)
        await session.commit()
    return dataset
