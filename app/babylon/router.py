"""`POST /train`: the game's trigger (the contract of its old Python worker, plus `job_id`)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from app.auth import require_scope
from app.babylon import handoff
from app.babylon.batches import babylon_url, job_for_batch, start_batch_training
from app.deps import SessionDep, SettingsDep
from app.errors import error_responses
from app.jobs.models import FineTuningJob
from app.keys.scopes import Scope
from app.state import app_state

logger = logging.getLogger(__name__)
router = APIRouter(tags=["babylon"], dependencies=[require_scope(Scope.training)])


# Postgres text cannot hold NUL (SQLSTATE 22021): refused as a 422 naming the field, not sent
# to the game's database (found by the schema fuzzing, tests/e2e/test_fuzz.py).
NO_NUL = r"^[^\x00]*$"


class TrainRequest(BaseModel):
    batchId: str | None = Field(  # the game's field name
        None,
        max_length=200,
        pattern=NO_NUL,
        description="a training_batches row; absent: the newest windows with unused data",
    )
    source: str = Field(
        "unknown", max_length=200, pattern=NO_NUL, description="who triggered the training (logged)"
    )


class TrainResponse(BaseModel):
    status: Literal["started"] = "started"
    batchId: str
    message: str
    job_id: str


@router.post("/train", response_model=TrainResponse, responses=error_responses(400, 404, 409, 503))
async def train(
    body: TrainRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> TrainResponse:
    """Train a `training_batches` row of the game: a fine-tuning job on the game's model line.
    On success the batch becomes `completed` and a `trained_models` row (`status='ready'`) names
    the served checkpoint; on failure the batch becomes `failed` with the error."""
    url = babylon_url(settings)
    try:
        job, batch, created = await start_batch_training(
            session, settings, batch_id=body.batchId, source=body.source
        )
        await session.commit()
    except IntegrityError:
        # the same batch was started concurrently: answer with that job
        await session.rollback()
        if body.batchId is None:
            raise
        batch_row = await handoff.load_batch(url, body.batchId)
        existing: FineTuningJob | None = await job_for_batch(session, batch_row.id) if batch_row else None
        if existing is None or batch_row is None:
            raise
        job, batch, created = existing, batch_row, False
    if created:
        try:
            await handoff.mark_training(url, batch.id)
        except Exception as exc:  # the worker marks it again when it starts
            logger.warning("babylon.mark_training_failed batch=%s error=%s", batch.id, exc)
        logger.info("babylon.train_started batch=%s job_id=%s source=%s", batch.batch_id, job.id, body.source)
    app_state(request.app).wake_worker()
    return TrainResponse(
        batchId=batch.batch_id,
        message="Training started in background"
        if created
        else f"Training already {job.status} for this batch",
        job_id=job.id,
    )
