"""Training the game's `training_batches` rows: `POST /train` and the optional watch mode.

A batch becomes one job on the game's long-lived model line (`BABYLON__MODEL_NAME`), trained
from a dataset built from the batch's `trajectoryIds` (or its window, `"scenarioId"`). The
job starts in `validating_files` while its dataset is built by the worker. One job per batch:
`fine_tuning_jobs.babylon_batch_id` is unique, so concurrent requests and watchers agree.
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.babylon import handoff
from app.babylon.handoff import Batch, BatchStatus
from app.babylon.source import create_babylon_dataset
from app.config import Settings
from app.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from app.ids import new_id
from app.jobs.events import add_event
from app.jobs.hyperparameters import Hyperparameters
from app.jobs.models import FineTuningJob, JobStatus
from app.queue.workers import require_training_worker

STARTABLE_BATCH_STATUSES = (BatchStatus.PENDING, BatchStatus.FAILED)


def babylon_url(settings: Settings) -> str:
    if not settings.babylon_database_url:
        raise ServiceUnavailable(
            "the game's database is not configured (BABYLON_DATABASE_URL)", code="babylon_not_configured"
        )
    return settings.babylon_database_url


def batch_base_model(settings: Settings, batch: Batch | None) -> str:
    """The batch's base model if W&B can train it, else the configured default (the game's
    historical `Qwen/Qwen2.5-0.5B-Instruct` is not a Serverless RL model)."""
    if batch is not None and batch.base_model in settings.training.allowed_base_models:
        return batch.base_model
    return settings.training.default_base_model


async def job_for_batch(session: AsyncSession, batch_row_id: str) -> FineTuningJob | None:
    return await session.scalar(
        sa.select(FineTuningJob).where(FineTuningJob.babylon_batch_id == batch_row_id)
    )


def dataset_params(batch: Batch) -> dict[str, Any]:
    if batch.trajectory_ids:
        # the batch names exactly what to train, used before or not
        return {"source": "babylon", "trajectory_ids": batch.trajectory_ids, "include_used": True}
    if batch.scenario_id:
        return {"source": "babylon", "window_ids": [batch.scenario_id]}
    raise BadRequest(
        f"batch {batch.batch_id} has neither trajectoryIds nor a scenarioId (window) to train",
        param="batchId",
        code="empty_batch",
    )


async def start_batch_training(
    session: AsyncSession, settings: Settings, *, batch_id: str | None, source: str
) -> tuple[FineTuningJob, Batch, bool]:
    """The job training this batch: (job, batch, created). Existing jobs are returned as they are."""
    url = babylon_url(settings)
    await require_training_worker(session, settings)  # before anything is written to the game
    if batch_id is None:
        batch = await handoff.create_batch_for_recent_windows(
            url,
            windows=settings.training.train_recent_windows,
            base_model=batch_base_model(settings, None),
        )
        if batch is None:
            raise BadRequest(
                "no window has at least two unused training trajectories; nothing to train",
                param="batchId",
                code="no_trainable_data",
            )
    else:
        found = await handoff.load_batch(url, batch_id)
        if found is None:
            raise NotFound(
                f"training batch {batch_id!r} does not exist", param="batchId", code="batch_not_found"
            )
        batch = found
    existing = await job_for_batch(session, batch.id)
    if existing is not None:
        return existing, batch, False
    if batch.status not in STARTABLE_BATCH_STATUSES:
        raise Conflict(
            f"training batch {batch.batch_id} is {batch.status!r}; only pending or failed batches can be trained",
            param="batchId",
            code="batch_not_pending",
        )
    dataset = await create_babylon_dataset(session, settings, dataset_params(batch))
    job = FineTuningJob(
        id=new_id("ftjob"),
        status=JobStatus.VALIDATING,
        base_model=batch_base_model(settings, batch),
        training_file=dataset.id,
        dataset_id=dataset.id,
        suffix=None,
        seed=secrets.randbelow(2**31),
        job_metadata={"babylon_batch_id": batch.batch_id, "source": source[:512]},
        hyperparameters=Hyperparameters().model_dump(mode="json"),
        model_name=settings.babylon.model_name,
        project=settings.wandb_project,
        entity=settings.wandb_entity,
        total_steps=0,
        completed_steps=0,
        webhook_urls=[],
        babylon_batch_id=batch.id,
        attempts=0,
    )
    session.add(job)
    await session.flush()  # a concurrent start of the same batch fails here (unique batch id)
    await add_event(
        session,
        job.id,
        f"Created fine-tuning job {job.id} for the game's training batch {batch.batch_id} (source {source}); "
        f"building dataset {dataset.id} from "
        + (
            f"{len(batch.trajectory_ids)} trajectories"
            if batch.trajectory_ids
            else f"window {batch.scenario_id}"
        ),
        data={"batch_id": batch.batch_id, "dataset_id": dataset.id, "source": source},
    )
    await session.flush()
    return job, batch, True
