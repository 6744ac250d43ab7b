"""Bodies of `/v1/trajectories`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.db import to_unix
from app.trajectories.models import PushedTrajectory


class TrajectoryBatch(BaseModel):
    """ART-shaped trajectories: `messages_and_choices`, `reward`, `metadata.scenario_id` (the
    GRPO group), optional `metadata.agent_id` and `metadata.trajectory_id` (the id chat
    requests carried as `metadata.trajectory_id`, to join captured completions)."""

    trajectories: list[Any] = Field(min_length=1, max_length=10_000)


class AcceptedItem(BaseModel):
    index: int
    id: str
    trajectory_id: str
    scenario_id: str
    trainable_turns: int


class ItemError(BaseModel):
    index: int
    param: str
    code: str
    message: str


class TrajectoryBatchResult(BaseModel):
    object: Literal["trajectory.batch"] = "trajectory.batch"
    accepted: int
    rejected: int
    data: list[AcceptedItem]
    errors: list[ItemError] = Field(description="one entry per rejected item: its index and what is wrong")


class TrajectoryObject(BaseModel):
    id: str
    object: Literal["trajectory"] = "trajectory"
    trajectory_id: str
    scenario_id: str
    agent_id: str | None
    reward: float
    trainable_turns: int
    created_at: int
    trajectory: dict[str, Any]

    @classmethod
    def from_row(cls, row: PushedTrajectory) -> TrajectoryObject:
        return cls(
            id=row.id,
            trajectory_id=row.trajectory_id,
            scenario_id=row.scenario_id,
            agent_id=row.agent_id,
            reward=row.reward,
            trainable_turns=row.trainable_turns,
            created_at=to_unix(row.created_at) or 0,
            trajectory=row.trajectory,
        )
