"""`ROLLOUTS__*` settings (a leaf module: app/config.py gathers it into `Settings`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RolloutSettings(BaseModel):
    eval_interval_s: float = Field(
        30.0, gt=0, description="how often the worker evaluates running rollouts (and expires old ones)"
    )
    error_rate_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="roll back when the candidate's gateway error rate exceeds the baseline's by more",
    )
    min_error_requests: int = Field(
        20, ge=1, description="requests per arm before the error rates are compared"
    )
    game_score_interval_s: float = Field(
        300.0,
        gt=0,
        description="a rollout on a scorer metric with a game installed: how often its unscored "
        "trajectories are read from the game and scored (a dataset build)",
    )
