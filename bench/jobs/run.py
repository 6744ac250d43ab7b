"""Benchmark: the job service's own time per training step, and `jobs.retrieve` under load.

Every part is a real process talking HTTP on one Postgres: the W&B emulator
(`training-control emulator --pace-s 0`: training costs nothing, every event is there at once),
the API (`training-control serve`, RUN_WORKER=false), `training-control worker` processes
(real openpipe-art for every W&B call), and a bare Starlette app (bench/jobs/bare.py).

1. single: one job at a time (1 worker, WORKER__MAX_CONCURRENT_JOBS=1, no readers). A step's
   wall time (from its start, before the base checkpoint is read, to its checkpoint recorded) is
   compared with the floor measured in the same run against the same emulator: the same W&B
   calls of a step (latest checkpoint, the training POST with the same group, one events page,
   the checkpoint listing) made back to back by a bare ART client. The service's own time per
   step = step p50 − floor p50. The workers' own histogram of it (wall minus time waiting for
   W&B) is shown as a cross-check.
2. load: 2 workers × 4 jobs at a time while 4 readers each alternate `client.fine_tuning.jobs.
   retrieve(id)` on the API and the same single-row SELECT on the bare Starlette handler.

    .venv/bin/python bench/jobs/run.py                    # both scenarios
    .venv/bin/python bench/jobs/run.py --scenario single --single-jobs 40
    .venv/bin/python bench/jobs/run.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
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
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrations  # noqa: E402
from app.datasets.models import Dataset, DatasetGroup  # noqa: E402
from app.jobs.models import ACTIVE_STATUSES, FineTuningJob, JobStep  # noqa: E402
from app.queue.models import WorkerRecord  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
API_KEY = "bench-key-" + "b" * 24
WANDB_KEY = "bench-wandb-" + "w" * 24
BASE = "OpenPipe/Qwen3-14B-Instruct"
GROUP_SIZE = 4


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


def group(g: int) -> tuple[str, list[float], list[dict[str, Any]]]:
    scenario = f"2025-11-14T{g:02d}:00"
    rewards = [0.1 * (i + 1) + 0.05 * g for i in range(GROUP_SIZE)]
    return scenario, rewards, [trajectory(r, scenario) for r in rewards]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes and the database -------------------------------------------------------------------


class Stack:
    """The processes of one scenario; stopped (SIGTERM, then kill) on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Path:
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT))
        return log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


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


async def seed_dataset(engine: AsyncEngine, groups: int) -> str:
    dataset_id = "ds-" + secrets.token_hex(12)
    async with async_sessionmaker(engine)() as session:
        session.add(
            Dataset(
                id=dataset_id,
                status="ready",
                source="pushed",
                params={},
                stats={},
                group_count=groups,
                trajectory_count=groups * GROUP_SIZE,
                trainable_turns=groups * GROUP_SIZE,
            )
        )
        await session.flush()
        for g in range(groups):
            scenario, rewards, trajectories = group(g)
            session.add(
                DatasetGroup(
                    dataset_id=dataset_id,
                    position=g,
                    scenario_id=scenario,
                    rewards=rewards,
                    trajectories=trajectories,
                    trainable_turns=GROUP_SIZE,
                )
            )
        await session.commit()
    return dataset_id


def base_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("WORKER__", "TRAINING__", "WANDB_", "DB__"))
    }


