"""Request and response shapes of the model routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
