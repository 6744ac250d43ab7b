"""`training-control worker` processes: a crash (kill -9) mid-step, a graceful SIGTERM, and two
workers on one Postgres, each registered and serving its own /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.config import Settings
from app.jobs.models import FineTuningJob, JobStep
from app.queue.models import WorkerRecord
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import Service, StartService, wait_for_job, wait_until

pytestmark = pytest.mark.e2e

BASE = "OpenPipe/Qwen3-14B-Instruct"
ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`python -m app worker` against the test database and the emulator."""

    def __init__(self, settings: Settings, emulator: EmulatorHandle, log: Path, **env: str) -> None:
        self.log_path = log
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("WORKER__", "TRAINING__", "WANDB_"))
        }
        environment.update(
            {
                "DATABASE_URL": settings.database_url,
                "WANDB_BASE_URL": emulator.base_url,
                "WANDB_API_KEY": emulator.api_key,
                "MIGRATE_ON_START": "false",
                "ENVIRONMENT": "test",
                "LOG_LEVEL": "INFO",
                "WORKER__LEASE_S": "2",
                "WORKER__HEARTBEAT_S": "0.5",
                "WORKER__POLL_INTERVAL_S": "0.1",
                "WORKER__EVENT_POLL_INTERVAL_S": "0.05",
                "WORKER__REMOTE_TIMEOUT_S": "5",
                "WORKER__METRICS_PORT": "0",
                "WORKER__METRICS_HOST": "127.0.0.1",
                **env,
            }
        )
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=ROOT,
            env=environment,
            stdout=self._log,
            stderr=self._log,
        )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)


async def step_row(svc: Service, job_id: str, number: int) -> JobStep | None:
    async with svc.sessionmaker() as session:
        return await session.scalar(
            sa.select(JobStep).where(JobStep.job_id == job_id, JobStep.number == number)
        )


async def job_row(svc: Service, job_id: str) -> FineTuningJob:
    async with svc.sessionmaker() as session:
        job = await session.get(FineTuningJob, job_id)
        assert job is not None
        return job


async def event_messages(svc: Service, job_id: str) -> list[str]:
    return [e.message async for e in await svc.sdk.fine_tuning.jobs.list_events(job_id, limit=100)]


async def create_job(svc: Service, suffix: str, groups: int) -> str:
    ds = await make_dataset(svc.sessionmaker, groups=groups)
    hp: Any = {"batch_size": 1}
    job = await svc.sdk.fine_tuning.jobs.create(
        model=BASE, training_file=ds.id, suffix=suffix, hyperparameters=hp
    )
    return job.id


