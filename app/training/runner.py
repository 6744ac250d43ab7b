"""Runs one claimed job to a terminal state, one durable step at a time.

A step's life, each arrow a committed write:

    pending → (base checkpoint step read) submitting → POST → submitted(remote id) → events… → succeeded
                                                           ↘ unknown (timeout/drop/5xx) → checkpoints → succeeded | failed

* `submitting` is stored with the model's newest checkpoint step *before* the POST; a worker
  that finds a step in `submitting` or `unknown` cannot know whether W&B accepted it, and
  decides by reading the model's checkpoints (a checkpoint beyond the stored base step means
  the step ran). It never posts again; if nothing appears in `WORKER__SUBMIT_RESOLUTION_S`,
  the job fails with `submission_unknown`.
* `submitted` steps store the remote job id and the last event id after every page of events,
  so a restarted worker resumes polling where the previous one stopped.
* Cancellation is honoured between steps: W&B has no cancel endpoint, so a step already sent
  runs to its end and its checkpoint is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.models import Dataset, DatasetGroup
from app.datasets.service import build_dataset
from app.db import utcnow
from app.errors import AppError
from app.jobs import handoff, service
from app.jobs.events import add_event
from app.jobs.hyperparameters import Hyperparameters
from app.jobs.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STEP_FAILED,
    STEP_PENDING,
    STEP_SUBMITTED,
    STEP_SUBMITTING,
    STEP_SUCCEEDED,
    STEP_UNKNOWN,
    SUCCEEDED,
    VALIDATING,
    FineTuningJob,
    JobStep,
)
from app.jobs.states import transition
from app.registry import policy as ckpt_policy
from app.registry.models import ServedModel
from app.registry.service import get_or_create_model, record_checkpoint
from app.training.groups import reward_metrics, trajectory_groups
from app.training.wandb_api import (
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteRateLimited,
    RemoteRejected,
    WandbTraining,
)
from app.worker.claims import LeaseLost, assert_owner, release

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF_S = 30.0


class Halted(Exception):
    """The worker is stopping (or lost the lease): leave the job at a safe point, resumable."""


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class RunnerContext:
    """What a runner needs from its worker."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    worker_id: str
    trainer: Callable[[], Awaitable[WandbTraining]]
    # runs a coroutine that must finish even if the job task is cancelled (last-resort stop)
    shield: Callable[[Awaitable[Any]], Awaitable[Any]]
    after_finish: Callable[[str], Awaitable[None]]


def _numeric(data: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _fmt(metrics: dict[str, float], *keys: str) -> str:
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if k in metrics]
    return ", ".join(parts)


