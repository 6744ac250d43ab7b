"""Finishing a game batch after its job ends (an outbox: `fine_tuning_jobs.handoff_status`).

The job's terminal transition sets `handoff_status='pending'` in the same transaction; this
module then writes the game's rows (app/babylon/handoff.py) and marks the hand-off done. If the
game's database is unreachable, the worker retries later; the writes are idempotent, so a
retry (or two workers at once) never inserts a second `trained_models` row.
"""

from __future__ import annotations

import logging
import statistics

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.babylon import handoff
from app.babylon.batches import start_batch_training
from app.config import Settings
from app.datasets.models import DatasetGroup
from app.errors import AppError
from app.jobs.events import add_event
from app.jobs.models import TERMINAL_STATUSES, FineTuningJob, JobStatus
from app.registry.models import Checkpoint

logger = logging.getLogger(__name__)
ARTIFACT_PREFIX = "wandb-artifact:///"


async def _avg_reward(session: AsyncSession, dataset_id: str) -> float | None:
    rows = await session.scalars(sa.select(DatasetGroup.rewards).where(DatasetGroup.dataset_id == dataset_id))
    rewards = [float(r) for group in rows.all() for r in group]
    return statistics.fmean(rewards) if rewards else None


async def _last_loss(session: AsyncSession, job_id: str) -> float | None:
    ckpt = await session.scalar(
        sa.select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()).limit(1)
    )
    value = (ckpt.metrics or {}).get("train_loss") if ckpt else None
    return float(value) if isinstance(value, (int, float)) else None


async def _finish(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: str, outcome: str, message: str, level: str
) -> None:
    async with sessionmaker() as session:
        result = await session.execute(
            sa.update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.handoff_status == "pending")
            .values(handoff_status=outcome)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0):
            await add_event(session, job_id, message, level="error" if level == "error" else "info")
        await session.commit()


async def process_handoff(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], job_id: str
) -> None:
    async with sessionmaker() as session:
        job = await session.get(FineTuningJob, job_id)
        if job is None or job.handoff_status != "pending" or job.status not in TERMINAL_STATUSES:
            return
        batch_row_id = job.babylon_batch_id
        assert batch_row_id is not None
        avg_reward = await _avg_reward(session, job.dataset_id) if job.status == JobStatus.SUCCEEDED else None
        loss = await _last_loss(session, job.id) if job.status == JobStatus.SUCCEEDED else None
    url = settings.babylon_database_url
    if url is None:
        await _finish(
            sessionmaker,
            job_id,
            "failed",
            "Hand-off to the game skipped: BABYLON_DATABASE_URL is not set",
            "error",
        )
        return
    try:
        batch = await handoff.load_batch(url, batch_row_id)
        if batch is None:
            await _finish(
                sessionmaker,
                job_id,
                "failed",
                f"Hand-off failed: training batch {batch_row_id} no longer exists",
                "error",
            )
            return
        if job.status == JobStatus.SUCCEEDED and job.fine_tuned_model:
            model = await handoff.complete(
                url,
                batch=batch,
                storage_path=job.fine_tuned_model,
                base_model=job.base_model,
                avg_reward=avg_reward,
                training_loss=loss,
                wandb_artifact_id=job.fine_tuned_model.removeprefix(ARTIFACT_PREFIX),
            )
            message = (
                f"Handed off to the game: batch {batch.batch_id} completed, trained_models "
                f"{model.model_id} ({'inserted' if model.inserted else 'already present'}) serves "
                f"{model.storage_path}"
            )
        else:
            reason = (job.error or {}).get("message") or f"the training job was {job.status}"
            await handoff.mark_failed(url, batch.id, f"{job.id}: {reason}")
            message = f"Hand-off to the game: batch {batch.batch_id} marked failed"
    except Exception as exc:  # the game's DB may be down: stay pending, retry later
        logger.warning("babylon.handoff_retry job_id=%s error=%s", job_id, exc)
        return
    await _finish(sessionmaker, job_id, "done", message, "info")
    logger.info("babylon.handoff_done job_id=%s batch=%s", job_id, batch_row_id)


async def watch_pending_batches(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Start a job for each `pending` batch of the game (oldest first); returns how many started."""
    url = settings.babylon_database_url
    if url is None:
        return 0
    started = 0
    for batch in await handoff.pending_batches(url, limit=5):
        async with sessionmaker() as session:
            try:
                _job, _batch, created = await start_batch_training(
                    session, settings, batch_id=batch.id, source="watch"
                )
                await session.commit()
            except IntegrityError:
                await session.rollback()  # another worker started it
                continue
            except AppError as exc:
                await session.rollback()
                await handoff.mark_failed(url, batch.id, exc.message)
                logger.warning("babylon.batch_rejected batch=%s error=%s", batch.batch_id, exc.message)
                continue
        await handoff.mark_training(url, batch.id)
        started += int(created)
    return started
