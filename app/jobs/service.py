"""Fine-tuning jobs: create (validated, idempotent), read, list, cancel. Functions flush, never commit."""

from __future__ import annotations

import hashlib
import math
import random
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.datasets.models import Dataset, DatasetStatus
from app.db import utcnow
from app.errors import AppError, BadRequest, Conflict, NotFound
from app.files.service import resolve_training_file
from app.ids import new_id
from app.jobs import handoff, webhooks
from app.jobs.events import add_event
from app.jobs.hyperparameters import Hyperparameters, resolve_hyperparameters
from app.jobs.models import (
    STEP_FINAL_STATUSES,
    TERMINAL_STATUSES,
    FineTuningJob,
    JobEvent,
    JobStatus,
    JobStep,
    StepStatus,
)
from app.jobs.schemas import CreateJobRequest
from app.jobs.states import transition
from app.pagination import after_row, created_order, cursor_anchor, fetch_page
from app.queue.workers import require_training_worker
from app.registry import service as registry
from app.registry.models import Checkpoint, ServedModel
from app.registry.policy import COMPUTED_ALIASES, BestRule
from app.registry.rollouts import parse_rollout_options, start_rollout

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
IDEMPOTENCY_KEY_MAX = 255

NO_TRAINABLE_DATA_HELP = (
    "ART trains only assistant turns that were sampled with logprobs, and the game's recorded "
    "trajectories carry none. Route your agents' chat calls through this service's "
    "/v1/chat/completions with metadata.trajectory_id (and metadata.agent_id) set: the gateway "
    "asks upstream for logprobs and stores each sampled choice, and datasets built afterwards "
    "contain trainable turns."
)


@dataclass(frozen=True)
class StepPlan:
    number: int  # 1-based
    epoch: int  # 1-based
    group_positions: list[int]


def steps_per_epoch(group_count: int, hp: Hyperparameters) -> int:
    return math.ceil(group_count / hp.groups_per_step) if group_count > 0 else 0


def total_steps(group_count: int, hp: Hyperparameters) -> int:
    total = steps_per_epoch(group_count, hp) * hp.n_epochs
    return min(total, hp.max_steps) if hp.max_steps is not None else total


def plan_step(number: int, group_count: int, hp: Hyperparameters, seed: int) -> StepPlan:
    """The groups of step `number`: each epoch is a seeded shuffle of the dataset cut into batches."""
    per_epoch = steps_per_epoch(group_count, hp)
    epoch, index = divmod(number - 1, per_epoch)
    order = list(range(group_count))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    start = index * hp.groups_per_step
    return StepPlan(number=number, epoch=epoch + 1, group_positions=order[start : start + hp.groups_per_step])


def default_model_name(job_id: str) -> str:
    return "ft-" + job_id.removeprefix("ftjob-")


async def resolve_dataset(session: AsyncSession, training_file: str) -> Dataset:
    """The dataset behind `training_file` (a dataset id, or a file the pipeline turned into one)."""
    return await resolve_training_file(session, training_file)


def check_dataset_trainable(dataset: Dataset, training_file: str) -> None:
    """Raise BadRequest unless the dataset is built and has something ART can train."""
    if dataset.status == DatasetStatus.FAILED:
        reason = dataset.error["message"] if dataset.error else "unknown reason"
        raise BadRequest(
            f"training file {training_file} failed to build: {reason}",
            param="training_file",
            code="training_file_failed",
        )
    if dataset.status != DatasetStatus.READY:
        raise BadRequest(
            f"training file {training_file} is not ready yet (status {dataset.status}); "
            "retry when it is ready",
            param="training_file",
            code="training_file_not_ready",
        )
    if dataset.group_count == 0 or dataset.trainable_turns == 0:
        what = "no groups" if dataset.group_count == 0 else "no trainable turns"
        raise BadRequest(
            f"training file {training_file} has {what} ({dataset.group_count} groups, "
            f"{dataset.trainable_turns} trainable turns). {NO_TRAINABLE_DATA_HELP}",
            param="training_file",
            code="no_trainable_data",
        )


