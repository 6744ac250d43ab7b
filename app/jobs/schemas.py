"""Request and response shapes of the fine-tuning API (OpenAI's field names and objects)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.db import to_unix
from app.jobs.hyperparameters import hyperparameters_request_schema, method_request_schema
from app.jobs.models import FineTuningJob, JobEvent
from app.pagination import ListPage
from app.registry.models import Checkpoint

ORGANIZATION_ID = "org-training-control"


class CreateJobRequest(BaseModel):
    """`client.fine_tuning.jobs.create(...)`. Free-form parts are validated by the service (400 + param)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="base model; must be in TRAINING__ALLOWED_BASE_MODELS")
    training_file: str = Field(description="an uploaded file id (file-…) or a dataset id (ds-…)")
    suffix: str | None = Field(
        None, description="names the W&B model line; jobs with the same suffix continue one line"
    )
    seed: int | None = None
    # Free-form at validation (the service answers 400 naming the field); typed in the docs.
    metadata: Annotated[
        Any,
        WithJsonSchema(
            {
                "type": "object",
                "additionalProperties": {"type": "string", "maxLength": 512},
                "maxProperties": 16,
            }
        ),
    ] = Field(None, description="up to 16 string pairs; keys ≤ 64, values ≤ 512 characters")
    hyperparameters: Annotated[Any, WithJsonSchema(hyperparameters_request_schema())] = Field(
        None, description="deprecated by OpenAI in favour of method.reinforcement.hyperparameters"
    )
    method: Annotated[Any, WithJsonSchema(method_request_schema())] = None
    validation_file: str | None = None
    integrations: Annotated[
        Any,
        WithJsonSchema({"type": "array", "items": {"type": "object"}, "description": "accepted and ignored"}),
    ] = None
    webhook_url: str | None = Field(
        None, description="notified on succeeded/failed/cancelled (also metadata['webhook_url'])"
    )


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    estimated_finish: int | None = None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str
    error: JobError | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str
    validation_file: str | None = None
    result_files: list[str]
    trained_tokens: int | None
    seed: int
    integrations: list[dict[str, Any]]
    metadata: dict[str, str] | None


class EventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class CheckpointObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


def job_object(job: FineTuningJob) -> JobObject:
    hp = dict(job.hyperparameters)
    return JobObject(
        id=job.id,
        created_at=to_unix(job.created_at) or 0,
        finished_at=to_unix(job.finished_at),
        model=job.base_model,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=ORGANIZATION_ID,
        status=job.status,
        error=JobError(**job.error) if job.error else None,
        # OpenAI's `batch_size` is our groups per step; both names are shown
        hyperparameters={**hp, "batch_size": hp.get("groups_per_step")},
        method={"type": "reinforcement", "reinforcement": {"hyperparameters": hp}},
        training_file=job.training_file,
        result_files=[],
        trained_tokens=job.trained_tokens,
        seed=job.seed,
        integrations=[
            {
                "type": "wandb",
                "wandb": {"project": job.project, "entity": job.entity, "name": job.model_name, "tags": None},
            }
        ],
        metadata=job.job_metadata,
        # service-specific fields (the SDK keeps unknown fields)
        dataset_id=job.dataset_id,
        suffix=job.suffix,
        steps={"completed": job.completed_steps, "total": job.total_steps},
        cancel_requested=job.cancel_requested_at is not None,
        babylon_batch_id=job.babylon_batch_id,
        updated_at=to_unix(job.updated_at),
    )


def event_object(event: JobEvent) -> EventObject:
    return EventObject(
        id=event.id,
        created_at=to_unix(event.created_at) or 0,
        level=event.level,
        type=event.type,
        message=event.message,
        data=event.data,
    )


def checkpoint_object(ckpt: Checkpoint, job_id: str) -> CheckpointObject:
    metrics: dict[str, Any] = {"step": float(ckpt.step), **ckpt.metrics}
    if "train_loss" not in metrics and "loss/train" in ckpt.metrics:
        metrics["train_loss"] = ckpt.metrics["loss/train"]
    return CheckpointObject(
        id=ckpt.id,
        created_at=to_unix(ckpt.created_at) or 0,
        fine_tuned_model_checkpoint=ckpt.artifact_name,
        fine_tuning_job_id=job_id,
        step_number=ckpt.step,
        metrics=metrics,
        job_step=ckpt.job_step,
        deleted=ckpt.deleted_at is not None,
        # step: the job's step completed with it; late: W&B finished the step after the job had
        # stopped following it (kept and listed, never latest, best or the job's model)
        origin=ckpt.origin,
    )


JobList = ListPage[JobObject]
EventList = ListPage[EventObject]
CheckpointList = ListPage[CheckpointObject]