async def start_stack(
    stack: Stack, db_url: str, args: argparse.Namespace, workers: int, per_worker: int
) -> dict[str, str]:
    log = stack.start(
        "emulator",
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
        base_env(),
    )
    wandb_url = wait_for_line(log, r"listening on (\S+)").group(1)
    env = {
        **base_env(),
        "DATABASE_URL": db_url,
        "WANDB_BASE_URL": wandb_url,
        "WANDB_API_KEY": WANDB_KEY,
        "API_KEYS": API_KEY,
        "MIGRATE_ON_START": "false",
        "LOG_LEVEL": "WARNING",
        "WORKER__POLL_INTERVAL_S": str(args.poll_s),
        "WORKER__EVENT_POLL_INTERVAL_S": str(args.poll_s),
        "WORKER__MAX_CONCURRENT_JOBS": str(per_worker),
        "WORKER__METRICS_PORT": "0",
        "WORKER__METRICS_HOST": "127.0.0.1",
    }
    api_port, bare_port = free_port(), free_port()
    stack.start(
        "api", [sys.executable, "-m", "app", "serve", "--port", str(api_port)], {**env, "RUN_WORKER": "false"}
    )
    stack.start("bare", [sys.executable, str(ROOT / "bench/jobs/bare.py"), "--port", str(bare_port)], env)
    api, bare = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{bare_port}"
    await wait_http(f"{api}/healthz")
    await wait_http(f"{bare}/jobs/none")
    for i in range(workers):
        profile = os.environ.get("BENCH_PROFILE_WORKER")  # a cProfile dump of worker 0, for digging
        prefix = ["-m", "cProfile", "-o", profile] if profile and i == 0 else []
        stack.start(f"worker-{i}", [sys.executable, *prefix, "-m", "app", "worker"], env)
    engine = create_async_engine(db_url)
    try:  # every worker has registered itself
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                if await conn.scalar(sa.select(sa.func.count()).select_from(WorkerRecord)) == workers:
                    break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"workers did not register; see {stack.tmp}")
    finally:
        await engine.dispose()
    return {"wandb": wandb_url, "api": api, "bare": bare}


# -- measuring -------------------------------------------------------------------------------------


async def run_jobs(
    sdk: openai.AsyncOpenAI, engine: AsyncEngine, dataset_id: str, count: int, prefix: str, timeout_s: float
) -> list[str]:
    ids = []
    for i in range(count):
        job = await sdk.fine_tuning.jobs.create(
            model=BASE,
            training_file=dataset_id,
            suffix=f"{prefix}-{i}",
            hyperparameters={"batch_size": 1},  # type: ignore[typeddict-unknown-key]
        )
        ids.append(job.id)
    maker = async_sessionmaker(engine)
    started = time.monotonic()
    while True:
        async with maker() as session:
            active = await session.scalar(
                sa.select(sa.func.count())
                .select_from(FineTuningJob)
                .where(FineTuningJob.status.in_(ACTIVE_STATUSES))
            )
        if not active:
            return ids
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{active} jobs still active after {timeout_s}s")
        await asyncio.sleep(0.2)


async def step_figures(engine: AsyncEngine) -> dict[str, Any]:
    async with async_sessionmaker(engine)() as session:
        jobs = (await session.scalars(sa.select(FineTuningJob))).all()
        steps = (await session.scalars(sa.select(JobStep))).all()
    statuses: dict[str, int] = {}
    for job in jobs:
        statuses[job.status] = statuses.get(job.status, 0) + 1
    wall = [
        (s.finished_at - s.started_at).total_seconds() * 1000 for s in steps if s.finished_at and s.started_at
    ]
    per_step = [
        (j.finished_at - j.started_at).total_seconds() * 1000 / max(1, j.total_steps)
        for j in jobs
        if j.finished_at and j.started_at
    ]
    return {"statuses": statuses, "step_ms": summary(wall), "job_time_per_step_ms": summary(per_step)}


async def floor_steps(wandb_url: str, steps: int) -> list[float]:
    """The same W&B calls as one step, made back to back by a bare ART client (and the same
    ART objects built from the same stored group)."""
    from app.training.art_env import import_art

    await asyncio.to_thread(import_art)
    import art
    from art.serverless.backend import ServerlessBackend
    from art.serverless.client import ExperimentalTrainingConfig
    from openai._types import NOT_GIVEN

    from app.jobs.hyperparameters import Hyperparameters
    from app.training.groups import trajectory_groups
    from app.training.remote import GroupPayload

    backend = ServerlessBackend(api_key=WANDB_KEY, base_url=wandb_url)
    client = backend._client
    model = art.TrainableModel(name="floor", project="bench", base_model=BASE, report_metrics=[])
    object.__setattr__(model, "_get_wandb_run", lambda: None)
    await model.register(backend)
    scenario, _rewards, trajectories = group(0)
    hp = Hyperparameters()
    times = []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            page = await client.models.checkpoints.list(model_id=model.id, limit=1, order="desc")
            base = max((c.step for c in page.data), default=0)
            job = await client.training_jobs.create(
                model_id=model.id,
                trajectory_groups=trajectory_groups([GroupPayload(scenario, trajectories)]),
                experimental_config=ExperimentalTrainingConfig(learning_rate=hp.learning_rate),
            )
            await client.training_jobs.events.list(training_job_id=job.id, after=NOT_GIVEN, limit=100)
            async for ckpt in client.models.checkpoints.list(model_id=model.id, limit=20, order="desc"):
                if ckpt.step <= base:
                    break
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        await backend.close()
    return times