def _check_suffix(suffix: str | None) -> None:
    if suffix is not None and not MODEL_NAME_PATTERN.match(suffix):
        raise BadRequest(
            "suffix must be 1-64 characters of letters, digits, '_', '-' or '.', starting with a letter or digit",
            param="suffix",
            code="invalid_suffix",
        )


def _check_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None or metadata == {}:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest(
            "metadata must be an object of string pairs", param="metadata", code="invalid_metadata"
        )
    if len(metadata) > METADATA_MAX_PAIRS:
        raise BadRequest(
            f"metadata has {len(metadata)} pairs; at most {METADATA_MAX_PAIRS} are allowed",
            param="metadata",
            code="invalid_metadata",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY:
            raise BadRequest(
                f"metadata key {key[:20]!r}… is longer than {METADATA_MAX_KEY} characters",
                param=f"metadata.{key}",
                code="invalid_metadata",
            )
        if not isinstance(value, str) or len(value) > METADATA_MAX_VALUE:
            raise BadRequest(
                f"metadata.{key} must be a string of at most {METADATA_MAX_VALUE} characters",
                param=f"metadata.{key}",
                code="invalid_metadata",
            )
    return dict(metadata)


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(2**31)
    if not 0 <= seed < 2**63:
        raise BadRequest("seed must be a non-negative 64-bit integer", param="seed", code="invalid_seed")
    return seed


def _job_webhook_urls(
    request: CreateJobRequest, metadata: dict[str, str] | None, settings: Settings
) -> list[str]:
    urls: list[str] = []
    for url, param in (
        (request.webhook_url, "webhook_url"),
        ((metadata or {}).get("webhook_url"), "metadata.webhook_url"),
    ):
        if url is None:
            continue
        if not url.startswith(("http://", "https://")) or len(url) > 2000:
            raise BadRequest(f"{param} must be an http(s) URL", param=param, code="invalid_webhook_url")
        if settings.training.webhook_secret is None:
            raise BadRequest(
                "webhooks need a signing secret on the server (TRAINING__WEBHOOK_SECRET)",
                param=param,
                code="webhooks_not_configured",
            )
        if url not in urls:
            urls.append(url)
    return urls


def fingerprint(request: CreateJobRequest) -> str:
    """What an Idempotency-Key is bound to: the same key with another body is a client bug."""
    body = request.model_dump(mode="json")
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def find_by_idempotency_key(
    session: AsyncSession, key: str, request: CreateJobRequest
) -> FineTuningJob | None:
    job = await session.scalar(sa.select(FineTuningJob).where(FineTuningJob.idempotency_key == key))
    if job is not None and job.request_fingerprint not in (None, fingerprint(request)):
        raise Conflict(
            "this Idempotency-Key was already used with a different request body",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return job


async def _check_model_line(session: AsyncSession, settings: Settings, name: str, base_model: str) -> None:
    lines = await registry.model_lines_named(
        session, project=settings.wandb_project, name=name, entity=settings.wandb_entity
    )
    for line in lines:
        if line.base_model != base_model:
            raise BadRequest(
                f"model line {name!r} is trained from {line.base_model}, not {base_model}; "
                "use another suffix to start a new line",
                param="suffix",
                code="base_model_mismatch",
            )


async def create_job(
    session: AsyncSession,
    settings: Settings,
    request: CreateJobRequest,
    *,
    idempotency_key: str | None = None,
) -> FineTuningJob:
    """Validate and queue a job. With an idempotency key already used, return that job instead."""
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
            raise BadRequest(
                f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} characters",
                param="Idempotency-Key",
                code="invalid_idempotency_key",
            )
        existing = await find_by_idempotency_key(session, idempotency_key, request)
        if existing is not None:
            return existing
    if request.model not in settings.training.allowed_base_models:
        raise BadRequest(
            f"base model {request.model!r} is not available for training; choose one of: "
            + ", ".join(settings.training.allowed_base_models),
            param="model",
            code="model_not_available",
        )
    if request.validation_file is not None:
        raise BadRequest(
            "validation_file is not supported: W&B Serverless RL trains on groups only",
            param="validation_file",
            code="unsupported_parameter",
        )
    _check_suffix(request.suffix)
    metadata = _check_metadata(request.metadata)
    hp = resolve_hyperparameters(request.hyperparameters, request.method)
    rollout = _rollout_option(request.method)
    seed = _check_seed(request.seed)
    urls = _job_webhook_urls(request, metadata, settings)

    dataset = await resolve_dataset(session, request.training_file)
    # A file uploaded a moment ago has its dataset still queued or building (a worker builds it):
    # the job waits for it in `validating_files`, and its runner checks it once built.
    building = dataset.status in (DatasetStatus.QUEUED, DatasetStatus.BUILDING)
    if not building:
        check_dataset_trainable(dataset, request.training_file)
    await require_training_worker(session, settings)

    job_id = new_id("ftjob")
    model_name = request.suffix or default_model_name(job_id)
    await _check_model_line(session, settings, model_name, request.model)
    steps = 0 if building else total_steps(dataset.group_count, hp)
    job = FineTuningJob(
        id=job_id,
        status=JobStatus.VALIDATING if building else JobStatus.QUEUED,
        base_model=request.model,
        training_file=request.training_file,
        dataset_id=dataset.id,
        suffix=request.suffix,
        seed=seed,
        job_metadata=metadata,
        hyperparameters=hp.model_dump(mode="json"),
        model_name=model_name,
        project=settings.wandb_project,
        entity=settings.wandb_entity,
        total_steps=steps,
        completed_steps=0,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint(request) if idempotency_key else None,
        webhook_urls=urls,
        rollout=rollout,
        attempts=0,
    )
    session.add(job)
    await session.flush()  # an idempotency-key race surfaces here as IntegrityError
    await add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    if building:
        await add_event(
            session,
            job.id,
            f"Waiting for training file {request.training_file} to be built (dataset {dataset.id} is "
            f"{dataset.status}); it is validated once built",
            data={"dataset_id": dataset.id},
        )
        await session.flush()
        return job
    await add_event(
        session,
        job.id,
        f"Validated training file {request.training_file}: {dataset.group_count} groups, "
        f"{dataset.trajectory_count} trajectories, {dataset.trainable_turns} trainable turns",
        data={
            "dataset_id": dataset.id,
            "groups": dataset.group_count,
            "trainable_turns": dataset.trainable_turns,
        },
    )
    await add_event(
        session,
        job.id,
        f"Job queued: {steps} training steps of up to {hp.groups_per_step} groups on model line "
        f"{settings.wandb_project}/{model_name}",
        data={"total_steps": steps, "model_name": model_name},
    )
    await session.flush()
    return job


async def get_job(session: AsyncSession, job_id: str, *, for_update: bool = False) -> FineTuningJob:
    query = sa.select(FineTuningJob).where(FineTuningJob.id == job_id)
    if for_update:
        query = query.with_for_update()
    job = await session.scalar(query)
    if job is None:
        raise NotFound(
            f"fine-tuning job {job_id!r} does not exist", param="fine_tuning_job_id", code="job_not_found"
        )
    return job


async def list_jobs(
    session: AsyncSession,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    metadata_null: bool = False,
    status: str | None = None,
    model: str | None = None,
) -> tuple[list[FineTuningJob], bool]:
    """Newest first; `after` is the id of the last job of the previous page. `status` uses the
    (status, created_at) index; `model` matches the base model or the model line (suffix)."""
    query = sa.select(FineTuningJob)
    if status is not None:
        if status not in {s.value for s in JobStatus}:
            raise BadRequest(
                f"status {status!r} is not one of: {', '.join(JobStatus)}",
                param="status",
                code="invalid_status",
            )
        query = query.where(FineTuningJob.status == status)
    if model is not None:
        query = query.where(sa.or_(FineTuningJob.base_model == model, FineTuningJob.model_name == model))
    if after is not None:
        anchor = await cursor_anchor(session, FineTuningJob, after, what="job")
        query = query.where(after_row(FineTuningJob, anchor, newest_first=True))
    if metadata_null:
        # None is stored as JSON null (not SQL NULL) by the JSON type: accept both
        query = query.where(
            sa.or_(
                FineTuningJob.job_metadata.is_(None), sa.cast(FineTuningJob.job_metadata, sa.Text) == "null"
            )
        )
    for key, value in (metadata or {}).items():
        query = query.where(FineTuningJob.job_metadata[key].as_string() == value)
    return await fetch_page(session, query.order_by(*created_order(FineTuningJob, newest_first=True)), limit)


async def list_events(
    session: AsyncSession, job_id: str, *, after: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    """Newest first, as OpenAI lists them; `after` is the id of the last event seen."""
    await get_job(session, job_id)
    query = sa.select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        anchor = await session.scalar(
            sa.select(JobEvent).where(JobEvent.id == after, JobEvent.job_id == job_id)
        )
        if anchor is None:
            raise BadRequest(f"after: no event {after!r} in this job", param="after", code="invalid_cursor")
        query = query.where(JobEvent.seq < anchor.seq)
    return await fetch_page(session, query.order_by(JobEvent.seq.desc()), limit)


async def list_checkpoints(
    session: AsyncSession, job_id: str, *, after: str | None, limit: int, include_deleted: bool = False
) -> tuple[list[Checkpoint], bool]:
    """The job's checkpoints, newest step first; deleted ones (retention) only when asked."""
    await get_job(session, job_id)
    return await registry.job_checkpoints(
        session, job_id, after=after, limit=limit, include_deleted=include_deleted
    )


async def cancel_job(session: AsyncSession, settings: Settings, job_id: str) -> FineTuningJob:
    """Cancel now when no live worker holds the job; otherwise record the request, which its
    worker sees within `WORKER__POLL_INTERVAL_S` wherever the job stands and ends it cancelled."""
    job = await get_job(session, job_id, for_update=True)
    if job.status == JobStatus.CANCELLED:
        return job
    if job.status in TERMINAL_STATUSES:
        raise Conflict(
            f"job {job.id} already {job.status}; it cannot be cancelled", code="job_not_cancellable"
        )
    now = utcnow()
    first_request = job.cancel_requested_at is None
    if first_request:
        job.cancel_requested_at = now
    held = job.worker_id is not None and job.lease_expires_at is not None and job.lease_expires_at >= now
    if not held:
        await finish_cancelled(session, settings, job)
        return job
    if first_request:
        await add_event(
            session,
            job.id,
            f"Cancellation requested: worker {job.worker_id} stops the job within "
            f"{settings.worker.poll_interval_s:g}s, wherever it stands",
        )
    await session.flush()
    return job


IN_FLIGHT = {
    StepStatus.SUBMITTING: "its training request was being sent: W&B may have accepted it and may still train it",
    StepStatus.UNKNOWN: "W&B's answer to its training request was lost: W&B may still train it",
    StepStatus.SUBMITTED: "it was training on W&B, which has no cancel endpoint: it may still finish",
    StepStatus.ENDED: "it had finished training on W&B; its checkpoint was not recorded yet",
}


async def finish_cancelled(session: AsyncSession, settings: Settings, job: FineTuningJob) -> None:
    """End the job cancelled: a step not sent yet is cancelled; a step W&B may still finish is
    abandoned, and the event says so (its checkpoint, if any, is recorded later marked late)."""
    step = await session.scalar(
        sa.select(JobStep).where(JobStep.job_id == job.id).order_by(JobStep.number.desc()).limit(1)
    )
    if job.status != JobStatus.RUNNING:
        message = "Job cancelled before it started"
    else:
        message = f"Job cancelled after {job.completed_steps} of {job.total_steps} steps" + (
            "; its checkpoints are kept" if job.completed_steps else ""
        )
    data: dict[str, Any] = {"completed_steps": job.completed_steps, "total_steps": job.total_steps}
    if step is not None and step.status not in STEP_FINAL_STATUSES:
        in_flight = IN_FLIGHT.get(StepStatus(step.status))
        step.status = StepStatus.ABANDONED if in_flight else StepStatus.CANCELLED
        step.finished_at = utcnow()
        if in_flight:
            remote = f" (W&B training job {step.remote_job_id})" if step.remote_job_id else ""
            message += (
                f". Step {step.number}{remote}: {in_flight}. A checkpoint W&B produces for it is recorded "
                f"under this job as step {step.number}, marked late: listed and kept, never latest or best"
            )
            data.update(abandoned_step=step.number, remote_job_id=step.remote_job_id)
    await finish_job(session, settings, job, JobStatus.CANCELLED, message=message, data=data)


async def finish_job(
    session: AsyncSession,
    settings: Settings,
    job: FineTuningJob,
    status: JobStatus,
    *,
    message: str,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Terminal transition + its event, webhook deliveries and pending game hand-off, in one flush."""
    transition(job, status)
    job.error = error
    if status == JobStatus.SUCCEEDED and job.rollout:
        # gated: the game gets the checkpoint when a rollout promotes it (app/rollouts/)
        await _start_job_rollout(session, settings, job)
    else:
        await handoff.mark_pending(session, job)
    await add_event(
        session,
        job.id,
        message,
        level="error" if error else "info",
        data=error or data,
    )
    webhooks.enqueue_job_notification(session, settings, job)
    await session.flush()


ROLLOUT_PARAM = "method.reinforcement.rollout."


def _rollout_option(method: object) -> dict[str, Any] | None:
    """`method.reinforcement.rollout`: validated now (400 naming the field), used at success."""
    section = method.get("reinforcement") if isinstance(method, dict) else None
    raw = section.get("rollout") if isinstance(section, dict) else None
    if raw is None:
        return None
    options = parse_rollout_options(raw, prefix=ROLLOUT_PARAM, candidate_required=False)
    if options.candidate is not None:
        raise BadRequest(
            f"{ROLLOUT_PARAM}candidate: the job's final checkpoint is the candidate; leave it out",
            param=f"{ROLLOUT_PARAM}candidate",
            code="invalid_rollout",
        )
    if options.alias in COMPUTED_ALIASES:
        raise BadRequest(
            f"{ROLLOUT_PARAM}alias: {options.alias!r} follows every step a job completes; roll out on "
            "an alias you move yourself (e.g. 'production')",
            param=f"{ROLLOUT_PARAM}alias",
            code="invalid_rollout",
        )
    return {
        "alias": options.alias,
        "share": options.share,
        "metric": options.metric,
        "min_trajectories": options.min_trajectories,
        "confidence": options.confidence,
        "max_duration": options.max_duration_s,
    }


async def _start_job_rollout(session: AsyncSession, settings: Settings, job: FineTuningJob) -> bool:
    """A succeeded job that opted in starts a rollout of its final checkpoint on its alias
    instead of handing it over at once. A rollout that cannot start (another runs on the alias,
    the alias does not exist) is a `warn` job event: the alias is left alone, and the game gets
    the checkpoint only when a rollout started later promotes it."""
    if not job.rollout or job.served_model_id is None:
        return False
    model = await session.get(ServedModel, job.served_model_id)
    candidate = await registry.last_job_checkpoint(session, job.id)
    if model is None or candidate is None:
        return False
    options = parse_rollout_options({**job.rollout, "candidate": candidate.id}, prefix=ROLLOUT_PARAM)
    try:
        rollout = await start_rollout(
            session,
            model,
            options,
            BestRule.of(settings),
            candidate=candidate,
            job_id=job.id,
            webhook_urls=list(job.webhook_urls or []),
        )
    except AppError as exc:
        await add_event(
            session,
            job.id,
            f"Rollout not started, {options.alias!r} left as it was: {exc.message}. The game gets this "
            f"checkpoint when a rollout promotes it (POST /v1/models/{model.name}/rollouts)",
            level="warn",
        )
        return False
    await add_event(
        session,
        job.id,
        f"Rollout {rollout.id} started: step {candidate.step} serves {options.share:.0%} of "
        f"{model.name}:{options.alias} until its rewards decide (GET /v1/models/{model.name}/rollouts/{rollout.id})",
        data={"rollout_id": rollout.id, "alias": options.alias, "candidate": candidate.id},
    )
    return True
