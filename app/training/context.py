"""What every part of a running job shares: settings, its store, W&B, its stop control, timing.

`RunContext.remote` is the only way a job calls W&B: the call is interruptible by a stop,
counted by route and outcome, and its time is kept apart from the service's own time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from app.config import Settings
from app.jobs.models import StepStatus
from app.registry.models import ServedModel
from app.training.control import Clock, Control, Interrupted, Stop
from app.training.metrics import TrainingMetrics
from app.training.remote import (
    RemoteError,
    RemoteRateLimited,
    RemoteRejected,
    RemoteUnavailable,
    TrainingAPI,
)
from app.training.store import JobStore, JobView

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF_S = 30.0

# Runs a coroutine as a task that finishes even if the job's task is cancelled (the worker
# waits for these at shutdown); returns an awaitable of its result.
Shield = Callable[[Awaitable[Any]], Awaitable[Any]]


class JobFailed(Exception):
    """The job fails with this error; the current step (if any) ends in `step_status`."""

    def __init__(
        self, code: str, message: str, param: str | None = None, *, step_status: StepStatus | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param
        self.step_status = step_status

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class Line:
    """The W&B model line a job trains."""

    id: str  # served_models.id
    remote_id: str
    entity: str
    project: str
    name: str

    @property
    def model(self) -> ServedModel:
        """A detached row with the line's identity, for the registry's functions (they read its
        id and names): no query per step to load it again."""
        return ServedModel(
            id=self.id, remote_id=self.remote_id, entity=self.entity, project=self.project, name=self.name
        )


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, RemoteRateLimited):
        return "rate_limited"
    if isinstance(exc, RemoteRejected):
        return "rejected"
    if isinstance(exc, RemoteUnavailable | RemoteError):
        return "unavailable"
    if isinstance(exc, Interrupted):
        return "interrupted"
    return "error"


class RunContext:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        api: TrainingAPI,
        control: Control,
        job: JobView,
        line: Line,
        shield: Shield,
        metrics: TrainingMetrics | None,
        group_count: int,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.control = control
        self.clock: Clock = control.clock
        self.job = job
        self.line = line
        self.shield = shield
        self.metrics = metrics
        self.group_count = group_count
        self.started_at = self.clock.now()
        self.waited_s = 0.0  # time spent waiting for W&B or sleeping between polls

    @property
    def job_id(self) -> str:
        return self.job.id

    async def remote(self, route: str, awaitable: Awaitable[T], *, stop_on: Stop = Stop.HALT) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self.control.call(awaitable, stop_on=stop_on)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.waited_s += elapsed
            if self.metrics is not None:
                self.metrics.wandb_calls.labels(route, outcome).inc()
                self.metrics.wandb_seconds.labels(route).observe(elapsed)

    async def sleep(self, seconds: float) -> None:
        started = time.perf_counter()
        try:
            await self.control.sleep(seconds)
        finally:
            self.waited_s += time.perf_counter() - started

    async def with_retries(
        self, what: str, route: str, call: Callable[[], Awaitable[T]], *, deadline_s: float
    ) -> T:
        """Retry a read-only W&B call through transient failures for up to `deadline_s`."""
        deadline = self.clock.monotonic() + deadline_s
        delay = self.settings.worker.event_poll_interval_s
        while True:
            try:
                return await self.remote(route, call())
            except RemoteRejected:
                raise
            except RemoteError as exc:
                if self.clock.monotonic() + delay > deadline:
                    raise JobFailed(
                        "wandb_unavailable", f"{what} failed for {deadline_s:.0f}s: {exc}"
                    ) from None
                logger.warning("job.remote_retry job_id=%s what=%s error=%s", self.job_id, what, exc)
                await self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Observe the service's own time in this phase of a step (wall minus waiting)."""
        wall, waited = time.perf_counter(), self.waited_s
        try:
            yield
        finally:
            if self.metrics is not None:
                own = (time.perf_counter() - wall) - (self.waited_s - waited)
                self.metrics.overhead_seconds.labels(name).observe(max(0.0, own))