async def test_kill_9_mid_step_then_restart_finishes_with_one_post_per_step(
    start_service: StartService, emulator: EmulatorHandle, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    emulator.set_pace(0.15)  # a step lasts ~0.6 s on the emulator
    async with start_service(run_worker=False) as svc:
        job_id = await create_job(svc, "crashy", groups=3)
        first = WorkerProcess(svc.settings, emulator, tmp_path / "worker-a.log")
        workers.append(first)

        async def second_step_in_flight() -> bool:
            step = await step_row(svc, job_id, 2)
            return step is not None and step.status == "submitted"

        await wait_until(second_step_in_flight, timeout_s=60, what="step 2 sent to W&B")
        first.kill9()
        assert (await job_row(svc, job_id)).worker_id is not None  # a dead worker's lease, left behind

        second = WorkerProcess(svc.settings, emulator, tmp_path / "worker-b.log")
        workers.append(second)
        done = await wait_for_job(svc.sdk, job_id, timeout_s=90)
        assert done.status == "succeeded", (done.error, second.output()[-3000:])
        assert second.terminate() == 0
        # the restarted worker resumed polling step 2: W&B saw exactly one POST per step
        assert emulator.training_posts("crashy") == 3
        assert emulator.requests("training_jobs.create") == 3
        assert done.fine_tuned_model is not None
        assert done.fine_tuned_model.endswith(":step3")
        assert (await job_row(svc, job_id)).attempts == 2
        assert any(m.startswith("Resumed by worker") for m in await event_messages(svc, job_id))


async def test_sigterm_hands_the_job_back_resumable_and_another_worker_finishes_it(
    backend: str,
    start_service: StartService,
    emulator: EmulatorHandle,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    if backend != "postgres":
        pytest.skip("standalone workers are the Postgres deployment; shutdown does not depend on the DB")
    emulator.set_pace(0.2)
    async with start_service(run_worker=False) as svc:
        job_id = await create_job(svc, "graceful", groups=2)
        worker = WorkerProcess(svc.settings, emulator, tmp_path / "worker.log")
        workers.append(worker)

        async def first_step_in_flight() -> bool:
            step = await step_row(svc, job_id, 1)
            return step is not None and step.status == "submitted"

        await wait_until(first_step_in_flight, timeout_s=60, what="step 1 sent to W&B")
        assert worker.terminate() == 0, worker.output()[-3000:]
        job = await job_row(svc, job_id)
        assert job.status == "running"
        assert job.worker_id is None
        assert job.lease_expires_at is None
        step = await step_row(svc, job_id, 1)
        assert step is not None
        assert step.status == "submitted"
        assert step.remote_job_id
    async with start_service() as svc:  # an in-process worker takes over
        done = await wait_for_job(svc.sdk, job_id, timeout_s=60)
        assert done.status == "succeeded", done.error
        assert emulator.training_posts("graceful") == 2


async def test_two_worker_processes_on_postgres_never_run_the_same_job(
    backend: str,
    start_service: StartService,
    emulator: EmulatorHandle,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    if backend != "postgres":
        pytest.skip("several workers share a Postgres database; SQLite runs one worker")
    emulator.set_pace(0.02)
    async with start_service(run_worker=False) as svc:
        job_ids = [await create_job(svc, f"pair-{i}", groups=2) for i in range(4)]
        workers.append(
            WorkerProcess(svc.settings, emulator, tmp_path / "w1.log", WORKER__MAX_CONCURRENT_JOBS="2")
        )
        workers.append(
            WorkerProcess(svc.settings, emulator, tmp_path / "w2.log", WORKER__MAX_CONCURRENT_JOBS="2")
        )
        for job_id in job_ids:
            done = await wait_for_job(svc.sdk, job_id, timeout_s=120)
            assert done.status == "succeeded", done.error
        async with svc.sessionmaker() as session:
            registered = (
                await session.scalars(sa.select(WorkerRecord).where(WorkerRecord.in_api.is_(False)))
            ).all()
        assert len(registered) == 2
        assert all(w.has_wandb_key and w.wandb_key_status == "accepted" for w in registered)
        scraped: list[str] = []

        async def both_see_each_other() -> bool:  # the queue gauges refresh every few seconds
            async with httpx.AsyncClient() as http:
                scraped[:] = [
                    (await http.get(f"http://127.0.0.1:{w.metrics_port}/metrics")).text for w in registered
                ]
            return all("workers_live 2.0" in t and 'jobs{status="succeeded"} 4.0' in t for t in scraped)

        await wait_until(
            both_see_each_other, timeout_s=30, what="each worker's gauges: both workers, 4 jobs done"
        )
        posts = [
            float(line.split()[-1])
            for text in scraped
            for line in text.splitlines()
            if line.startswith('wandb_calls_total{outcome="ok",route="training_jobs.create"}')
        ]
        assert sum(posts) == 8  # each worker reports the POSTs it made
        codes = [w.terminate() for w in workers]
        assert codes == [0, 0]
        async with svc.sessionmaker() as session:
            stopped = (
                await session.scalars(
                    sa.select(WorkerRecord.stopped_at).where(WorkerRecord.in_api.is_(False))
                )
            ).all()
        assert all(stopped)
        starters = set()
        for i, job_id in enumerate(job_ids):
            assert emulator.training_posts(f"pair-{i}") == 2
            text = await event_messages(svc, job_id)
            started = [m for m in text if m.startswith("Fine-tuning job started")]
            assert len(started) == 1
            assert not any(m.startswith("Resumed") for m in text)
            starters.add(started[0])
            assert (await job_row(svc, job_id)).attempts == 1
        assert emulator.counters()["training_jobs_total"] == 8
