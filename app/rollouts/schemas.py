"""Request and response shapes of the rollout routes, built from rows by `from_row`."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, Field

from app.db import to_unix
from app.pagination import ListPage
from app.registry.models import Checkpoint, Rollout, RolloutEvent, ServedModel
from app.registry.rollouts import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_METRIC,
    DEFAULT_MIN_TRAJECTORIES,
    DEFAULT_SHARE,
)

ROLLOUT_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "RolloutRequest",
    "required": ["alias", "candidate"],
    "additionalProperties": False,
    "properties": {
        "alias": {"type": "string", "description": "the alias to roll out on", "examples": ["production"]},
        "candidate": {
            "oneOf": [{"type": "string"}, {"type": "integer"}],
            "description": "a checkpoint id (ftckpt-…), a step (12, 'step12'), an artifact name or an alias",
        },
        "share": {
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "default": DEFAULT_SHARE,
            "description": "the candidate's part of the alias's traffic, sticky by trajectory",
        },
        "metric": {
            "type": "string",
            "default": DEFAULT_METRIC,
            "description": "'reward' (pushed trajectories' reward) or a scorer name (persisted scores)",
        },
        "min_trajectories": {
            "type": "integer",
            "minimum": 5,
            "default": DEFAULT_MIN_TRAJECTORIES,
            "description": "trajectories per arm before any decision",
        },
        "confidence": {
            "type": "number",
            "minimum": 0.5,
            "exclusiveMaximum": 1,
            "default": DEFAULT_CONFIDENCE,
            "description": "of the confidence sequence for the difference (1 - false-promotion bound)",
        },
        "max_duration": {
            "type": "integer",
            "minimum": 1,
            "default": DEFAULT_MAX_DURATION_S,
            "description": "seconds before an undecided rollout expires",
        },
    },
}


class CheckpointRef(BaseModel):
    checkpoint: str
    step: int
    served_model: str

    @classmethod
    def from_row(cls, ckpt: Checkpoint) -> Self:
        return cls(checkpoint=ckpt.id, step=ckpt.step, served_model=ckpt.artifact_name)


class ArmObject(BaseModel):
    n: int = Field(0, description="trajectories with a reward served only by this arm")
    mean: float | None = None
    std: float | None = None
    requests: int = Field(0, description="gateway requests served through the alias")
    errors: int = Field(0, description="of which failed (5xx)")


class DifferenceObject(BaseModel):
    estimate: float = Field(..., description="candidate mean - baseline mean")
    lower: float
    upper: float
    confidence: float


class RolloutObject(BaseModel):
    object: Literal["model.rollout"] = "model.rollout"
    id: str
    model: str
    alias: str
    candidate: CheckpointRef
    baseline: CheckpointRef
    share: float
    metric: str
    min_trajectories: int
    confidence: float
    max_duration: int
    state: Literal["running", "promoted", "rolled_back", "cancelled", "expired"]
    reason: str | None
    candidate_arm: ArmObject
    baseline_arm: ArmObject
    difference: DifferenceObject | None
    mixed_trajectories: int = Field(
        0, description="trajectories served by both checkpoints (an agent changing hour window): left out"
    )
    job_id: str | None
    created_at: int
    expires_at: int
    evaluated_at: int | None
    finished_at: int | None

    @classmethod
    def from_row(cls, row: Rollout, model: ServedModel, candidate: Checkpoint, baseline: Checkpoint) -> Self:
        stats = row.stats or {}
        difference = stats.get("difference")
        return cls(
            id=row.id,
            model=model.name,
            alias=row.alias,
            candidate=CheckpointRef.from_row(candidate),
            baseline=CheckpointRef.from_row(baseline),
            share=row.share,
            metric=row.metric,
            min_trajectories=row.min_trajectories,
            confidence=row.confidence,
            max_duration=row.max_duration_s,
            state=row.state,
            reason=row.reason,
            candidate_arm=ArmObject(**stats.get("candidate", {})),
            baseline_arm=ArmObject(**stats.get("baseline", {})),
            difference=DifferenceObject(**difference) if difference else None,
            mixed_trajectories=int(stats.get("mixed_trajectories", 0)),
            job_id=row.job_id,
            created_at=to_unix(row.created_at) or 0,
            expires_at=to_unix(row.expires_at) or 0,
            evaluated_at=to_unix(row.evaluated_at),
            finished_at=to_unix(row.finished_at),
        )


class RolloutEventObject(BaseModel):
    object: Literal["model.rollout.event"] = "model.rollout.event"
    id: str
    rollout_id: str
    created_at: int
    type: str = Field(..., examples=["rollout.promoted"])
    message: str
    data: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: RolloutEvent) -> Self:
        return cls(
            id=row.id,
            rollout_id=row.rollout_id,
            created_at=to_unix(row.created_at) or 0,
            type=row.type,
            message=row.message,
            data=row.data,
        )


RolloutList = ListPage[RolloutObject]
RolloutEventList = ListPage[RolloutEventObject]
