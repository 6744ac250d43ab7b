"""The worker: the one background mechanism. It claims jobs and work items (dataset builds)
with leases, runs them, renews their leases and its own row in the worker registry, watches
for cancels, delivers webhooks, finishes game hand-offs and records late checkpoints.

Runs inside the API process (`RUN_WORKER=true`) or as `training-control worker`; any number of
workers may share one Postgres. `stop()` is graceful: no new claims, a training POST in flight
is allowed to finish and be recorded (up to `WORKER__SHUTDOWN_GRACE_S`), every job and work
item is handed back resumable, and the worker's registry row is marked stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.tasks import run_build_item
from app.jobs import handoff, webhooks
from app.jobs.models import FineTuningJob
from app.queue import workers as registry
from app.queue.items import finish
from app.queue.leases import claim_next_item, item_held, release, renew_leases
from app.queue.models import WandbKeyStatus, WorkItem, WorkKind, WorkStatus
from app.rollouts import service as rollouts
from app.training.checkpoints import sweep_late_checkpoints
from app.training.control import Clock, Stop
from app.training.keycheck import WandbKeyChecker
from app.training.remote import TrainingAPI
from app.training.runner import JobRunner, RunnerContext
from app.worker.claims import claim_next_job, job_held
from app.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)
TrainerFactory = Callable[[Settings], Awaitable[TrainingAPI]]
GAUGE_REFRESH_S = 5.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _log_orphan_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.info("worker.critical_task_ended task=%s outcome=%s", task.get_name(), type(exc).__name__)


async def wandb_trainer(settings: Settings) -> TrainingAPI:
    """W&B through openpipe-art (`import art` takes seconds: off the event loop)."""
    from app.training.art_env import import_art
    from app.training.wandb_api import WandbTraining

    await asyncio.to_thread(import_art)
    return WandbTraining.from_settings(settings)


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        metrics: WorkerMetrics,
        worker_id: str | None = None,
        in_api: bool = False,
        metrics_port: int | None = None,
        refresh_gauges: bool = False,
        trainer_factory: TrainerFactory = wandb_trainer,
        key_checker: WandbKeyChecker | None = None,
        clock: Clock | None = None,
        on_alias_moved: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        # in the API: forget the gateway's resolved names when a rollout decision moved an alias
        self._on_alias_moved = on_alias_moved
        self.sessionmaker = sessionmaker
        self.metrics = metrics
        self.worker_id = worker_id or default_worker_id()
        self.in_api = in_api
        self.metrics_port = metrics_port
        self._refresh_gauges = refresh_gauges
        self._trainer_factory = trainer_factory
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, JobRunner] = {}
        self._items: dict[str, asyncio.Task[None]] = {}
        self._critical: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._trainer: TrainingAPI | None = None
        self._trainer_lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None
        self._keys = key_checker
        self._own_keys = key_checker is None

    # -- control ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for work (and cancels) now: something was created or cancelled in this process."""
        self._wake.set()

    @property
    def running_jobs(self) -> list[str]:
        return list(self._jobs)

    async def start(self) -> None:
        self._http = httpx.AsyncClient(follow_redirects=False)
        if self._keys is None:
            self._keys = WandbKeyChecker(self.settings, self._http)
        try:
            await self._beat()
        except Exception as exc:  # the database may be down: the heartbeat loop retries
            logger.warning("worker.register_failed worker=%s error=%s", self.worker_id, type(exc).__name__)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="worker-claims"),
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeats"),
            asyncio.create_task(self._webhook_loop(), name="worker-webhooks"),
            asyncio.create_task(self._handoff_loop(), name="worker-handoffs"),
            asyncio.create_task(self._maintenance_loop(), name="worker-maintenance"),
            asyncio.create_task(self._rollout_loop(), name="worker-rollouts"),
        ]
        logger.info(
            "worker.started worker=%s max_jobs=%s wandb_key=%s",
            self.worker_id,
            self.settings.worker.max_concurrent_jobs,
            "set" if self.settings.wandb_configured else "missing",
        )

    async def stop(self) -> None:
        """Graceful: stop claiming; each job stops at its next safe point (a wait or a remote
        call; a training POST in flight lands and is recorded first) and is handed back."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        for runner in self._runners.values():
            runner.stop(Stop.HALT)
        # the loops first (no claim after they end), then every job and item they started
        await self._await_or_cancel(self._loops)
        for runner in self._runners.values():
            runner.stop(Stop.HALT)
        for task in self._items.values():
            task.cancel()
        await self._await_or_cancel([*self._jobs.values(), *self._items.values()])
        if self._critical:
            _done, pending = await asyncio.wait(
                set(self._critical), timeout=self.settings.worker.shutdown_grace_s
            )
            for task in pending:
                logger.warning(
                    "worker.abandoned_critical_task worker=%s task=%s", self.worker_id, task.get_name()
                )
                task.cancel()
        try:
            async with self.sessionmaker() as session:
                await registry.mark_stopped(session, self.worker_id)
                await session.commit()
        except Exception as exc:
            logger.warning("worker.deregister_failed worker=%s error=%s", self.worker_id, type(exc).__name__)
        if self._trainer is not None:
            await self._trainer.close()
        if self._keys is not None and self._own_keys:
            await self._keys.close()
        if self._http is not None:
            await self._http.aclose()
        logger.info("worker.stopped worker=%s", self.worker_id)

    async def _await_or_cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _done, late = await asyncio.wait(tasks, timeout=self.settings.worker.shutdown_grace_s + 5.0)
        for task in late:  # last resort: a task stuck in a long DB or game call
            logger.warning("worker.cancelling task=%s", task.get_name())
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _idle(self, seconds: float) -> None:
        """Sleep, but return at once when the worker stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)

    # -- claiming ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = self.settings.worker.poll_interval_s
        while not self._stopping:
            try:
                await self._watch_cancels()
                await self._claim_jobs()
                await self._claim_items()
                backoff = self.settings.worker.poll_interval_s
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker.claim_failed worker=%s", self.worker_id)
                backoff = min(backoff * 2, 30.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)

    async def _watch_cancels(self) -> None:
        """One indexed read per poll: the running jobs whose cancel was accepted."""
        if not self._runners:
            return
        async with self.sessionmaker() as session:
            cancelled = (
                await session.scalars(
                    sa.select(FineTuningJob.id).where(
                        FineTuningJob.id.in_(list(self._runners)),
                        FineTuningJob.cancel_requested_at.is_not(None),
                    )
                )
            ).all()
        for job_id in cancelled:
            runner = self._runners.get(job_id)
            if runner is not None:
                runner.stop(Stop.CANCEL)

    async def _claim_jobs(self) -> None:
        while not self._stopping and len(self._jobs) < self.settings.worker.max_concurrent_jobs:
            async with self.sessionmaker() as session:
                claim = await claim_next_job(session, self.worker_id, self.settings.worker.lease_s)
            if claim is None:
                return
            self.metrics.claims.labels("job").inc()
            if claim.took_over:
                self.metrics.lease_expiries.labels("job").inc()
            logger.info(
                "job.claimed job_id=%s worker=%s attempt=%s", claim.id, self.worker_id, claim.attempts
            )
            runner = JobRunner(self._runner_context(), claim.id)
            self._runners[claim.id] = runner
            self._jobs[claim.id] = asyncio.create_task(
                self._run_job(claim.id, runner), name=f"job-{claim.id}"
            )

    async def _claim_items(self) -> None:
        while not self._stopping and len(self._items) < self.settings.worker.max_concurrent_items:
            async with self.sessionmaker() as session:
                claimed = await claim_next_item(session, self.worker_id, self.settings.worker.lease_s)
            if claimed is None:
                return
            claim, kind, subject = claimed
            self.metrics.claims.labels("work_item").inc()
            if claim.took_over:
                self.metrics.lease_expiries.labels("work_item").inc()
            logger.info(
                "work.claimed item=%s kind=%s subject=%s attempt=%s", claim.id, kind, subject, claim.attempts
            )
            self._items[claim.id] = asyncio.create_task(
                self._run_item(claim.id, kind, subject, claim.attempts), name=f"item-{claim.id}"
            )

    # -- running -------------------------------------------------------------------------------

    async def _run_job(self, job_id: str, runner: JobRunner) -> None:
        try:
            if self._stopping:
                runner.stop(Stop.HALT)
            await runner.run()
        finally:
            self._jobs.pop(job_id, None)
            self._runners.pop(job_id, None)
            self._wake.set()

    async def _run_item(self, item_id: str, kind: str, subject: str, attempt: int) -> None:
        outcome = WorkStatus.DONE
        try:
            if kind == WorkKind.DATASET_BUILD:
                await run_build_item(
                    self.sessionmaker, self.settings, subject, attempt, self.metrics.datasets
                )
            else:
                logger.error("work.unknown_kind item=%s kind=%s", item_id, kind)
                outcome = WorkStatus.FAILED
        except asyncio.CancelledError:
            # shutdown (or a lost lease): hand the item back; the next claimer starts it over
            if not self._stopping:
                raise
            await asyncio.shield(self._release_item(item_id))
            self.metrics.work_items.labels(kind, "released").inc()
            raise
        except Exception:
            logger.exception("work.failed item=%s kind=%s subject=%s", item_id, kind, subject)
            outcome = WorkStatus.FAILED
        finally:
            self._items.pop(item_id, None)
            self._wake.set()
        await finish(self.sessionmaker, item_id, self.worker_id, outcome)
        self.metrics.work_items.labels(kind, outcome.value).inc()

    async def _release_item(self, item_id: str) -> None:
        async with self.sessionmaker() as session:
            await release(session, WorkItem, item_id, self.worker_id)

    def _runner_context(self) -> RunnerContext:
        return RunnerContext(
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            worker_id=self.worker_id,
            trainer=self._get_trainer,
            shield=self._shield,
            after_finish=self._after_finish,
            metrics=self.metrics.training,
            clock=self._clock,
        )

    async def _get_trainer(self) -> TrainingAPI:
        async with self._trainer_lock:
            if self._trainer is None:
                self._trainer = await self._trainer_factory(self.settings)
            return self._trainer

    async def _shield(self, awaitable: Awaitable[Any]) -> Any:
        """Run to completion even if the caller is cancelled; `stop()` waits for these."""
        task = asyncio.ensure_future(awaitable)
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        # a shielded task whose caller was cancelled has nobody to read its outcome: log it here
        task.add_done_callback(_log_orphan_failure)
        return await asyncio.shield(task)

    async def _after_finish(self, job_id: str) -> None:
        self._wake.set()
        await handoff.deliver(self.settings, self.sessionmaker, job_id)  # the game hand-off
        await self._deliver_webhooks()

    # -- heartbeats: leases and the worker registry ----------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await self._idle(self.settings.worker.heartbeat_s)
            if self._stopping:
                return
            try:
                await self._renew()
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried at the next beat; leases may lapse meanwhile
                logger.warning("worker.heartbeat_failed worker=%s error=%s", self.worker_id, exc)
                self.metrics.lease_renewals.labels("job", "error").inc(len(self._jobs))

    async def _renew(self) -> None:
        lease_s = self.settings.worker.lease_s
        job_ids, item_ids = list(self._jobs), list(self._items)
        async with self.sessionmaker() as session:
            held_jobs = await renew_leases(
                session, FineTuningJob, job_ids, self.worker_id, lease_s, held=job_held()
            )
        async with self.sessionmaker() as session:
            held_items = await renew_leases(
                session, WorkItem, item_ids, self.worker_id, lease_s, held=item_held()
            )
        for kind, ids, held in (("job", job_ids, held_jobs), ("work_item", item_ids, held_items)):
            if held:
                self.metrics.lease_renewals.labels(kind, "renewed").inc(len(held))
            for lost in set(ids) - held:
                self.metrics.lease_renewals.labels(kind, "lost").inc()
                logger.warning("worker.lease_lost kind=%s id=%s worker=%s", kind, lost, self.worker_id)
                if (runner := self._runners.get(lost)) is not None:
                    runner.stop(Stop.LEASE_LOST)
                if (task := self._items.get(lost)) is not None:
                    task.cancel()

    async def _beat(self) -> None:
        """Refresh this worker's registry row (and, when stale, W&B's answer about the key)."""
        key = await self._keys.current(wait_s=0.0) if self._keys is not None else None
        info = registry.WorkerInfo(
            id=self.worker_id,
            in_api=self.in_api,
            has_wandb_key=self.settings.wandb_configured,
            wandb_key_status=key.status if key is not None else WandbKeyStatus.UNCHECKED,
            jobs_running=len(self._jobs),
            items_running=len(self._items),
            max_jobs=self.settings.worker.max_concurrent_jobs,
            metrics_port=self.metrics_port,
        )
        async with self.sessionmaker() as session:
            await registry.beat(session, info)
            await session.commit()

    # -- late checkpoints and the gauges ----------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + min(5.0, self.settings.worker.late_checkpoint_interval_s)
        while not self._stopping:
            try:
                if self._refresh_gauges:
                    async with self.sessionmaker() as session:
                        await self.metrics.refresh(session, self.settings)
                if self.settings.wandb_configured and loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.settings.worker.late_checkpoint_interval_s
                    found = await sweep_late_checkpoints(
                        self.sessionmaker,
                        self.settings,
                        await self._get_trainer(),
                        (self._clock or Clock()).now(),
                    )
                    if found:
                        logger.info("worker.late_checkpoints_recorded count=%s", found)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker.maintenance_failed worker=%s", self.worker_id)
            await self._idle(min(GAUGE_REFRESH_S, self.settings.worker.late_checkpoint_interval_s))

    # -- webhooks, hand-offs, watch mode ----------------------------------------------------------

    async def _deliver_webhooks(self) -> None:
        if self._http is None or self.settings.training.webhook_secret is None:
            return
        try:
            await webhooks.deliver_due(
                self.sessionmaker,
                self.settings,
                self._http,
                observe=lambda outcome: self.metrics.webhooks.labels(outcome).inc(),
            )
        except Exception:
            logger.exception("webhook.dispatch_failed worker=%s", self.worker_id)

    async def _webhook_loop(self) -> None:
        while not self._stopping:
            await self._deliver_webhooks()
            await self._idle(min(1.0, self.settings.worker.poll_interval_s))

    async def _rollout_loop(self) -> None:
        """Evaluate the running rollouts every `ROLLOUTS__EVAL_INTERVAL_S` (app/rollouts/): each
        decision is applied once even when several workers look (a guarded update)."""
        while not self._stopping:
            try:
                if await rollouts.evaluate_running(self.sessionmaker, self.settings):
                    if self._on_alias_moved is not None:
                        self._on_alias_moved()
                    await self._deliver_webhooks()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker.rollout_loop_failed worker=%s", self.worker_id)
            await self._idle(self.settings.rollouts.eval_interval_s)

    async def _handoff_loop(self) -> None:
        """Retry pending game hand-offs; let the games start jobs for work they queued
        (Babylon's watch mode). Both through the hand-off interface (app/jobs/handoff.py)."""
        while not self._stopping:
            try:
                await handoff.deliver_pending(self.settings, self.sessionmaker)
                if await handoff.poll(self.settings, self.sessionmaker):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker.handoff_loop_failed worker=%s", self.worker_id)
            await self._idle(min(30.0, max(1.0, self.settings.worker.poll_interval_s * 20)))
