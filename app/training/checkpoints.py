"""A step's checkpoint: which one it is, recording it, and the checkpoints nobody waited for.

Which checkpoint belongs to a step follows openpipe-art 0.5.18: `ServerlessBackend.train`
returns once `_train_model` sees `training_ended` (art/serverless/backend.py:359-360) and then
takes the model's *newest* checkpoint (`_get_step`, backend.py:284-285 → 155-161: one
`GET …/checkpoints?limit=1&order=desc`). So a step's checkpoint is the newest one above the
step's base step listed after `training_ended` (or, when the POST's answer was lost, the newest
one that appears above the base step).

Checkpoints above the base step other than that one were produced by steps the service had
stopped following (a cancel, a stall, an unresolved POST): W&B has no cancel endpoint and
finishes them anyway. Each is recorded on the model line as the checkpoint of the oldest such
step that could have produced it (`late`), or as `external` when none could; both are listed
and kept, never credited to another job and never pointed at by `latest` or `best`
(CheckpointOrigin). The worker's sweep (`sweep_late_checkpoints`) finds them for lines with no
job running; a running job's steps attribute them as they go.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from app.config import Settings
from app.jobs.events import add_event
from app.jobs.models import ACTIVE_STATUSES, FineTuningJob, JobStep, StepStatus
from app.registry import policy
from app.registry.models import Checkpoint, CheckpointOrigin, ServedModel
from app.registry.service import record_checkpoint
from app.training.context import JobFailed, RunContext
from app.training.groups import reward_metrics
from app.training.remote import RemoteCheckpoint, RemoteError, TrainingAPI
from app.training.store import StepState

logger = logging.getLogger(__name__)


def step_checkpoint(found: Sequence[RemoteCheckpoint]) -> RemoteCheckpoint | None:
    """ART's rule: the newest checkpoint (found is newest first, all above the base step)."""
    return max(found, key=lambda c: c.step) if found else None


