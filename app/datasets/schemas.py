"""Request and response bodies of `/v1/datasets`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from app.datasets import sources
from app.datasets.grouping import GroupRules
from app.datasets.models import Dataset, DatasetGroup, DatasetRejection, DatasetStatus
from app.db import to_unix
from app.errors import ErrorObject
from app.pagination import numbered_id

GROUP_PREFIX, REJECTION_PREFIX = "grp", "rej"

Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class DatasetCreate(BaseModel):
    """What to build. Selection (at most one kind): `window_ids`, a time range
    (`start_time`/`end_time` on the game's `"endTime"`, Unix seconds or ISO 8601), or
    `trajectory_ids` (e.g. a `training_batches` row's list). Nothing selected = every window."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        default_factory=sources.default_source,
        max_length=64,
        description="`pushed`: trajectories sent to POST /v1/trajectories; a game adapter's source "
        "(`babylon`: the game's Postgres, the default when it is installed)",
    )
    window_ids: list[Identifier] | None = Field(
        None, max_length=100_000, description="Babylon window ids `YYYY-MM-DDTHH:00`"
    )
    start_time: dt.datetime | None = Field(
        None, description="inclusive lower bound (Unix seconds or ISO 8601, UTC)"
    )
    end_time: dt.datetime | None = Field(None, description="exclusive upper bound")
    trajectory_ids: list[Identifier] | None = Field(None, max_length=1_000_000)
    scenario_ids: list[Identifier] | None = Field(None, max_length=100_000, description="pushed source only")
    include_used: bool = Field(False, description='also rows with "usedInTraining" = true')
    scorer: str | None = Field(
        None, max_length=64, description="see GET /v1/scorers; default: the source's (babylon: babylon_ruler)"
    )
    scorer_version: str | None = Field(None, max_length=32, description="default: the newest")
    min_agents: int = Field(3, ge=1, le=10_000, description="distinct agents a group needs")
    max_group_size: int = Field(8, ge=2, le=1_000)
    max_groups_per_window: int = Field(
        1, ge=1, le=1_000_000, description="split a large window into several groups"
    )
    drop_equal_rewards: bool = Field(
        True, description="drop groups whose rewards are all equal (no GRPO signal)"
    )
    persist_scores: Literal["used", "all", "none"] = Field(
        "used",
        description="store the scores of the trajectories in the dataset, of every row scored, or none",
    )
    write_scores: bool | None = Field(
        None,
        description='also write persisted scores to the game\'s "aiJudgeReward" (default: BABYLON__WRITE_SCORES)',
    )
    max_listed_rejections: int = Field(
        10_000, ge=0, le=1_000_000, description="rejected rows kept for listing"
    )

    def group_rules(self) -> GroupRules:
        return GroupRules(
            min_agents=self.min_agents,
            max_group_size=self.max_group_size,
            max_groups=self.max_groups_per_window,
            drop_equal_rewards=self.drop_equal_rewards,
        )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        sources.get_source(value)  # ValueError naming the available ones
        return value

    @field_validator("start_time", "end_time")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)

    @model_validator(mode="after")
    def _one_selection(self) -> DatasetCreate:
        kinds = [
            name
            for name, given in (
                ("window_ids", self.window_ids is not None),
                ("start_time/end_time", self.start_time is not None or self.end_time is not None),
                ("trajectory_ids", self.trajectory_ids is not None),
                ("scenario_ids", self.scenario_ids is not None),
            )
            if given
        ]
        if len(kinds) > 1:
            raise ValueError(f"choose one selection, not {' and '.join(kinds)}")
        if self.start_time and self.end_time and self.start_time >= self.end_time:
            raise ValueError("start_time must be before end_time")
        if self.min_agents > self.max_group_size:
            raise ValueError("min_agents cannot exceed max_group_size: every group would be dropped")
        for ids in (self.window_ids, self.trajectory_ids, self.scenario_ids):
            if ids is not None and not ids:
                raise ValueError("an id list must not be empty")
        source = sources.get_source(self.source)
        source.check_params(self)
        if self.scorer is None:
            self.scorer = source.default_scorer
        return self


class DatasetObject(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    status: DatasetStatus
    source: str = Field(description="pushed | file | a game adapter's source (babylon)")
    created_at: int
    finished_at: int | None
    params: dict[str, Any]
    stats: dict[str, Any]
    error: ErrorObject | None
    group_count: int
    trajectory_count: int
    trainable_turns: int = Field(
        description="assistant turns that are Choices with logprobs: what ART trains"
    )

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetObject:
        return cls(
            id=row.id,
            status=DatasetStatus(row.status),
            source=row.source,
            created_at=to_unix(row.created_at) or 0,
            finished_at=to_unix(row.finished_at),
            params=row.params or {},
            stats=row.stats or {},
            error=ErrorObject.model_validate(row.error) if row.error else None,
            group_count=row.group_count,
            trajectory_count=row.trajectory_count,
            trainable_turns=row.trainable_turns,
        )


class DatasetGroupObject(BaseModel):
    id: str = Field(description="grp-<position>")
    object: Literal["dataset.group"] = "dataset.group"
    dataset_id: str
    position: int
    scenario_id: str
    rewards: list[float]
    trainable_turns: int
    trajectories: list[dict[str, Any]] = Field(description='art.Trajectory(...).model_dump(mode="json") each')

    @classmethod
    def from_row(cls, row: DatasetGroup) -> DatasetGroupObject:
        return cls(
            id=numbered_id(GROUP_PREFIX, row.position),
            dataset_id=row.dataset_id,
            position=row.position,
            scenario_id=row.scenario_id,
            rewards=row.rewards,
            trainable_turns=row.trainable_turns,
            trajectories=row.trajectories,
        )


class DatasetRejectionObject(BaseModel):
    id: str
    object: Literal["dataset.rejection"] = "dataset.rejection"
    trajectory_id: str | None
    window_id: str | None
    agent_id: str | None
    reason: str
    detail: str | None

    @classmethod
    def from_row(cls, row: DatasetRejection) -> DatasetRejectionObject:
        return cls(
            id=numbered_id(REJECTION_PREFIX, row.id),
            trajectory_id=row.trajectory_id,
            window_id=row.window_id,
            agent_id=row.agent_id,
            reason=row.reason,
            detail=row.detail,
        )