def histogram_p50(text: str, name: str, labels: str) -> float | None:
    """p50 (ms) of a Prometheus histogram, interpolated within its bucket."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and labels in line:
            le = re.search(r'le="([^"]+)"', line)
            if le:
                buckets.append((float(le.group(1)), float(line.split()[-1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    half, low, low_count = buckets[-1][1] / 2, 0.0, 0.0
    for bound, count in buckets:
        if count >= half:
            if bound == float("inf"):
                return low * 1000
            share = (half - low_count) / max(count - low_count, 1e-9)
            return (low + (bound - low) * share) * 1000
        low, low_count = bound, count
    return None


async def worker_own_time(engine: AsyncEngine) -> dict[str, float | None]:
    """The worker's own histogram of its time per step phase (p50 estimates, ms)."""
    async with async_sessionmaker(engine)() as session:
        ports = (
            await session.scalars(
                sa.select(WorkerRecord.metrics_port).where(WorkerRecord.metrics_port.is_not(None))
            )
        ).all()
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{ports[0]}/metrics")).text
    return {
        phase: round(value, 1)
        if (value := histogram_p50(text, "job_step_overhead_seconds", f'phase="{phase}"'))
        else None
        for phase in ("step", "submit", "events", "checkpoint")
    }


async def readers(
    sdk: openai.AsyncOpenAI, bare: httpx.AsyncClient, ids: list[str], stop: asyncio.Event, count: int
) -> tuple[list[float], list[float]]:
    api_ms: list[float] = []
    bare_ms: list[float] = []

    async def one() -> None:
        while not stop.is_set():
            if not ids:
                await asyncio.sleep(0.01)
                continue
            job_id = random.choice(ids)
            t0 = time.perf_counter()
            await sdk.fine_tuning.jobs.retrieve(job_id)
            api_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            response = await bare.get(f"/jobs/{job_id}")
            bare_ms.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()

    await asyncio.gather(*(one() for _ in range(count)))
    return api_ms, bare_ms


# -- scenarios -----------------------------------------------------------------------------------------


