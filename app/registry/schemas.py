"""Request and response shapes of the model routes, each built from registry rows by a
`from_…` constructor (the one way from rows to responses)."""

from __future__ import annotations

import datetime as dt
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from app.db import to_unix
from app.registry.models import Checkpoint, ModelAlias, ServedModel
from app.registry.resolution import Resolution

BASE_MODEL_OWNER = "wandb"
TRAINED_MODEL_OWNER = "training-control"


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(..., min_length=1, max_length=64, examples=["production"])
    checkpoint: str | int = Field(
        ...,
        description='a checkpoint id (ftckpt-…), a step number (12 or "step12") or the checkpoint\'s '
        "wandb-artifact:///… name",
        examples=["step12"],
    )


class AliasObject(BaseModel):
    object: Literal["model.alias"] = "model.alias"
    id: str = Field(..., description="the name to request: <model>:<alias>")
    model: str
    alias: str
    checkpoint: str
    step: int
    served_model: str = Field(..., description="the concrete wandb-artifact name the alias serves now")
    updated_at: int | None

    @classmethod
    def from_rows(cls, model: ServedModel, row: ModelAlias, ckpt: Checkpoint) -> Self:
        return cls(
            id=f"{model.name}:{row.alias}",
            model=model.name,
            alias=row.alias,
            checkpoint=ckpt.id,
            step=ckpt.step,
            served_model=ckpt.artifact_name,
            updated_at=to_unix(row.updated_at),
        )


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    served_model: str | None = Field(None, description="the concrete upstream model this name serves now")
    base_model: str | None = None
    checkpoint: str | None = None
    step: int | None = None
    fallback: bool | None = Field(
        None, description="true when the checkpoint is gone and the base model serves"
    )
    rollout: str | None = Field(
        None,
        description="a running rollout serves a candidate to part of this name's traffic "
        "(GET /v1/models/{name}/rollouts/{id}); `served_model` is the rest's",
    )

    @classmethod
    def of_base_model(cls, name: str) -> Self:
        return cls(id=name, created=0, owned_by=BASE_MODEL_OWNER, served_model=name)

    @classmethod
    def of_checkpoint(
        cls, name: str, created: dt.datetime | None, model: ServedModel, ckpt: Checkpoint
    ) -> Self:
        """`name` (the line, one of its aliases, or the checkpoint's own name) serving `ckpt`."""
        return cls(
            id=name,
            created=to_unix(created) or 0,
            owned_by=model.entity,
            served_model=ckpt.artifact_name,
            base_model=model.base_model,
            checkpoint=ckpt.id,
            step=ckpt.step,
        )

    @classmethod
    def of_resolution(cls, resolution: Resolution, *, served_model: str, fallback: bool) -> Self:
        return cls(
            id=resolution.requested,
            created=0,
            owned_by=BASE_MODEL_OWNER if resolution.is_base_model else TRAINED_MODEL_OWNER,
            served_model=served_model,
            base_model=resolution.base_model,
            checkpoint=resolution.checkpoint_id,
            step=resolution.step,
            fallback=fallback,
            rollout=resolution.split.rollout_id if resolution.split is not None else None,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
