"""Runs one claimed job to a terminal state: validate, start, register the model line, then its
steps one after the other (app/training/steps.py), and end it succeeded, failed or cancelled.

A job can be stopped at any point (app/training/control.py):

* cancel: the job ends `cancelled` within `WORKER__POLL_INTERVAL_S` wherever it stands (waiting
  for its dataset, sending a step, following W&B's events, resolving a lost answer, waiting for
  the checkpoint); a step W&B may still finish is `abandoned`, and the cancel event says so.
  Every transaction that advances the job re-checks the cancel flag under the job's row lock,
  so nothing is sent or recorded as done after a cancel was accepted;
* shutdown: the job stops at its next wait (a training POST in flight lands and is recorded
  first) and is handed back; any worker resumes it from the stored step state;
* lost lease: another worker owns the job now; this one stops without writing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.models import Dataset, DatasetStatus
from app.errors import AppError
from app.jobs import handoff, service
from app.jobs.models import FineTuningJob, JobStatus, JobStep, StepStatus
from app.jobs.states import transition
from app.queue.leases import LeaseLost, release
from app.registry.models import ServedModel
from app.registry.service import get_or_create_model
from app.training.context import JobFailed, Line, RunContext, Shield
from app.training.control import Clock, Control, Interrupted, Stop
from app.training.metrics import TrainingMetrics
from app.training.remote import RemoteRejected, TrainingAPI
from app.training.steps import FINAL, StepDriver, drive, plan
from app.training.store import JobStore, JobView

logger = logging.getLogger(__name__)
UNREGISTERED = Line(id="", remote_id="", entity="", project="", name="")


@dataclass
class RunnerContext:
    """What a runner needs from its worker."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    worker_id: str
    trainer: Callable[[], Awaitable[TrainingAPI]]
    shield: Shield
    after_finish: Callable[[str], Awaitable[None]]
    metrics: TrainingMetrics | None = None
    clock: Clock | None = None


