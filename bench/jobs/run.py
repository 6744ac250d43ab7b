"""Benchmark: N fine-tuning jobs × S steps through the W&B emulator with W worker processes on Postgres.

Everything runs as real processes talking HTTP: the emulator (`training-control emulator`, zero
training delay), the API (`training-control serve`, RUN_WORKER=false, as an API replica) and
`training-control worker` processes. The driver creates the jobs with the official openai SDK
while a load loop calls `retrieve` on random jobs, and reports:

* service overhead per step: a step's wall time from its submission until its checkpoint is
  recorded (with zero emulated training time, everything in it is the service plus the
  emulator's HTTP round trips), and job time / steps;
* jobs per minute from the first create to the last job finished;
* `retrieve` latency (p50/p99) under that load.

    .venv/bin/python bench/jobs/run.py                 # 100 jobs × 3 steps, 2 workers
    .venv/bin/python bench/jobs/run.py --jobs 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrations  # noqa: E402
from app.datasets.models import Dataset, DatasetGroup  # noqa: E402
from app.jobs.models import FineTuningJob, JobStep  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
API_KEY = "bench-key-" + "b" * 24
WANDB_KEY = "bench-wandb-" + "w" * 24
BASE = "OpenPipe/Qwen3-14B-Instruct"


def choice(content: str) -> dict[str, Any]:
    return {
        "finish_reason": "stop",
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "logprobs": {
            "content": [{"token": "token_id:42", "bytes": [66], "logprob": -0.3, "top_logprobs": []}],
            "refusal": None,
        },
    }


def trajectory(reward: float, scenario: str) -> dict[str, Any]:
    return {
        "messages_and_choices": [
            {"role": "system", "content": "You trade on Babylon."},
            {"role": "user", "content": f"Window {scenario}. Decide."},
            choice(f"BUY YES {reward:.2f}"),
        ],
        "additional_histories": [],
        "reward": reward,
        "metrics": {},
        "metadata": {"scenario_id": scenario},
        "logs": [],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def create_database() -> str:
    name = f"tc_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def wait_for_line(log: Path, pattern: str, timeout_s: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace")) if log.exists() else None
        if match:
            return match
        time.sleep(0.1)
    raise RuntimeError(
        f"{log.name}: no line matching {pattern!r}:\n{log.read_text(errors='replace')[-2000:]}"
    )


async def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(url)).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def seed_dataset(db_url: str, groups: int) -> str:
    engine = create_async_engine(db_url)
    dataset_id = "ds-" + secrets.token_hex(12)
    try:
        async with async_sessionmaker(engine)() as session:
            session.add(
                Dataset(
                    id=dataset_id,
                    status="ready",
                    source="pushed",
                    params={},
                    stats={},
                    group_count=groups,
                    trajectory_count=groups * 4,
                    trainable_turns=groups * 4,
                )
            )
            await session.flush()
            for g in range(groups):
                scenario = f"2025-11-14T{g:02d}:00"
                rewards = [0.1 * (i + 1) + 0.05 * g for i in range(4)]
                session.add(
                    DatasetGroup(
                        dataset_id=dataset_id,
                        position=g,
                        scenario_id=scenario,
                        rewards=rewards,
                        trajectories=[trajectory(r, scenario) for r in rewards],
                        trainable_turns=4,
                    )
                )
            await session.commit()
    finally:
        await engine.dispose()
    return dataset_id


async def retrieve_load(
    sdk: openai.AsyncOpenAI, job_ids: list[str], stop: asyncio.Event, latencies: list[float], concurrency: int
) -> None:
    async def one() -> None:
        while not stop.is_set():
            if not job_ids:
                await asyncio.sleep(0.01)
                continue
            t0 = time.perf_counter()
            await sdk.fine_tuning.jobs.retrieve(random.choice(job_ids))
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one() for _ in range(concurrency)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    db_url = await create_database()
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(migrations.upgrade, db_url)
        dataset_id = await seed_dataset(db_url, args.steps)
        base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("WORKER__", "TRAINING__", "WANDB_"))
        }
        procs.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "app",
                    "emulator",
                    "--port",
                    "0",
                    "--pace-s",
                    "0",
                    "--api-key",
                    WANDB_KEY,
                    "--log-level",
                    "warning",
                ],
                base_env,
                tmp / "emulator.log",
            )
        )
        wandb_url = wait_for_line(tmp / "emulator.log", r"listening on (\S+)").group(1)
        env = {
            **base_env,
            "DATABASE_URL": db_url,
            "WANDB_BASE_URL": wandb_url,
            "WANDB_API_KEY": WANDB_KEY,
            "API_KEYS": API_KEY,
            "MIGRATE_ON_START": "false",
            "LOG_LEVEL": "WARNING",
            "WORKER__POLL_INTERVAL_S": str(args.poll_s),
            "WORKER__EVENT_POLL_INTERVAL_S": str(args.poll_s),
            "WORKER__MAX_CONCURRENT_JOBS": str(args.jobs_per_worker),
        }
        procs.append(
            start(
                [sys.executable, "-m", "app", "serve", "--port", str(args.api_port)],
                {**env, "RUN_WORKER": "false"},
                tmp / "api.log",
            )
        )
        api = f"http://127.0.0.1:{args.api_port}"
        await wait_http(f"{api}/healthz")
        for i in range(args.workers):
            procs.append(start([sys.executable, "-m", "app", "worker"], env, tmp / f"worker-{i}.log"))
        await asyncio.sleep(args.worker_warmup_s)  # workers import ART (seconds) before claiming

        sdk = openai.AsyncOpenAI(base_url=f"{api}/v1", api_key=API_KEY, max_retries=0, timeout=30)
        job_ids: list[str] = []
        latencies: list[float] = []
        stop = asyncio.Event()
        load = asyncio.create_task(retrieve_load(sdk, job_ids, stop, latencies, args.readers))
        t_start = time.perf_counter()
        for i in range(args.jobs):
            job = await sdk.fine_tuning.jobs.create(
                model=BASE,
                training_file=dataset_id,
                suffix=f"bench-{i}",
                hyperparameters={"batch_size": 1},  # type: ignore[typeddict-unknown-key]
            )
            job_ids.append(job.id)
        engine = create_async_engine(db_url)
        maker = async_sessionmaker(engine, expire_on_commit=False)
        try:
            while True:
                async with maker() as session:
                    active = await session.scalar(
                        sa.select(sa.func.count())
                        .select_from(FineTuningJob)
                        .where(FineTuningJob.status.in_(("validating_files", "queued", "running")))
                    )
                if not active:
                    break
                if time.perf_counter() - t_start > args.timeout_s:
                    raise RuntimeError(f"{active} jobs still active after {args.timeout_s}s")
                await asyncio.sleep(0.25)
            stop.set()
            await load
            async with maker() as session:
                jobs = (await session.scalars(sa.select(FineTuningJob))).all()
                steps = (await session.scalars(sa.select(JobStep))).all()
                if args.explain:
                    from app.jobs.models import JobEvent

                    events = (
                        await session.scalars(
                            sa.select(JobEvent).where(JobEvent.job_id == job_ids[-1]).order_by(JobEvent.seq)
                        )
                    ).all()
                    t0 = events[0].created_at
                    for e in events:
                        print(
                            f"{(e.created_at - t0).total_seconds():8.3f}  {e.message[:100]}", file=sys.stderr
                        )
        finally:
            await engine.dispose()
        await sdk.close()

        statuses: dict[str, int] = {}
        for job in jobs:
            statuses[job.status] = statuses.get(job.status, 0) + 1
        first_created = min(j.created_at for j in jobs)
        last_finished = max(j.finished_at for j in jobs if j.finished_at)
        wall_s = (last_finished - first_created).total_seconds()
        step_ms = [
            (s.finished_at - s.submit_started_at).total_seconds() * 1000
            for s in steps
            if s.finished_at and s.submit_started_at
        ]

        def phase(start: str, end: str) -> dict[str, float]:
            values = [
                (getattr(s, end) - getattr(s, start)).total_seconds() * 1000
                for s in steps
                if getattr(s, end) and getattr(s, start)
            ]
            return {"p50": round(percentile(values, 50), 1), "p90": round(percentile(values, 90), 1)}

        phases = {
            "post (submitting → remote id stored)": phase("submit_started_at", "submitted_at"),
            "events (remote id → last event stored)": phase("submitted_at", "last_event_at"),
            "checkpoint (last event → checkpoint, aliases, retention stored)": phase(
                "last_event_at", "finished_at"
            ),
        }
        per_job_step_ms = [
            (j.finished_at - j.started_at).total_seconds() * 1000 / max(1, j.total_steps)
            for j in jobs
            if j.finished_at and j.started_at
        ]
        async with httpx.AsyncClient() as http:
            counters = (await http.get(f"{wandb_url.removesuffix('/v1')}/_emulator/counters")).json()
        return {
            "jobs": args.jobs,
            "steps_per_job": args.steps,
            "workers": args.workers,
            "jobs_per_worker": args.jobs_per_worker,
            "statuses": statuses,
            "training_posts": counters.get("training_jobs_total"),
            "wall_s": round(wall_s, 2),
            "jobs_per_minute": round(args.jobs / wall_s * 60, 1),
            "step_ms": {
                "p50": round(percentile(step_ms, 50), 1),
                "p90": round(percentile(step_ms, 90), 1),
                "p99": round(percentile(step_ms, 99), 1),
                "mean": round(statistics.fmean(step_ms), 1),
            },
            "step_phases_ms": phases,
            "job_time_per_step_ms": {
                "p50": round(percentile(per_job_step_ms, 50), 1),
                "mean": round(statistics.fmean(per_job_step_ms), 1),
            },
            "retrieve_ms": {
                "n": len(latencies),
                "p50": round(percentile(latencies, 50), 2),
                "p99": round(percentile(latencies, 99), 2),
                "max": round(max(latencies), 2),
            },
            "readers": args.readers,
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await drop_database(db_url)
        if args.keep_logs:
            print(f"logs: {tmp}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3, help="steps per job (one group per step)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs-per-worker", type=int, default=4, help="WORKER__MAX_CONCURRENT_JOBS")
    parser.add_argument("--readers", type=int, default=4, help="concurrent retrieve loops")
    parser.add_argument("--poll-s", type=float, default=0.1, help="worker claim and event poll interval")
    parser.add_argument("--api-port", type=int, default=8791)
    parser.add_argument("--worker-warmup-s", type=float, default=6.0)
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--explain", action="store_true", help="print the last job's event timeline")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['jobs']} jobs × {result['steps_per_job']} steps, {result['workers']} workers "
        f"({result['jobs_per_worker']} jobs each), Postgres, emulator pace 0"
    )
    print(f"  statuses: {result['statuses']}  training POSTs: {result['training_posts']}")
    print(f"  wall: {result['wall_s']} s   → {result['jobs_per_minute']} jobs/minute")
    print(f"  step (submit → checkpoint recorded) ms: {result['step_ms']}")
    for name, values in result["step_phases_ms"].items():
        print(f"    {name}: {values}")
    print(f"  job time / steps ms: {result['job_time_per_step_ms']}")
    print(f"  retrieve under load ({result['readers']} readers) ms: {result['retrieve_ms']}")


if __name__ == "__main__":
    main()
