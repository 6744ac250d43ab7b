"""The job state machine: one table of allowed transitions and one function that applies them."""

from __future__ import annotations

from app.db import utcnow
from app.errors import Conflict
from app.jobs.models import TERMINAL_STATUSES, FineTuningJob, JobStatus

ALLOWED: dict[str, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: str, target: JobStatus) -> bool:
    return target in ALLOWED.get(current, frozenset())


def transition(job: FineTuningJob, target: JobStatus) -> None:
    """Move `job` to `target` or raise Conflict; stamps started/finished times and drops the claim."""
    if not can_transition(job.status, target):
        raise Conflict(
            f"job {job.id} is {job.status} and cannot become {target}", code="invalid_job_state", param=None
        )
    now = utcnow()
    job.status = target
    if target == JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if target in TERMINAL_STATUSES:
        job.finished_at = now
        job.worker_id = None
        job.lease_expires_at = None
