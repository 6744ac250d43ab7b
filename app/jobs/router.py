"""`/v1/fine_tuning/jobs…`: OpenAI's fine-tuning routes (the official SDK is the reference client)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.exc import IntegrityError

from app.auth import require_scope
from app.deps import SessionDep, SettingsDep
from app.errors import BadRequest, error_responses
from app.jobs import service
from app.jobs.schemas import (
    CheckpointList,
    CreateJobRequest,
    EventList,
    JobList,
    JobObject,
    checkpoint_object,
    event_object,
    job_object,
)
from app.keys.scopes import Scope
from app.state import app_state

router = APIRouter(
    prefix="/v1/fine_tuning", tags=["fine-tuning"], dependencies=[require_scope(Scope.training)]
)

METADATA_FILTER = re.compile(r"^metadata\[(.+)\]$")
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/jobs", response_model=JobObject, responses=error_responses(400, 404, 409))
async def create_job(
    body: CreateJobRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobObject:
    """Validate the training data and queue a reinforcement fine-tuning job on W&B Serverless RL.

    The same `Idempotency-Key` returns the same job, never a second one."""
    try:
        job = await service.create_job(session, settings, body, idempotency_key=idempotency_key)
        await session.commit()
    except IntegrityError:
        # A concurrent request with the same key committed first: answer with its job.
        await session.rollback()
        if idempotency_key is None:
            raise
        existing = await service.find_by_idempotency_key(session, idempotency_key, body)
        if existing is None:
            raise
        job = existing
    app_state(request.app).wake_worker()
    return job_object(job)


@router.get("/jobs", response_model=JobList, responses=error_responses(400))
async def list_jobs(
    request: Request,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
    status: Annotated[str | None, Query(description="only jobs in this status")] = None,
    model: Annotated[str | None, Query(description="only jobs of this base model or model line")] = None,
) -> JobList:
    """Newest first, cursor pages (`after` = last id seen). Filter with `metadata[key]=value`
    (several allowed), or `metadata=null` for jobs without metadata, and by `status` and
    `model` (the dashboard's job list uses the same filters)."""
    filters: dict[str, str] = {}
    metadata_null = False
    for key, value in request.query_params.multi_items():
        match = METADATA_FILTER.match(key)
        if match:
            filters[match.group(1)] = value
        elif key == "metadata":
            if value != "null":
                raise BadRequest("metadata: use metadata[key]=value or metadata=null", param="metadata")
            metadata_null = True
    jobs, has_more = await service.list_jobs(
        session,
        after=after,
        limit=limit,
        metadata=filters,
        metadata_null=metadata_null,
        status=status,
        model=model,
    )
    data = [job_object(j) for j in jobs]
    return JobList.of(data, has_more)


@router.get("/jobs/{fine_tuning_job_id}", response_model=JobObject, responses=error_responses(404))
async def retrieve_job(fine_tuning_job_id: str, session: SessionDep) -> Response:
    """The job as it is now. Polled in loops by clients and the game: the object is serialised
    once, directly (FastAPI would validate the returned model against `response_model` again)."""
    job = await service.get_job(session, fine_tuning_job_id)
    return Response(job_object(job).model_dump_json(), media_type="application/json")


@router.post(
    "/jobs/{fine_tuning_job_id}/cancel", response_model=JobObject, responses=error_responses(404, 409)
)
async def cancel_job(
    fine_tuning_job_id: str, request: Request, session: SessionDep, settings: SettingsDep
) -> JobObject:
    """Cancel the job wherever it stands. A job no worker holds is cancelled at once; a running
    one by its worker within `WORKER__POLL_INTERVAL_S` (the answer says `cancel_requested`). W&B
    has no cancel endpoint: a step already sent may still finish there; the cancel event says
    so, and its checkpoint is recorded under the job marked late (never latest or best)."""
    job = await service.cancel_job(session, settings, fine_tuning_job_id)
    await session.commit()
    app_state(request.app).wake_worker()
    return job_object(job)


@router.get(
    "/jobs/{fine_tuning_job_id}/events", response_model=EventList, responses=error_responses(400, 404)
)
async def list_events(
    fine_tuning_job_id: str, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> EventList:
    """Newest first: every state change (type `message`) and every gradient step (type `metrics`)."""
    events, has_more = await service.list_events(session, fine_tuning_job_id, after=after, limit=limit)
    data = [event_object(e) for e in events]
    return EventList.of(data, has_more)


@router.get(
    "/jobs/{fine_tuning_job_id}/checkpoints",
    response_model=CheckpointList,
    responses=error_responses(400, 404),
)
async def list_checkpoints(
    fine_tuning_job_id: str,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 10,
    include_deleted: bool = False,
) -> CheckpointList:
    """Newest first. `fine_tuned_model_checkpoint` is the exact model name the gateway serves.
    Checkpoints removed by retention are listed only with `include_deleted=true`."""
    ckpts, has_more = await service.list_checkpoints(
        session, fine_tuning_job_id, after=after, limit=limit, include_deleted=include_deleted
    )
    data = [checkpoint_object(c, fine_tuning_job_id) for c in ckpts]
    return CheckpointList.of(data, has_more)