class JobRunner:
    def __init__(self, ctx: RunnerContext, job_id: str) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.job_id = job_id
        self.control = Control(ctx.clock or Clock())
        self.store = JobStore(ctx.sessionmaker, job_id, ctx.worker_id)

    def stop(self, reason: Stop) -> None:
        """Stop at the next wait or W&B call: never inside a DB transaction."""
        self.control.stop(reason)

    # -- entry point ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                await self._run()
            except JobFailed as failure:
                await self._fail(failure)
        except Interrupted as stop:
            await self._stopped(stop.reason)
        except LeaseLost:
            logger.warning("job.lease_lost job_id=%s worker=%s", self.job_id, self.ctx.worker_id)
        except asyncio.CancelledError:
            # last resort (the worker stopped waiting): the step state is still resumable
            if self.control.reason != Stop.LEASE_LOST:
                await self.ctx.shield(self._release())
            raise
        except DBAPIError:
            # the service DB is unreachable: nothing can be recorded; another attempt resumes
            logger.exception("job.db_error job_id=%s", self.job_id)
            try:
                await self._release()
            except Exception:  # the lease expires anyway
                logger.warning("job.release_failed job_id=%s", self.job_id)
        except Exception as exc:
            logger.exception("job.crashed job_id=%s", self.job_id)
            await self._fail(
                JobFailed("internal_error", f"the worker failed unexpectedly: {type(exc).__name__}: {exc}")
            )

    async def _stopped(self, reason: Stop) -> None:
        if reason == Stop.CANCEL:
            await self._cancel()
        elif reason == Stop.HALT:
            # graceful shutdown: everything is stored; hand the job back so any worker resumes it
            await self._release()
        else:
            logger.warning("job.lease_lost job_id=%s worker=%s", self.job_id, self.ctx.worker_id)

    async def _release(self) -> None:
        async with self.ctx.sessionmaker() as session:
            await release(session, FineTuningJob, self.job_id, self.ctx.worker_id)
        logger.info("job.released job_id=%s worker=%s", self.job_id, self.ctx.worker_id)

    async def _run(self) -> None:
        job = await self.store.job()
        if job.cancel_requested:
            raise Interrupted(Stop.CANCEL)
        if job.status == JobStatus.VALIDATING:
            group_count = await self._validate(job)
            job.status = JobStatus.QUEUED
        else:
            group_count = await self._group_count(job)
        await self._start(job)
        await self._tell_games_it_started()
        ctx = RunContext(
            settings=self.settings,
            store=self.store,
            api=await self._trainer(),
            control=self.control,
            job=job,
            line=UNREGISTERED,
            shield=self.ctx.shield,
            metrics=self.ctx.metrics,
            group_count=group_count,
        )
        ctx.line = await self._ensure_model(ctx)
        driver = StepDriver(ctx)
        step = await self.store.last_step()
        while True:
            if step is None or step.status == StepStatus.SUCCEEDED:
                number = step.number + 1 if step is not None else 1
                if number > job.total_steps:
                    await self._succeed()
                    return
                step = plan(ctx, number)
            elif step.status in FINAL:  # a failure whose job ending was not stored: end it now
                raise JobFailed(
                    str((step.error or {}).get("code") or f"step_{step.status}"),
                    f"step {step.number} is {step.status}: {(step.error or {}).get('message', 'no detail')}",
                )
            with ctx.phase("step"):
                await drive(driver, step)

    async def _trainer(self) -> TrainingAPI:
        if self.settings.wandb_api_key is None:
            raise JobFailed(
                "wandb_not_configured",
                f"WANDB_API_KEY is not set on worker {self.ctx.worker_id}; set it on every worker that trains",
            )
        return await self.ctx.trainer()

    # -- validation (jobs created before their dataset was built: POST /train) --------------

    async def _validate(self, job: JobView) -> int:
        """Wait for the job's dataset to be built (a work item, built by any worker), check it."""
        while True:
            dataset = await self.store.read(lambda s: s.get(Dataset, job.dataset_id))
            if dataset is None:
                raise JobFailed("file_not_found", f"dataset {job.dataset_id} does not exist", "training_file")
            if dataset.status not in (DatasetStatus.QUEUED, DatasetStatus.BUILDING):
                break
            await self.control.sleep(self.settings.worker.poll_interval_s)
        try:
            service.check_dataset_trainable(dataset, job.training_file)
        except AppError as exc:
            raise JobFailed(exc.code or "invalid_training_file", exc.message, exc.param) from None
        job.total_steps = service.total_steps(dataset.group_count, job.hp)
        async with self.store.owned() as session:
            owned = await session.get(FineTuningJob, job.id)
            assert owned is not None
            owned.total_steps = job.total_steps
            await self.store.event(
                session,
                f"Validated training file {job.training_file}: {dataset.group_count} groups, "
                f"{dataset.trainable_turns} trainable turns; {job.total_steps} steps planned",
                data={"groups": dataset.group_count, "trainable_turns": dataset.trainable_turns},
            )
            transition(owned, JobStatus.QUEUED)
        return dataset.group_count

    async def _group_count(self, job: JobView) -> int:
        count = await self.store.read(
            lambda s: s.scalar(sa.select(Dataset.group_count).where(Dataset.id == job.dataset_id))
        )
        if count is None:
            raise JobFailed("file_not_found", f"dataset {job.dataset_id} was deleted", "training_file")
        return int(count)

    async def _start(self, job: JobView) -> None:
        async with self.store.owned() as session:
            if job.status == JobStatus.QUEUED:
                owned = await session.get(FineTuningJob, job.id)
                assert owned is not None
                transition(owned, JobStatus.RUNNING)
                await self.store.event(session, f"Fine-tuning job started (worker {self.ctx.worker_id})")
            else:
                await self.store.event(
                    session,
                    f"Resumed by worker {self.ctx.worker_id} (attempt {job.attempts}) after "
                    f"{job.completed_steps} of {job.total_steps} steps",
                )
        job.status = JobStatus.RUNNING

    # -- model line ---------------------------------------------------------------------------

    async def _ensure_model(self, ctx: RunContext) -> Line:
        job, api = ctx.job, ctx.api
        if job.served_model_id is not None:
            model = await self.store.read(lambda s: s.get(ServedModel, job.served_model_id))
            if model is not None and model.remote_id:
                return Line(model.id, model.remote_id, model.entity, model.project, model.name)
        try:
            remote = await ctx.with_retries(
                "registering the model on W&B",
                "models.create",
                lambda: api.register(
                    name=job.model_name, project=job.project, entity=job.entity, base_model=job.base_model
                ),
                deadline_s=self.settings.worker.step_watchdog_s,
            )
        except RemoteRejected as exc:
            raise JobFailed(
                "wandb_register_failed", f"W&B refused to register model {job.model_name}: {exc.describe()}"
            ) from None
        async with self.store.owned() as session:
            model = await get_or_create_model(
                session,
                entity=remote.entity,
                project=remote.project,
                name=remote.name,
                base_model=job.base_model,
                remote_id=remote.id,
            )
            await session.execute(
                sa.update(FineTuningJob)
                .where(FineTuningJob.id == job.id)
                .values(entity=remote.entity, served_model_id=model.id)
            )
            await self.store.event(
                session,
                f"Model line {remote.entity}/{remote.project}/{remote.name} registered on W&B (model id {remote.id})",
                data={
                    "entity": remote.entity,
                    "project": remote.project,
                    "name": remote.name,
                    "model_id": remote.id,
                },
            )
        job.entity, job.served_model_id = remote.entity, model.id
        return Line(model.id, remote.id, remote.entity, remote.project, remote.name)

    # -- endings -------------------------------------------------------------------------------

    async def _succeed(self) -> None:
        async with self.store.owned() as session:  # a cancel accepted before this wins
            job = await session.get(FineTuningJob, self.job_id)
            assert job is not None
            await service.finish_job(
                session,
                self.settings,
                job,
                JobStatus.SUCCEEDED,
                message=f"The job has successfully completed: {job.fine_tuned_model}",
            )
        logger.info("job.succeeded job_id=%s", self.job_id)
        await self._finished(JobStatus.SUCCEEDED)

    async def _cancel(self) -> None:
        async with self.store.owned(finishing=True) as session:
            job = await session.get(FineTuningJob, self.job_id)
            assert job is not None
            await service.finish_cancelled(session, self.settings, job)
        logger.info("job.cancelled job_id=%s", self.job_id)
        await self._finished(JobStatus.CANCELLED)

    async def _fail(self, failure: JobFailed) -> None:
        try:
            async with self.store.owned(finishing=True) as session:
                job = await session.get(FineTuningJob, self.job_id)
                assert job is not None
                if job.cancel_requested_at is not None:  # an accepted cancel always ends cancelled
                    await service.finish_cancelled(session, self.settings, job)
                    failure = JobFailed(failure.code, failure.message)
                    status = JobStatus.CANCELLED
                else:
                    await self._end_step(session, failure)
                    await service.finish_job(
                        session,
                        self.settings,
                        job,
                        JobStatus.FAILED,
                        message=f"Job failed ({failure.code}): {failure.message}",
                        error=failure.as_error(),
                    )
                    status = JobStatus.FAILED
        except LeaseLost:
            return
        logger.warning(
            "job.%s job_id=%s code=%s message=%s", status, self.job_id, failure.code, failure.message
        )
        await self._finished(status)

    async def _end_step(self, session: AsyncSession, failure: JobFailed) -> None:
        """The open step ends as the failure says (abandoned: W&B may still finish it)."""
        if failure.step_status is None:
            return
        step = await session.scalar(
            sa.select(JobStep).where(JobStep.job_id == self.job_id).order_by(JobStep.number.desc()).limit(1)
        )
        if step is None or step.status in FINAL:
            return
        step.status = failure.step_status
        step.error = {"code": failure.code, "message": failure.message}
        step.finished_at = self.control.clock.now()
        if self.ctx.metrics is not None:
            self.ctx.metrics.steps.labels(failure.step_status).inc()

    async def _finished(self, status: JobStatus) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.jobs_finished.labels(status).inc()
        await self.ctx.after_finish(self.job_id)

    async def _tell_games_it_started(self) -> None:
        """The game hand-off (app/jobs/handoff.py): a job on a game's data started training."""
        job = await self.store.read(lambda session: session.get(FineTuningJob, self.job_id))
        if job is not None:
            await handoff.job_started(self.settings, job)
