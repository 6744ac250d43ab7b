"""Job metrics: the API's /metrics (the queue as the database sees it) and the standalone
worker's own /metrics server."""

from __future__ import annotations

import datetime as dt
import socket

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter

from app.db import utcnow
from app.jobs.models import FineTuningJob
from app.queue.models import WandbKeyStatus
from app.worker.standalone import WorkerStartError, serve_metrics
from tests.conftest import make_settings
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService
from tests.worker.test_registry import announce

BASE = "OpenPipe/Qwen3-14B-Instruct"


async def test_the_api_metrics_show_jobs_by_status_the_queue_and_live_workers(
    start_service: StartService,
) -> None:
    async with start_service(run_worker=False) as svc:
        ds = await make_dataset(svc.sessionmaker)
        first = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        cancelled = await svc.sdk.fine_tuning.jobs.create(model=BASE, training_file=ds.id)
        await svc.sdk.fine_tuning.jobs.cancel(cancelled.id)
        async with svc.sessionmaker() as session:  # the first has waited ten minutes
            await session.execute(
                sa.update(FineTuningJob)
                .where(FineTuningJob.id == first.id)
                .values(created_at=utcnow() - dt.timedelta(minutes=10))
            )
            await session.commit()
        await announce(svc, "w-1", key=True, status=WandbKeyStatus.ACCEPTED)
        text = (await svc.http.get("/metrics")).text
    assert 'jobs{status="queued"} 2.0' in text
    assert 'jobs{status="cancelled"} 1.0' in text
    assert 'jobs{status="running"} 0.0' in text
    assert "jobs_queue_depth 2.0" in text
    age = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("jobs_oldest_queued_age_seconds ")
    )
    assert 590 < age < 700
    assert "workers_live 1.0" in text
    assert "workers_can_train 1.0" in text
    for family in (
        "wandb_calls_total",
        "job_step_overhead_seconds",
        "worker_lease_renewals_total",
        "webhook_deliveries_total",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text


async def test_the_standalone_worker_serves_its_own_metrics_on_its_port(db_url: str) -> None:
    registry = CollectorRegistry()
    Counter("example_total", "an example", registry=registry).inc()
    served = serve_metrics(
        make_settings(db_url, worker={"metrics_port": 0, "metrics_host": "127.0.0.1"}), registry
    )
    assert served is not None
    server, port = served
    try:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert "example_total 1.0" in text
    finally:
        server.shutdown()
    assert serve_metrics(make_settings(db_url, worker={"metrics_port": -1}), registry) is None


def test_a_busy_metrics_port_is_refused_naming_the_setting(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(db_url, worker={"metrics_port": port, "metrics_host": "127.0.0.1"})
        with pytest.raises(WorkerStartError) as refused:
            serve_metrics(settings, CollectorRegistry())
    assert "WORKER__METRICS_PORT" in str(refused.value)
    assert str(port) in str(refused.value)