def numeric(data: dict[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        try:
            out[key] = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return out


def fmt(metrics: dict[str, float], *keys: str) -> str:
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


async def attribute_unclaimed(
    session: AsyncSession, line: ServedModel, found: Sequence[RemoteCheckpoint]
) -> list[Checkpoint]:
    """Record W&B checkpoints of `line` that nothing recorded yet as `late` checkpoints of the
    line's abandoned steps (oldest step first, each step at most one) or as `external`."""
    steps = sorted({c.step for c in found})
    if not steps:
        return []
    known = set(
        (
            await session.scalars(
                sa.select(Checkpoint.step).where(Checkpoint.model_id == line.id, Checkpoint.step.in_(steps))
            )
        ).all()
    )
    unclaimed = sorted((c for c in found if c.step not in known), key=lambda c: c.step)
    if not unclaimed:
        return []
    waiting = list(
        (
            await session.scalars(
                sa.select(JobStep)
                .join(FineTuningJob, FineTuningJob.id == JobStep.job_id)
                .where(
                    FineTuningJob.served_model_id == line.id,
                    JobStep.status == StepStatus.ABANDONED,
                    JobStep.checkpoint_step.is_(None),
                )
                .order_by(JobStep.submit_started_at, JobStep.id)
            )
        ).all()
    )
    recorded = []
    for remote in unclaimed:
        owner = next((s for s in waiting if (s.base_step or 0) < remote.step), None)
        if owner is not None:
            waiting.remove(owner)
            owner.checkpoint_step = remote.step
        ckpt = await record_checkpoint(
            session,
            line,
            step=remote.step,
            metrics=numeric(dict(remote.metrics)),
            job_id=owner.job_id if owner else None,
            job_step=owner.number if owner else None,
            origin=CheckpointOrigin.LATE if owner else CheckpointOrigin.EXTERNAL,
        )
        if owner is not None:
            await add_event(
                session,
                owner.job_id,
                f"W&B finished step {owner.number} after the job had stopped following it: its checkpoint "
                f"{ckpt.artifact_name} is recorded as step {owner.number}'s (marked late: listed and kept, "
                "never latest or best)",
                level="warn",
                data={
                    "step": owner.number,
                    "checkpoint_step": remote.step,
                    "origin": CheckpointOrigin.LATE.value,
                },
            )
        else:
            logger.warning(
                "checkpoint.external line=%s/%s/%s step=%s", line.entity, line.project, line.name, remote.step
            )
        recorded.append(ckpt)
    return recorded


async def complete_step(
    ctx: RunContext,
    step: StepState,
    found: Sequence[RemoteCheckpoint],
    rewards: list[tuple[list[float], int]],
    *,
    resolved: bool,
    prelude: Callable[[AsyncSession], Awaitable[dict[str, Any]]] | None = None,
) -> None:
    """Record the step's checkpoint (ART's rule), the others as late or external, move the
    aliases; then apply retention. The step ends `succeeded`. `prelude` writes what must
    commit with it (the events page that ended the step) and returns the step's changes, which
    are written with `succeeded` in one statement."""
    remote = step_checkpoint(found)
    assert remote is not None
    others = [c for c in found if c.step != remote.step]
    async with ctx.store.owned() as session:
        changes = await prelude(session) if prelude is not None else {}
        line = ctx.line.model  # detached: the registry reads its ids and names only
        await attribute_unclaimed(session, line, others)
        sums: dict[str, float] = changes.get("metric_sums", step.metric_sums)
        gradient_steps: int = changes.get("gradient_steps", step.gradient_steps)
        means = {k: v / gradient_steps for k, v in sums.items()} if gradient_steps else {}
        metrics: dict[str, float] = {**numeric(dict(remote.metrics)), **means, **reward_metrics(rewards)}
        if "loss" in means:
            metrics["train_loss"] = means["loss"]
        ckpt = await record_checkpoint(
            session, line, step=remote.step, metrics=metrics, job_id=ctx.job_id, job_step=step.number
        )
        if (ckpt.job_id, ckpt.job_step, ckpt.origin) != (ctx.job_id, step.number, CheckpointOrigin.STEP):
            raise JobFailed(
                "checkpoint_conflict",
                f"Step {step.number}'s checkpoint (W&B step {remote.step}) is already recorded as the "
                f"{ckpt.origin} checkpoint of {ckpt.job_id or 'nothing this service sent'}",
                step_status=StepStatus.ABANDONED,
            )
        now = ctx.clock.now()
        await ctx.store.save_step(
            session,
            step,
            **{**changes, "status": StepStatus.SUCCEEDED, "checkpoint_step": remote.step, "finished_at": now},
        )
        progress: dict[str, object] = {"completed_steps": step.number, "fine_tuned_model": ckpt.artifact_name}
        tokens = int(step.metric_sums.get("num_trainable_tokens") or 0)
        if tokens:
            progress["trained_tokens"] = sa.func.coalesce(FineTuningJob.trained_tokens, 0) + tokens
        await session.execute(
            sa.update(FineTuningJob).where(FineTuningJob.id == ctx.job_id).values(**progress)
        )
        ctx.job.completed_steps = step.number
        aliases = await policy.move_aliases(session, ctx.settings, line)
        summary = fmt(metrics, "train_loss", "reward_mean")
        await ctx.store.event(
            session,
            f"Step {step.number}/{ctx.job.total_steps} done: checkpoint {ckpt.artifact_name}"
            + (f" ({summary})" if summary else "")
            + (
                " (outcome resolved from the model's checkpoints; its training events were not seen)"
                if resolved
                else ""
            ),
            level="warn" if resolved else "info",
            data={
                "step": step.number,
                "checkpoint_step": remote.step,
                "fine_tuned_model_checkpoint": ckpt.artifact_name,
                "aliases": {name: c.artifact_name for name, c in aliases.items()},
                "metrics": metrics,
            },
        )
        doomed = [c.step for c in await policy.retention_candidates(session, ctx.settings, line)]
    if ctx.metrics is not None and step.started_at is not None:
        ctx.metrics.step_seconds.observe((now - step.started_at).total_seconds())
        ctx.metrics.steps.labels(StepStatus.SUCCEEDED).inc()
    if doomed:
        await apply_retention(ctx, doomed)


async def apply_retention(ctx: RunContext, steps: list[int]) -> None:
    """Delete the line's checkpoints that retention no longer keeps, on W&B and here."""
    try:
        deleted, not_found = await ctx.remote(
            "checkpoints.delete", ctx.api.delete_checkpoints(ctx.line.remote_id, steps)
        )
    except RemoteError as exc:
        async with ctx.store.owned() as session:
            await ctx.store.event(
                session,
                f"Retention: could not delete checkpoints {steps} on W&B ({exc}); retried after the next step",
                level="warn",
            )
        return
    async with ctx.store.owned() as session:
        line = ctx.line.model
        await policy.mark_deleted(session, line, steps)
        await ctx.store.event(
            session,
            f"Retention: deleted checkpoint steps {steps} of {line.entity}/{line.project}/{line.name} "
            f"(kept latest, best by {ctx.settings.training.best_metric} and the last "
            f"{ctx.settings.training.keep_last_checkpoints})",
            data={"deleted_steps": steps, "deleted_count": deleted, "not_found_steps": not_found},
        )


async def sweep_late_checkpoints(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    api: TrainingAPI | Callable[[], Awaitable[TrainingAPI]],
    now: dt.datetime,
) -> int:
    """Record the checkpoints W&B produced for abandoned steps of lines no job is training now;
    returns how many were recorded. Safe to run in every worker at once. `api` may be a
    factory: it is only called (ART imported) when some step waits for its checkpoint."""
    since = now - dt.timedelta(seconds=settings.worker.late_checkpoint_window_s)
    other = aliased(FineTuningJob)
    # a job on the line (registered or not yet: matched by name) attributes what its steps find
    busy = (
        sa.select(other.id)
        .where(
            other.project == ServedModel.project,
            other.model_name == ServedModel.name,
            other.status.in_(ACTIVE_STATUSES),
        )
        .exists()
    )
    async with sessionmaker() as session:
        lines = (
            await session.execute(
                sa.select(ServedModel.id, ServedModel.remote_id, sa.func.min(JobStep.base_step))
                .join(FineTuningJob, FineTuningJob.served_model_id == ServedModel.id)
                .join(JobStep, JobStep.job_id == FineTuningJob.id)
                .where(
                    JobStep.status == StepStatus.ABANDONED,
                    JobStep.checkpoint_step.is_(None),
                    JobStep.finished_at >= since,
                    ServedModel.remote_id.is_not(None),
                    ~busy,
                )
                .group_by(ServedModel.id, ServedModel.remote_id)
            )
        ).all()
    if not lines:
        return 0
    if callable(api):
        api = await api()
    recorded = 0
    for line_id, remote_id, base in lines:
        try:
            found = await api.checkpoints_above(str(remote_id), int(base or 0))
        except RemoteError as exc:
            logger.warning("checkpoint.late_sweep_failed line=%s error=%s", line_id, exc)
            continue
        if not found:
            continue
        try:
            async with sessionmaker() as session:
                line = await session.get(ServedModel, line_id)
                running = await session.scalar(
                    sa.select(sa.func.count())
                    .select_from(FineTuningJob)
                    .where(
                        FineTuningJob.served_model_id == line_id, FineTuningJob.status.in_(ACTIVE_STATUSES)
                    )
                )
                if line is None or running:
                    continue
                recorded += len(await attribute_unclaimed(session, line, found))
                await session.commit()
        except IntegrityError:  # another worker recorded them first
            continue
    return recorded
