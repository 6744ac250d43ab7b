"""The job worker: claims jobs, runs them with lease heartbeats, delivers webhooks, finishes
game hand-offs and (optionally) picks up the game's pending training batches.

Runs inside the API process (`RUN_WORKER=true`) or as `training-control worker`; any number of
workers may share one Postgres. `stop()` is graceful: no new claims, a training POST in flight
is allowed to finish and be recorded (up to `WORKER__SHUTDOWN_GRACE_S`), every job is handed
back resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.jobs import handoff, webhooks
from app.training.runner import JobRunner, RunnerContext
from app.training.wandb_api import WandbTraining
from app.worker.claims import claim_next_job, renew_lease

logger = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _log_orphan_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.info("worker.critical_task_ended task=%s outcome=%s", task.get_name(), type(exc).__name__)


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.worker_id = worker_id or default_worker_id()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, JobRunner] = {}
        self._critical: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._trainer: WandbTraining | None = None
        self._trainer_lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None

    # -- control ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for work now (a job was created or cancelled in this process)."""
        self._wake.set()

    @property
    def running_jobs(self) -> list[str]:
        return list(self._jobs)

    async def start(self) -> None:
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="worker-claims"),
            asyncio.create_task(self._webhook_loop(), name="worker-webhooks"),
            asyncio.create_task(self._handoff_loop(), name="worker-handoffs"),
        ]
        logger.info(
            "worker.started worker=%s max_jobs=%s", self.worker_id, self.settings.worker.max_concurrent_jobs
        )

    async def stop(self) -> None:
        """Graceful: stop claiming; each job stops at its next safe point (a wait or a remote
        call; a training POST in flight lands and is recorded first) and is handed back."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        for runner in self._runners.values():
            runner.halt()
        # the loops first (no claim after they end), then every job they started
        await self._await_or_cancel(self._loops)
        for runner in self._runners.values():
            runner.halt()
        await self._await_or_cancel(list(self._jobs.values()))
        if self._critical:
            _done, pending = await asyncio.wait(
                set(self._critical), timeout=self.settings.worker.shutdown_grace_s
            )
            for task in pending:
                logger.warning(
                    "worker.abandoned_critical_task worker=%s task=%s", self.worker_id, task.get_name()
                )
                task.cancel()
        if self._trainer is not None:
            await self._trainer.close()
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

    # -- claiming and running -----------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = self.settings.worker.poll_interval_s
        while not self._stopping:
            try:
                while not self._stopping and len(self._jobs) < self.settings.worker.max_concurrent_jobs:
                    async with self.sessionmaker() as session:
                        claim = await claim_next_job(session, self.worker_id, self.settings.worker.lease_s)
                    if claim is None:
                        break
                    logger.info(
                        "job.claimed job_id=%s worker=%s attempt=%s",
                        claim.job_id,
                        self.worker_id,
                        claim.attempts,
                    )
                    self._jobs[claim.job_id] = asyncio.create_task(
                        self._run_job(claim.job_id), name=f"job-{claim.job_id}"
                    )
                backoff = self.settings.worker.poll_interval_s
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker.claim_failed worker=%s", self.worker_id)
                backoff = min(backoff * 2, 30.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass

    async def _run_job(self, job_id: str) -> None:
        runner = JobRunner(self._context(), job_id)
        self._runners[job_id] = runner
        if self._stopping:
            runner.halt()
        heartbeat = asyncio.create_task(self._heartbeat(job_id, runner), name=f"heartbeat-{job_id}")
        try:
            await runner.run()
        finally:
            heartbeat.cancel()
            self._jobs.pop(job_id, None)
            self._runners.pop(job_id, None)
            self._wake.set()

    async def _heartbeat(self, job_id: str, runner: JobRunner) -> None:
        while True:
            await asyncio.sleep(self.settings.worker.heartbeat_s)
            try:
                async with self.sessionmaker() as session:
                    held = await renew_lease(session, job_id, self.worker_id, self.settings.worker.lease_s)
            except Exception as exc:  # retried at the next beat; the lease may lapse
                logger.warning("job.heartbeat_failed job_id=%s error=%s", job_id, exc)
                continue
            if not held:
                logger.warning("job.lease_lost job_id=%s worker=%s", job_id, self.worker_id)
                runner.halt(lease_lost=True)
                return

    def _context(self) -> RunnerContext:
        return RunnerContext(
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            worker_id=self.worker_id,
            trainer=self._get_trainer,
            shield=self._shield,
            after_finish=self._after_finish,
        )

    async def _get_trainer(self) -> WandbTraining:
        async with self._trainer_lock:
            if self._trainer is None:
                # `import art` takes seconds: keep the event loop (and the API) responsive
                from app.training.art_env import import_art

                await asyncio.to_thread(import_art)
                self._trainer = WandbTraining.from_settings(self.settings)
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

    # -- webhooks, hand-offs, watch mode ----------------------------------------------------------

    async def _deliver_webhooks(self) -> None:
        if self._http is None or self.settings.training.webhook_secret is None:
            return
        try:
            await webhooks.deliver_due(self.sessionmaker, self.settings, self._http)
        except Exception:
            logger.exception("webhook.dispatch_failed worker=%s", self.worker_id)

    async def _idle(self, seconds: float) -> None:
        """Sleep, but return at once when the worker stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)

    async def _webhook_loop(self) -> None:
        while not self._stopping:
            await self._deliver_webhooks()
            await self._idle(min(1.0, self.settings.worker.poll_interval_s))

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