async def scenario(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    db_url = await create_database()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-jobs-{kind}-"))
    stack = Stack(tmp)
    engine = create_async_engine(db_url)
    load_before = load_average()
    try:
        await asyncio.to_thread(migrations.upgrade, db_url)
        dataset_id = await seed_dataset(engine, args.steps)
        workers, per_worker = (1, 1) if kind == "single" else (args.workers, args.jobs_per_worker)
        urls = await start_stack(stack, db_url, args, workers, per_worker)
        sdk = openai.AsyncOpenAI(base_url=f"{urls['api']}/v1", api_key=API_KEY, max_retries=0, timeout=30)
        result: dict[str, Any] = {"scenario": kind, "workers": workers, "jobs_per_worker": per_worker}
        if kind == "single":
            await run_jobs(sdk, engine, dataset_id, args.single_jobs, "single", args.timeout_s)
            async with engine.begin() as conn:  # the first job warmed up (ART import, statement caches)
                first = await conn.scalar(
                    sa.select(FineTuningJob.id).order_by(FineTuningJob.created_at).limit(1)
                )
                await conn.execute(sa.delete(JobStep).where(JobStep.job_id == first))
                await conn.execute(sa.delete(FineTuningJob).where(FineTuningJob.id == first))
            result.update(await step_figures(engine))
            result["worker_own_time_p50_ms"] = await worker_own_time(engine)
            floor = await floor_steps(urls["wandb"], args.floor_steps)
            result["floor_ms"] = summary(floor)
            result["overhead_p50_ms"] = round(result["step_ms"]["p50"] - result["floor_ms"]["p50"], 2)
            result["ratio_p50"] = round(result["step_ms"]["p50"] / result["floor_ms"]["p50"], 2)
        else:
            ids: list[str] = []
            stop = asyncio.Event()
            async with httpx.AsyncClient(base_url=urls["bare"]) as bare:
                load = asyncio.create_task(readers(sdk, bare, ids, stop, args.readers))
                t0 = time.perf_counter()
                ids.extend(await run_jobs(sdk, engine, dataset_id, 1, "first", args.timeout_s))
                more = await run_jobs(sdk, engine, dataset_id, args.jobs - 1, "load", args.timeout_s)
                ids.extend(more)
                wall = time.perf_counter() - t0
                stop.set()
                api_ms, bare_ms = await load
            result.update(await step_figures(engine))
            result["jobs"] = args.jobs
            result["jobs_per_minute"] = round(args.jobs / wall * 60, 1)
            result["retrieve_ms"] = summary(api_ms)
            result["bare_select_ms"] = summary(bare_ms)
            result["retrieve_vs_bare_p50"] = round(
                result["retrieve_ms"]["p50"] / result["bare_select_ms"]["p50"], 2
            )
            result["retrieve_vs_bare_p99"] = round(
                result["retrieve_ms"]["p99"] / result["bare_select_ms"]["p99"], 2
            )
        async with httpx.AsyncClient() as http:
            counters = (await http.get(f"{urls['wandb'].removesuffix('/v1')}/_emulator/counters")).json()
        result["training_posts"] = counters.get("training_jobs_total")
        await sdk.close()
        result["load_avg_before_after"] = [load_before, load_average()]
        return result
    finally:
        stack.stop()
        await engine.dispose()
        await drop_database(db_url)
        if args.keep_logs:
            print(f"logs: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("single", "load", "both"), default="both")
    parser.add_argument("--single-jobs", type=int, default=30, help="jobs run one at a time")
    parser.add_argument("--floor-steps", type=int, default=60, help="steps of the bare client's floor")
    parser.add_argument("--jobs", type=int, default=100, help="jobs of the load scenario")
    parser.add_argument("--steps", type=int, default=3, help="steps per job (one group per step)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs-per-worker", type=int, default=4, help="WORKER__MAX_CONCURRENT_JOBS")
    parser.add_argument("--readers", type=int, default=4, help="concurrent reader loops in the load scenario")
    parser.add_argument("--poll-s", type=float, default=0.1, help="worker claim and event poll interval")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = ("single", "load") if args.scenario == "both" else (args.scenario,)
    results = [asyncio.run(scenario(args, kind)) for kind in kinds]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"== {r['scenario']}: {r['workers']} worker(s) × {r['jobs_per_worker']} job(s), load avg {r['load_avg_before_after']}"
        )
        print(f"  statuses {r['statuses']}, training POSTs {r['training_posts']}")
        print(f"  step wall ms {r['step_ms']}   job time / step ms {r['job_time_per_step_ms']}")
        if r["scenario"] == "single":
            print(f"  floor (bare ART client, same calls) ms {r['floor_ms']}")
            print(
                f"  service's own time per step p50: {r['overhead_p50_ms']} ms (step/floor {r['ratio_p50']}x); "
                f"worker's own histogram p50 by phase ≈ {r['worker_own_time_p50_ms']} ms"
            )
        else:
            print(f"  {r['jobs']} jobs, {r['jobs_per_minute']} jobs/minute")
            print(f"  retrieve ms {r['retrieve_ms']}")
            print(f"  bare Starlette SELECT ms {r['bare_select_ms']}")
            print(f"  retrieve / bare: p50 {r['retrieve_vs_bare_p50']}x, p99 {r['retrieve_vs_bare_p99']}x")


if __name__ == "__main__":
    main()
