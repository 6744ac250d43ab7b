"""Job and worker metrics: what this process's worker did, and the queue as the database sees it.

Counters and histograms count what this process did (a worker inside the API reports into the
API's /metrics; `training-control worker` serves its own /metrics on `WORKER__METRICS_PORT`).
The gauges (jobs by status, queue depth, oldest queued age, work items, live workers) describe
the whole database and are refreshed from it: at each scrape of the API's /metrics, and every
few seconds in a standalone worker.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.datasets.metrics import DatasetMetrics
from app.db import utcnow
from app.jobs.models import FineTuningJob, JobStatus
from app.queue.models import WorkItem, WorkStatus
from app.queue.workers import can_train, live_workers
from app.training.metrics import TrainingMetrics


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.training = TrainingMetrics(registry)
        self.datasets = DatasetMetrics(registry)
        self.lease_renewals = Counter(
            "worker_lease_renewals_total",
            "Lease renewals by kind (job, work_item) and outcome (renewed, lost, error).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.lease_expiries = Counter(
            "worker_lease_expiries_total",
            "Claims that took over an expired lease (its worker died or hung), by kind.",
            ["kind"],
            registry=registry,
        )
        self.claims = Counter("worker_claims_total", "Claims by kind.", ["kind"], registry=registry)
        self.work_items = Counter(
            "work_items_finished_total",
            "Work items this process finished, by kind and outcome (done, failed, released).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.webhooks = Counter(
            "webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, retry, failed).",
            ["outcome"],
            registry=registry,
        )
        self.jobs = Gauge("jobs", "Jobs in the database by status.", ["status"], registry=registry)
        self.queue_depth = Gauge(
            "jobs_queue_depth",
            "Jobs waiting for a worker (validating or queued, unclaimed).",
            registry=registry,
        )
        self.oldest_queued = Gauge(
            "jobs_oldest_queued_age_seconds",
            "Age of the oldest job waiting for a worker (0 when none waits).",
            registry=registry,
        )
        self.items = Gauge(
            "work_items", "Work items by kind and status.", ["kind", "status"], registry=registry
        )
        self.workers_live = Gauge("workers_live", "Live workers in the worker registry.", registry=registry)
        self.workers_can_train = Gauge(
            "workers_can_train", "Live workers with a W&B key that W&B did not refuse.", registry=registry
        )

    async def refresh(self, session: AsyncSession, settings: Settings) -> None:
        """Set the gauges from the database (a few indexed aggregate reads)."""
        now = utcnow()
        counts = dict(
            (
                await session.execute(
                    sa.select(FineTuningJob.status, sa.func.count()).group_by(FineTuningJob.status)
                )
            )
            .tuples()
            .all()
        )
        for status in JobStatus:
            self.jobs.labels(status.value).set(counts.get(status.value, 0))
        waiting = sa.and_(
            FineTuningJob.status.in_((JobStatus.VALIDATING, JobStatus.QUEUED)),
            sa.or_(FineTuningJob.lease_expires_at.is_(None), FineTuningJob.lease_expires_at < now),
        )
        depth, oldest = (
            await session.execute(
                sa.select(sa.func.count(), sa.func.min(FineTuningJob.created_at)).where(waiting)
            )
        ).one()
        self.queue_depth.set(depth)
        self.oldest_queued.set(_age(now, oldest))
        items = (
            await session.execute(
                sa.select(WorkItem.kind, WorkItem.status, sa.func.count())
                .where(WorkItem.status.in_((WorkStatus.QUEUED, WorkStatus.RUNNING)))
                .group_by(WorkItem.kind, WorkItem.status)
            )
        ).all()
        self.items.clear()
        for kind, item_status, count in items:
            self.items.labels(kind, item_status).set(count)
        workers = await live_workers(session, settings)
        self.workers_live.set(len(workers))
        self.workers_can_train.set(sum(can_train(w) for w in workers))


def _age(now: dt.datetime, then: dt.datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    return max(0.0, (now - then).total_seconds())
