"""The worker registry: who is alive, and whether anyone can train.

Every worker upserts its row (`workers`) when it starts and on every heartbeat; a graceful stop
marks it stopped. A worker is *live* when it has not stopped and its heartbeat is at most
`WORKER__LIVE_AFTER_S` old. The API reads the registry to refuse a job nobody could run
(`require_training_worker`) and to report live workers in /health, /readyz and /metrics.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from importlib import metadata

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import utcnow
from app.errors import BadRequest
from app.queue.models import WandbKeyStatus, WorkerRecord

FORGET_AFTER = dt.timedelta(days=1)  # stopped or dead workers' rows are deleted after this


def service_version() -> str:
    try:
        return metadata.version("training-control")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says about itself on each heartbeat."""

    id: str
    in_api: bool
    has_wandb_key: bool
    wandb_key_status: WandbKeyStatus
    jobs_running: int
    items_running: int
    max_jobs: int
    metrics_port: int | None


async def beat(session: AsyncSession, info: WorkerInfo) -> None:
    """Insert or refresh the worker's row (one statement; the caller commits)."""
    now = utcnow()
    values = {
        "has_wandb_key": info.has_wandb_key,
        "wandb_key_status": info.wandb_key_status.value,
        "jobs_running": info.jobs_running,
        "items_running": info.items_running,
        "max_jobs": info.max_jobs,
        "metrics_port": info.metrics_port,
        "heartbeat_at": now,
        "stopped_at": None,
    }
    updated = await session.execute(
        sa.update(WorkerRecord).where(WorkerRecord.id == info.id).values(**values)
    )
    if not getattr(updated, "rowcount", 0):
        session.add(
            WorkerRecord(
                id=info.id,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                version=service_version()[:32],
                in_api=info.in_api,
                started_at=now,
                **values,
            )
        )
        # a good moment to forget workers that are long gone
        await session.execute(sa.delete(WorkerRecord).where(WorkerRecord.heartbeat_at < now - FORGET_AFTER))
    await session.flush()


async def mark_stopped(session: AsyncSession, worker_id: str) -> None:
    await session.execute(
        sa.update(WorkerRecord)
        .where(WorkerRecord.id == worker_id)
        .values(stopped_at=utcnow(), jobs_running=0, items_running=0)
    )


async def live_workers(session: AsyncSession, settings: Settings) -> list[WorkerRecord]:
    cutoff = utcnow() - dt.timedelta(seconds=settings.worker.live_after_s)
    rows = await session.scalars(
        sa.select(WorkerRecord)
        .where(WorkerRecord.stopped_at.is_(None), WorkerRecord.heartbeat_at >= cutoff)
        .order_by(WorkerRecord.started_at)
    )
    return list(rows.all())


def can_train(worker: WorkerRecord) -> bool:
    return worker.has_wandb_key and worker.wandb_key_status != WandbKeyStatus.REJECTED


def describe(workers: list[WorkerRecord]) -> dict[str, object]:
    """The registry as /health and /readyz report it."""
    return {
        "live": len(workers),
        "can_train": sum(can_train(w) for w in workers),
        "jobs_running": sum(w.jobs_running for w in workers),
        "workers": [
            {
                "id": w.id,
                "host": w.host,
                "version": w.version,
                "in_api": w.in_api,
                "has_wandb_key": w.has_wandb_key,
                "wandb_key": w.wandb_key_status,
                "jobs_running": w.jobs_running,
                "items_running": w.items_running,
                "heartbeat_at": w.heartbeat_at.isoformat(),
            }
            for w in workers
        ],
    }


async def require_training_worker(session: AsyncSession, settings: Settings) -> None:
    """Refuse a job that could only fail later: no live worker has a W&B key W&B accepts.

    With no live worker at all the job waits in the queue for one, unless this process has no
    key either (then no worker started from the same configuration could train it)."""
    workers = await live_workers(session, settings)
    if any(can_train(w) for w in workers):
        return
    if workers:
        refused = [w.id for w in workers if w.has_wandb_key]
        missing = [w.id for w in workers if not w.has_wandb_key]
        parts = []
        if missing:
            parts.append(f"WANDB_API_KEY is not set on {', '.join(missing)}")
        if refused:
            parts.append(f"W&B refused the key of {', '.join(refused)}")
        raise BadRequest(
            f"no running worker can train: {'; '.join(parts)}. Set a valid WANDB_API_KEY on the workers "
            "(`training-control worker`, or the API with RUN_WORKER=true) and restart them",
            code="wandb_not_configured",
        )
    if not settings.wandb_configured:
        raise BadRequest(
            "WANDB_API_KEY is not set on this service and no worker with one is running, so no job can "
            "train: set WANDB_API_KEY for the workers (`training-control worker`, or the API with "
            "RUN_WORKER=true)",
            code="wandb_not_configured",
        )
