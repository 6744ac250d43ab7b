"""The job state machine: one table of allowed transitions and one function that applies them."""

from __future__ import annotations

from app.db import utcnow
from app.errors import Conflict
from app.jobs.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATUSES,
    VALIDATING,
    FineTuningJob,
)

ALLOWED: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({QUEUED, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def can_transition(current: str, target: str) -> bool:
    return target in ALLOWED.get(current, frozenset())


def transition(job: FineTuningJob, target: str) -> None:
    """Move `job` to `target` or raise Conflict; stamps started/finished times and drops the claim."""
    if not can_transition(job.status, target):
        raise Conflict(
            f"job {job.id} is {job.status} and cannot become {target}", code="invalid_job_state", param=None
        )
    now = utcnow()
    job.status = target
    if target == RUNNING and job.started_at is None:
        job.started_at = now
    if target in TERMINAL_STATUSES:
        job.finished_at = now
        job.worker_id = None
        job.lease_expires_at = None
