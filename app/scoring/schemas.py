"""Bodies of `/v1/scores` and `/v1/scorers`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.db import to_unix
from app.pagination import numbered_id
from app.scoring.models import TrajectoryScore
from app.scoring.registry import Scorer

SCORE_PREFIX = "score"


class ScoreObject(BaseModel):
    id: str = Field(description="score-<n>, the cursor for `after`")
    object: Literal["trajectory.score"] = "trajectory.score"
    trajectory_id: str
    source: str
    window_id: str | None = Field(description="the window (or scenario) the trajectory was scored in")
    agent_id: str | None
    scorer: str
    scorer_version: str
    score: float
    components: dict[str, Any]
    reasoning: str | None
    dataset_id: str | None = Field(description="the dataset build that computed it last")
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: TrajectoryScore) -> ScoreObject:
        return cls(
            id=numbered_id(SCORE_PREFIX, row.id),
            trajectory_id=row.trajectory_id,
            source=row.source,
            window_id=row.window_id,
            agent_id=row.agent_id,
            scorer=row.scorer,
            scorer_version=row.scorer_version,
            score=row.score,
            components=row.components,
            reasoning=row.reasoning,
            dataset_id=row.dataset_id,
            created_at=to_unix(row.created_at) or 0,
            updated_at=to_unix(row.updated_at) or 0,
        )


class ScorerObject(BaseModel):
    id: str = Field(description="name@version")
    object: Literal["scorer"] = "scorer"
    name: str
    version: str
    description: str
    per_agent: bool = Field(description="one score per agent and window, given to all its trajectories")
    uses_market_outcomes: bool

    @classmethod
    def from_scorer(cls, scorer: Scorer) -> ScorerObject:
        return cls(
            id=f"{scorer.name}@{scorer.version}",
            name=scorer.name,
            version=scorer.version,
            description=scorer.description,
            per_agent=scorer.per_agent,
            uses_market_outcomes=scorer.needs_market_outcomes,
        )
