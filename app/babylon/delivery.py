"""The game's side of the job hand-off (app/jobs/handoff.py drives it): a job that trains a
`training_batches` row moves the batch to `training` when it starts, and when it ends writes
the game's rows (app/babylon/handoff.py: `trained_models`, the batch completed or failed).
With `BABYLON__WATCH_BATCHES` the worker also starts a job for each batch the game queued.

The writes are idempotent, so a retry (or two workers at once) never inserts a second
`trained_models` row.
"""

from __future__ import annotations

import logging
import statistics
import time
import weakref

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.babylon import handoff
from app.babylon.batches import start_batch_training
from app.config import Settings
from app.datasets.models import DatasetGroup
from app.errors import AppError
from app.jobs.handoff import HandoffResult
from app.jobs.models import FineTuningJob, JobStatus
from app.registry.service import ARTIFACT_PREFIX, last_job_checkpoint

logger = logging.getLogger(__name__)


async def _avg_reward(session: AsyncSession, dataset_id: str) -> float | None:
    rows = await session.scalars(sa.select(DatasetGroup.rewards).where(DatasetGroup.dataset_id == dataset_id))
    rewards = [float(r) for group in rows.all() for r in group]
    return statistics.fmean(rewards) if rewards else None


async def _last_loss(session: AsyncSession, job_id: str) -> float | None:
    ckpt = await last_job_checkpoint(session, job_id)
    value = (ckpt.metrics or {}).get("train_loss") if ckpt else None
    return float(value) if isinstance(value, (int, float)) else None


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


class BabylonHandoff:
    name = "babylon"

    def __init__(self) -> None:
        # per worker (each has its own sessionmaker): monotonic time of its next look at the
        # game's pending batches
        self._next_watch: weakref.WeakKeyDictionary[async_sessionmaker[AsyncSession], float] = (
            weakref.WeakKeyDictionary()
        )

    async def wants(self, session: AsyncSession, job: FineTuningJob) -> bool:
        return job.babylon_batch_id is not None

    async def job_started(self, settings: Settings, job: FineTuningJob) -> None:
        url = settings.babylon_database_url
        if job.babylon_batch_id is None or url is None:
            return
        await handoff.mark_training(url, job.babylon_batch_id)

    async def deliver(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], job: FineTuningJob
    ) -> HandoffResult:
        batch_row_id = job.babylon_batch_id
        assert batch_row_id is not None
        url = settings.babylon_database_url
        if url is None:
            return HandoffResult(False, "Hand-off to the game skipped: BABYLON_DATABASE_URL is not set")
        succeeded = job.status == JobStatus.SUCCEEDED and job.fine_tuned_model is not None
        async with sessionmaker() as session:
            avg_reward = await _avg_reward(session, job.dataset_id) if succeeded else None
            loss = await _last_loss(session, job.id) if succeeded else None
        batch = await handoff.load_batch(url, batch_row_id)
        if batch is None:
            return HandoffResult(False, f"Hand-off failed: training batch {batch_row_id} no longer exists")
        if succeeded:
            assert job.fine_tuned_model is not None
            model = await handoff.complete(
                url,
                batch=batch,
                storage_path=job.fine_tuned_model,
                base_model=job.base_model,
                avg_reward=avg_reward,
                training_loss=loss,
                wandb_artifact_id=job.fine_tuned_model.removeprefix(ARTIFACT_PREFIX),
            )
            logger.info("babylon.handoff_done job_id=%s batch=%s", job.id, batch_row_id)
            return HandoffResult(
                True,
                f"Handed off to the game: batch {batch.batch_id} completed, trained_models "
                f"{model.model_id} ({'inserted' if model.inserted else 'already present'}) serves "
                f"{model.storage_path}",
            )
        reason = (job.error or {}).get("message") or f"the training job was {job.status}"
        await handoff.mark_failed(url, batch.id, f"{job.id}: {reason}")
        return HandoffResult(True, f"Hand-off to the game: batch {batch.batch_id} marked failed")

    async def poll(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        """Watch mode: start the game's pending batches every `BABYLON__WATCH_INTERVAL_S`."""
        if not (settings.babylon.watch_batches and settings.babylon_database_url):
            return 0
        now = time.monotonic()
        if now < self._next_watch.get(sessionmaker, 0.0):
            return 0
        self._next_watch[sessionmaker] = now + settings.babylon.watch_interval_s
        return await watch_pending_batches(settings, sessionmaker)