class JobRunner:
    def __init__(self, ctx: RunnerContext, job_id: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.settings = ctx.settings
        self.started_monotonic = time.monotonic()
        self._halt = asyncio.Event()
        self.lease_lost = False

    def halt(self, *, lease_lost: bool = False) -> None:
        """Stop at the next safe point: a wait or a remote call, never inside a DB transaction
        (a transaction cut by task cancellation can leave SQLite's write lock held)."""
        self.lease_lost = self.lease_lost or lease_lost
        self._halt.set()

    # -- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def owned(self) -> AsyncIterator[tuple[AsyncSession, FineTuningJob]]:
        """A transaction on the locked job row, only while this worker holds the lease."""
        async with self.ctx.sessionmaker() as session:
            job = await assert_owner(session, self.job_id, self.ctx.worker_id)
            yield session, job
            await session.commit()

    async def _read(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self.ctx.sessionmaker() as session:
            return await fn(session)

    async def _job(self) -> FineTuningJob:
        return await self._read(lambda s: service.get_job(s, self.job_id))

    async def _step(self, step_id: int) -> JobStep:
        async def get(s: AsyncSession) -> JobStep:
            step = await s.get(JobStep, step_id)
            assert step is not None
            return step

        return await self._read(get)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._halt.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return
        raise Halted

    async def _remote(self, awaitable: Awaitable[T]) -> T:
        """A W&B call that a halt interrupts (no DB transaction is open around remote calls)."""
        if self._halt.is_set():
            raise Halted
        call = asyncio.ensure_future(awaitable)
        halted = asyncio.ensure_future(self._halt.wait())
        try:
            await asyncio.wait({call, halted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halted.cancel()
        if call.done():
            return call.result()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call
        raise Halted

    # -- entry point ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except LeaseLost:
            logger.warning("job.lease_lost job_id=%s worker=%s", self.job_id, self.ctx.worker_id)
        except Halted:
            # graceful shutdown: everything is stored; hand the job back so any worker resumes it
            if not self.lease_lost:
                await self._release()
        except JobFailed as failure:
            await self._fail(failure)
        except asyncio.CancelledError:
            # last resort (the worker stopped waiting): the step state is still resumable
            if not self.lease_lost:
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

    async def _release(self) -> None:
        async with self.ctx.sessionmaker() as session:
            await release(session, self.job_id, self.ctx.worker_id)
        logger.info("job.released job_id=%s worker=%s", self.job_id, self.ctx.worker_id)

    async def _run(self) -> None:
        job = await self._job()
        if job.status == VALIDATING:
            await self._validate()
        job = await self._job()
        if job.status == QUEUED:
            if job.cancel_requested_at is not None:
                await self._cancel(job)
                return
            async with self.owned() as (session, owned_job):
                transition(owned_job, RUNNING)
                add_event(session, owned_job.id, f"Fine-tuning job started (worker {self.ctx.worker_id})")
        elif job.status == RUNNING:
            async with self.owned() as (session, owned_job):
                add_event(
                    session,
                    owned_job.id,
                    f"Resumed by worker {self.ctx.worker_id} (attempt {owned_job.attempts}) after "
                    f"{owned_job.completed_steps} of {owned_job.total_steps} steps",
                )
        await handoff.job_started(self.settings, job)  # the game hand-off (app/jobs/handoff.py)
        trainer = await self._trainer()
        model = await self._ensure_model(trainer)
        while True:
            step = await self._next_step()
            if step is None:
                await self._succeed()
                return
            if step.status == STEP_PENDING:
                if (await self._job()).cancel_requested_at is not None:
                    await self._cancel(await self._job())
                    return
                await self._submit(trainer, model, step)
                step = await self._step(step.id)
            if step.status in (STEP_SUBMITTING, STEP_UNKNOWN):
                await self._resolve_unknown(trainer, model, step)
            elif step.status == STEP_SUBMITTED:
                await self._follow(trainer, model, step)

    async def _trainer(self) -> WandbTraining:
        if self.settings.wandb_api_key is None:
            raise JobFailed(
                "wandb_not_configured", "WANDB_API_KEY is not set on the worker; no training possible"
            )
        return await self.ctx.trainer()

    # -- validation (jobs created before their dataset was built: POST /train) --------------

    async def _validate(self) -> None:
        job = await self._job()
        dataset = await self._read(lambda s: s.get(Dataset, job.dataset_id))
        if dataset is None:
            raise JobFailed("file_not_found", f"dataset {job.dataset_id} does not exist", "training_file")
        while dataset.status in ("queued", "building"):
            if dataset.status == "queued":
                # built here, under this job's lease (the pipeline's builder claims it first)
                dataset = await build_dataset(self.ctx.sessionmaker, self.settings, dataset.id)
            else:  # another process is building it (a dead builder is failed by the pipeline)
                await self._sleep(self.settings.worker.poll_interval_s * 10)
                reloaded = await self._read(lambda s: s.get(Dataset, job.dataset_id))
                assert reloaded is not None
                dataset = reloaded
        try:
            service.check_dataset_trainable(dataset, job.training_file)
        except AppError as exc:
            raise JobFailed(exc.code or "invalid_training_file", exc.message, exc.param) from None
        hp = Hyperparameters.model_validate(job.hyperparameters)
        async with self.owned() as (session, owned_job):
            owned_job.total_steps = service.total_steps(dataset.group_count, hp)
            add_event(
                session,
                owned_job.id,
                f"Validated training file {owned_job.training_file}: {dataset.group_count} groups, "
                f"{dataset.trainable_turns} trainable turns; {owned_job.total_steps} steps planned",
                data={"groups": dataset.group_count, "trainable_turns": dataset.trainable_turns},
            )
            transition(owned_job, QUEUED)

    # -- model line ---------------------------------------------------------------------------

    async def _with_retries(self, what: str, call: Callable[[], Awaitable[T]], *, deadline_s: float) -> T:
        """Retry a read-only W&B call through transient failures until `deadline_s`."""
        deadline = time.monotonic() + deadline_s
        delay = self.settings.worker.event_poll_interval_s
        while True:
            try:
                return await self._remote(call())
            except RemoteRejected:
                raise
            except RemoteError as exc:
                if time.monotonic() + delay > deadline:
                    raise JobFailed(
                        "wandb_unavailable", f"{what} failed for {deadline_s:.0f}s: {exc}"
                    ) from None
                logger.warning("job.remote_retry job_id=%s what=%s error=%s", self.job_id, what, exc)
                await self._sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _ensure_model(self, trainer: WandbTraining) -> ServedModel:
        job = await self._job()
        if job.served_model_id is not None:
            model = await self._read(lambda s: s.get(ServedModel, job.served_model_id))
            if model is not None and model.remote_id:
                return model
        try:
            remote = await self._with_retries(
                "registering the model on W&B",
                lambda: trainer.register(
                    name=job.model_name, project=job.project, entity=job.entity, base_model=job.base_model
                ),
                deadline_s=self.settings.worker.step_watchdog_s,
            )
        except RemoteRejected as exc:
            raise JobFailed(
                "wandb_register_failed", f"W&B refused to register model {job.model_name}: {exc}"
            ) from None
        async with self.owned() as (session, owned_job):
            model = await get_or_create_model(
                session,
                entity=remote.entity,
                project=remote.project,
                name=remote.name,
                base_model=owned_job.base_model,
                remote_id=remote.id,
            )
            owned_job.entity = remote.entity
            owned_job.served_model_id = model.id
            add_event(
                session,
                owned_job.id,
                f"Model line {remote.entity}/{remote.project}/{remote.name} registered on W&B (model id {remote.id})",
                data={
                    "entity": remote.entity,
                    "project": remote.project,
                    "name": remote.name,
                    "model_id": remote.id,
                },
            )
        return model

    # -- steps ----------------------------------------------------------------------------------

    async def _next_step(self) -> JobStep | None:
        """The first unfinished step, planning the next one when the previous succeeded."""
        async with self.owned() as (session, job):
            last = await session.scalar(
                sa.select(JobStep).where(JobStep.job_id == job.id).order_by(JobStep.number.desc()).limit(1)
            )
            if last is not None and last.status != STEP_SUCCEEDED:
                return last
            number = last.number + 1 if last is not None else 1
            if number > job.total_steps:
                return None
            dataset = await session.get(Dataset, job.dataset_id)
            if dataset is None:
                raise JobFailed("file_not_found", f"dataset {job.dataset_id} was deleted", "training_file")
            hp = Hyperparameters.model_validate(job.hyperparameters)
            plan = service.plan_step(number, dataset.group_count, hp, job.seed)
            step = JobStep(
                job_id=job.id,
                number=number,
                status=STEP_PENDING,
                epoch=plan.epoch,
                group_positions=plan.group_positions,
                gradient_steps=0,
                metric_sums={},
            )
            session.add(step)
            await session.flush()
            return step

    async def _group_rows(self, job: FineTuningJob, positions: list[int]) -> list[DatasetGroup]:
        async def load(s: AsyncSession) -> list[DatasetGroup]:
            rows = await s.scalars(
                sa.select(DatasetGroup).where(
                    DatasetGroup.dataset_id == job.dataset_id, DatasetGroup.position.in_(positions)
                )
            )
            by_position = {r.position: r for r in rows.all()}
            return [by_position[p] for p in positions if p in by_position]

        return await self._read(load)

    async def _submit(self, trainer: WandbTraining, model: ServedModel, step: JobStep) -> None:
        """Send the step once. Leaves it `submitted` or `unknown`, or raises JobFailed."""
        assert model.remote_id is not None
        job = await self._job()
        rows = await self._group_rows(job, step.group_positions)
        if not rows:
            raise JobFailed(
                "no_trainable_data", f"step {step.number}: its groups are missing from the dataset"
            )
        groups = trajectory_groups(rows)
        hp = Hyperparameters.model_validate(job.hyperparameters)
        n_traj = sum(len(r.trajectories) for r in rows)
        rate_limited = 0
        while True:
            base = await self._with_retries(
                "reading the model's latest checkpoint",
                lambda: trainer.latest_step(model.remote_id or ""),
                deadline_s=self.settings.worker.step_watchdog_s,
            )
            async with self.owned() as (session, _job):
                row = await session.get(JobStep, step.id)
                assert row is not None
                row.base_step = base
                row.status = STEP_SUBMITTING
                row.submit_started_at = utcnow()
                row.error = None
            outcome = await self.ctx.shield(
                self._post_and_record(trainer, model, step, groups, hp, len(rows), n_traj, job.total_steps)
            )
            if outcome != "rate_limited":
                return
            rate_limited += 1
            if rate_limited > self.settings.worker.rate_limit_retries:
                raise JobFailed(
                    "wandb_rate_limited",
                    f"W&B refused step {step.number} with 429 {rate_limited} times; try again later",
                )
            await self._sleep(
                min(self.settings.worker.event_poll_interval_s * 2**rate_limited, MAX_BACKOFF_S)
            )

    async def _post_and_record(
        self,
        trainer: WandbTraining,
        model: ServedModel,
        step: JobStep,
        groups: list[Any],
        hp: Hyperparameters,
        n_groups: int,
        n_traj: int,
        total: int,
    ) -> str:
        """The POST and the write of what came of it, as one unit that survives task cancellation."""
        try:
            remote_id = await trainer.submit(model.remote_id or "", groups, hp)
        except RemoteRateLimited as exc:
            async with self.owned() as (session, job):
                row = await session.get(JobStep, step.id)
                assert row is not None
                row.status = STEP_PENDING
                add_event(
                    session,
                    job.id,
                    f"Step {step.number}/{total}: W&B is rate limiting ({exc}); retrying",
                    level="warn",
                )
            return "rate_limited"
        except RemoteRejected as exc:
            async with self.owned() as (session, job):
                row = await session.get(JobStep, step.id)
                assert row is not None
                row.status = STEP_FAILED
                row.error = {"code": "training_rejected", "message": str(exc)}
            raise JobFailed(
                "training_rejected", f"W&B refused the training request of step {step.number}: {exc}"
            ) from None
        except RemoteError as exc:
            async with self.owned() as (session, job):
                row = await session.get(JobStep, step.id)
                assert row is not None
                row.status = STEP_UNKNOWN
                row.error = {"code": "submission_unknown", "message": str(exc)}
                add_event(
                    session,
                    job.id,
                    f"Step {step.number}/{total}: W&B's answer to the training request was lost ({exc}). "
                    "It is not sent again; whether it ran is decided from the model's checkpoints",
                    level="warn",
                    data={"step": step.number, "base_checkpoint_step": row.base_step},
                )
            return "unknown"
        async with self.owned() as (session, job):
            row = await session.get(JobStep, step.id)
            assert row is not None
            now = utcnow()
            row.status = STEP_SUBMITTED
            row.remote_job_id = remote_id
            row.submitted_at = now
            row.last_event_at = now
            add_event(
                session,
                job.id,
                f"Step {step.number}/{total} sent to W&B as training job {remote_id} "
                f"({n_groups} groups, {n_traj} trajectories)",
                data={
                    "step": step.number,
                    "remote_job_id": remote_id,
                    "groups": n_groups,
                    "trajectories": n_traj,
                },
            )
        return "submitted"

    async def _resolve_unknown(self, trainer: WandbTraining, model: ServedModel, step: JobStep) -> None:
        """Did the step whose POST outcome is unknown run? A checkpoint beyond its base step says yes."""
        started = step.submit_started_at or utcnow()
        deadline = started + dt.timedelta(seconds=self.settings.worker.submit_resolution_s)
        base = step.base_step or 0
        delay = self.settings.worker.event_poll_interval_s
        while True:
            try:
                found = await self._remote(trainer.checkpoints_after(model.remote_id or "", base))
            except RemoteError as exc:
                logger.warning("job.resolve_retry job_id=%s step=%s error=%s", self.job_id, step.number, exc)
                found = []
            if found:
                await self._complete_step(trainer, model, step.id, found[0], resolved=True)
                return
            remaining = (deadline - utcnow()).total_seconds()
            if remaining <= 0:
                async with self.owned() as (session, _job):
                    row = await session.get(JobStep, step.id)
                    assert row is not None
                    row.status = STEP_FAILED
                raise JobFailed(
                    "submission_unknown",
                    f"The training request of step {step.number} may or may not have reached W&B "
                    f"({(step.error or {}).get('message', 'the worker stopped while sending it')}), and no new "
                    f"checkpoint appeared after step {base} within {self.settings.worker.submit_resolution_s:.0f}s. "
                    "It was not sent again, to avoid training the same data twice. Check the model's "
                    "checkpoints on W&B, then start a new job.",
                )
            await self._sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _follow(self, trainer: WandbTraining, model: ServedModel, step: JobStep) -> None:
        """Poll the remote job's events from the stored cursor until it ends, fails or stalls."""
        watchdog = self.settings.worker.step_watchdog_s
        poll = self.settings.worker.event_poll_interval_s
        after = step.last_event_id
        # a resumed worker gives the step a full watchdog window from its first poll
        last_seen = max((step.last_event_at or utcnow()).timestamp(), time.time() - self._uptime())
        delay = poll
        while True:
            silent_for = time.time() - last_seen
            if silent_for > watchdog:
                raise JobFailed(
                    "step_stalled",
                    f"Step {step.number}: no training event from W&B for {watchdog:.0f}s "
                    f"(remote job {step.remote_job_id}). W&B has no cancel endpoint; the remote job may still finish.",
                )
            try:
                events, more = await self._remote(trainer.events(step.remote_job_id or "", after))
            except RemoteRejected as exc:
                raise JobFailed(
                    "remote_job_lost",
                    f"Step {step.number}: W&B no longer knows training job {step.remote_job_id}: {exc}",
                ) from None
            except RemoteError as exc:
                logger.warning("job.events_retry job_id=%s step=%s error=%s", self.job_id, step.number, exc)
                await self._sleep(min(delay, max(0.0, watchdog - silent_for) + 0.01))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            delay = poll
            if events:
                ended, failure = await self._record_events(step, events)
                after = events[-1].id
                last_seen = time.time()
                if failure is not None:
                    async with self.owned() as (session, _job):
                        row = await session.get(JobStep, step.id)
                        assert row is not None
                        row.status = STEP_FAILED
                        row.error = {"code": "training_failed", "message": failure}
                    raise JobFailed(
                        "training_failed", f"W&B reported that step {step.number} failed: {failure}"
                    )
                if ended:
                    ckpt = await self._await_checkpoint(trainer, model, step)
                    await self._complete_step(trainer, model, step.id, ckpt, resolved=False)
                    return
                if more:
                    continue
            await self._sleep(min(poll, max(0.0, watchdog - (time.time() - last_seen)) + 0.01))

    def _uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    async def _record_events(self, step: JobStep, events: list[RemoteEvent]) -> tuple[bool, str | None]:
        ended, failure = False, None
        async with self.owned() as (session, job):
            row = await session.get(JobStep, step.id)
            assert row is not None
            sums = dict(row.metric_sums or {})
            for event in events:
                if ended or failure is not None:
                    break
                if event.type == "training_ended":
                    # the cursor stays before the final event: a worker that stops before the
                    # checkpoint is recorded reads it again when it resumes
                    ended = True
                    break
                if event.type == "training_failed":
                    failure = str(event.data.get("error_message") or "Training failed with an unknown error")
                    break
                row.last_event_id = event.id
                if event.type == "training_started":
                    row.num_sequences = int(event.data.get("num_sequences") or 0) or None
                    add_event(
                        session,
                        job.id,
                        f"Step {row.number}/{job.total_steps}: training started on W&B "
                        f"({row.num_sequences or '?'} gradient steps)",
                    )
                elif event.type == "gradient_step":
                    row.gradient_steps += 1
                    values = _numeric(event.data)
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0.0) + value
                    add_event(
                        session,
                        job.id,
                        f"Step {row.number}/{job.total_steps}, gradient step {row.gradient_steps}"
                        + (f"/{row.num_sequences}" if row.num_sequences else "")
                        + (f": {_fmt(values, 'loss', 'grad_norm')}" if values else ""),
                        type_="metrics",
                        data={"step": row.number, "gradient_step": row.gradient_steps, **values},
                    )
            row.metric_sums = sums
            row.last_event_at = utcnow()
        return ended, failure

    async def _await_checkpoint(
        self, trainer: WandbTraining, model: ServedModel, step: JobStep
    ) -> RemoteCheckpoint:
        """W&B registers the checkpoint before `training_ended`; wait briefly in case it lags."""
        step = await self._step(step.id)
        base = step.base_step or 0
        deadline = time.monotonic() + self.settings.worker.checkpoint_wait_s
        delay = self.settings.worker.event_poll_interval_s
        while True:
            try:
                found = await self._remote(trainer.checkpoints_after(model.remote_id or "", base))
            except RemoteError as exc:
                logger.warning("job.checkpoint_retry job_id=%s error=%s", self.job_id, exc)
                found = []
            if found:
                return found[0]
            if time.monotonic() + delay > deadline:
                raise JobFailed(
                    "checkpoint_missing",
                    f"Step {step.number} ended on W&B but no checkpoint after step {base} was listed "
                    f"within {self.settings.worker.checkpoint_wait_s:.0f}s",
                )
            await self._sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def _complete_step(
        self,
        trainer: WandbTraining,
        model: ServedModel,
        step_id: int,
        remote: RemoteCheckpoint,
        *,
        resolved: bool,
    ) -> None:
        job = await self._job()
        step = await self._step(step_id)

        async def load_rewards(s: AsyncSession) -> list[tuple[list[float], int]]:
            # only the small columns: a group's trajectories can be large
            result = await s.execute(
                sa.select(DatasetGroup.rewards, DatasetGroup.trainable_turns).where(
                    DatasetGroup.dataset_id == job.dataset_id, DatasetGroup.position.in_(step.group_positions)
                )
            )
            return [(list(r), int(t)) for r, t in result.all()]

        rewards = await self._read(load_rewards)
        async with self.owned() as (session, owned_job):
            row = await session.get(JobStep, step_id)
            line = await session.get(ServedModel, model.id)
            assert row is not None
            assert line is not None
            if row.status == STEP_SUCCEEDED:
                return
            means = (
                {k: v / row.gradient_steps for k, v in (row.metric_sums or {}).items()}
                if row.gradient_steps
                else {}
            )
            metrics: dict[str, float] = {**_numeric(remote.metrics), **means, **reward_metrics(rewards)}
            if "loss" in means:
                metrics["train_loss"] = means["loss"]
            ckpt = await record_checkpoint(
                session, line, step=remote.step, metrics=metrics, job_id=owned_job.id, job_step=row.number
            )
            row.status = STEP_SUCCEEDED
            row.checkpoint_step = remote.step
            row.finished_at = utcnow()
            owned_job.completed_steps = row.number
            owned_job.fine_tuned_model = ckpt.artifact_name
            tokens = (row.metric_sums or {}).get("num_trainable_tokens")
            if tokens:
                owned_job.trained_tokens = (owned_job.trained_tokens or 0) + int(tokens)
            aliases = await ckpt_policy.move_aliases(session, self.settings, line)
            how = (
                " (outcome resolved from the model's checkpoints; its training events were not seen)"
                if resolved
                else ""
            )
            add_event(
                session,
                owned_job.id,
                f"Step {row.number}/{owned_job.total_steps} done: checkpoint {ckpt.artifact_name}"
                + (
                    f" ({_fmt(metrics, 'train_loss', 'reward_mean')})"
                    if _fmt(metrics, "train_loss", "reward_mean")
                    else ""
                )
                + how,
                level="warn" if resolved else "info",
                data={
                    "step": row.number,
                    "checkpoint_step": remote.step,
                    "fine_tuned_model_checkpoint": ckpt.artifact_name,
                    "aliases": {name: c.artifact_name for name, c in aliases.items()},
                    "metrics": metrics,
                },
            )
        await self._apply_retention(trainer, model)

    async def _apply_retention(self, trainer: WandbTraining, model: ServedModel) -> None:
        async with self.ctx.sessionmaker() as session:
            line = await session.get(ServedModel, model.id)
            assert line is not None
            doomed = await ckpt_policy.retention_candidates(session, self.settings, line)
        if not doomed:
            return
        steps = [c.step for c in doomed]
        try:
            deleted, not_found = await self._remote(trainer.delete_checkpoints(model.remote_id or "", steps))
        except RemoteError as exc:
            async with self.owned() as (session, job):
                add_event(
                    session,
                    job.id,
                    f"Retention: could not delete checkpoints {steps} on W&B ({exc}); retried after the next step",
                    level="warn",
                )
            return
        async with self.owned() as (session, job):
            line = await session.get(ServedModel, model.id)
            assert line is not None
            await ckpt_policy.mark_deleted(session, line, steps)
            add_event(
                session,
                job.id,
                f"Retention: deleted checkpoint steps {steps} of {line.entity}/{line.project}/{line.name} "
                f"(kept latest, best by {self.settings.training.best_metric} and the last "
                f"{self.settings.training.keep_last_checkpoints})",
                data={"deleted_steps": steps, "deleted_count": deleted, "not_found_steps": not_found},
            )

    # -- endings -----------------------------------------------------------------------------------

    async def _succeed(self) -> None:
        async with self.owned() as (session, job):
            await service.finish_job(
                session,
                self.settings,
                job,
                SUCCEEDED,
                message=f"The job has successfully completed: {job.fine_tuned_model}",
            )
        logger.info("job.succeeded job_id=%s", self.job_id)
        await self.ctx.after_finish(self.job_id)

    async def _cancel(self, job: FineTuningJob) -> None:
        async with self.owned() as (session, owned_job):
            await service.finish_job(
                session,
                self.settings,
                owned_job,
                CANCELLED,
                message=f"Job cancelled after {owned_job.completed_steps} of {owned_job.total_steps} steps"
                + ("; its checkpoints are kept" if owned_job.completed_steps else ""),
            )
        logger.info("job.cancelled job_id=%s", self.job_id)
        await self.ctx.after_finish(self.job_id)

    async def _fail(self, failure: JobFailed) -> None:
        try:
            async with self.owned() as (session, job):
                await service.finish_job(
                    session,
                    self.settings,
                    job,
                    FAILED,
                    message=f"Job failed ({failure.code}): {failure.message}",
                    error=failure.as_error(),
                )
        except LeaseLost:
            return
        logger.warning("job.failed job_id=%s code=%s message=%s", self.job_id, failure.code, failure.message)
        await self.ctx.after_finish(self.job_id)
