"""Server time of the dashboard's heaviest pages: the job list with 10,000 jobs and the page of
a job with 100 steps (each with its checkpoint, events and aliases).

Seeds a fresh database directly (app_dev/dashboard_seed.py), starts the app in-process and
times each request through httpx's ASGI transport (no network, no browser: what the server
spends, templates included), after a warm-up.

    .venv/bin/python bench/dashboard/run.py                       # SQLite in a temp dir
    .venv/bin/python bench/dashboard/run.py --postgres            # a scratch Postgres database
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa
from asgi_lifespan import LifespanManager

from app.config import load_settings
from app.main import create_app
from app.state import app_state
from app_dev import dashboard_seed as seed

KEY = "bench-key-" + "x" * 24
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def _pg(sql: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(sa.text(sql))
    await engine.dispose()


async def timed(client: httpx.AsyncClient, path: str, n: int) -> list[float]:
    for _ in range(5):
        (await client.get(path)).raise_for_status()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = await client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return samples


def line(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"{name:<58} p50 {p50:6.1f} ms   p90 {p90:6.1f} ms   (n={len(samples)})"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", action="store_true", help="a scratch database on 127.0.0.1:5432")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--captures", type=int, default=0, help="also seed this many captures and time a search"
    )
    parser.add_argument("--requests", type=int, default=10_000, help="gateway requests in the last hour")
    parser.add_argument("-n", type=int, default=50, help="timed requests per page")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="dashboard-bench-")
    pg_name = f"dashboard_bench_{uuid.uuid4().hex[:8]}"
    if args.postgres:
        await _pg(f'CREATE DATABASE "{pg_name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    else:
        url = f"sqlite+aiosqlite:///{Path(tmp.name) / 'bench.db'}"
    try:
        settings = load_settings(
            environment="test", database_url=url, api_keys=KEY, run_worker=False, migrate_on_start=True
        )
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=120):
            async with app_state(app).sessionmaker() as session:
                await seed.seed_many_jobs(session, args.jobs)
                job = await seed.seed_job(session, steps=args.steps, model_name="bench-line")
                await seed.seed_gateway_traffic(session, args.requests)
                trajectory = await seed.seed_many_captures(session, args.captures) if args.captures else None
                await session.commit()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                login = await client.post("/dashboard/login", data={"api_key": KEY})
                assert login.status_code == 303, login.text
                first = await client.get("/dashboard/jobs")
                last_id = first.text.split('data-job-id="')[-1].split('"')[0]
                results = [
                    line(
                        f"/dashboard/jobs ({args.jobs} jobs), first page",
                        await timed(client, "/dashboard/jobs", args.n),
                    ),
                    line(
                        "/dashboard/jobs, a later page (after=…)",
                        await timed(client, f"/dashboard/jobs?after={last_id}", args.n),
                    ),
                    line(
                        "/dashboard/jobs?status=failed",
                        await timed(client, "/dashboard/jobs?status=failed", args.n),
                    ),
                    line(
                        f"/dashboard/jobs/<id> ({args.steps} steps)",
                        await timed(client, f"/dashboard/jobs/{job.job_id}", args.n),
                    ),
                    line(
                        f"/dashboard/models/<id> ({args.steps} checkpoints)",
                        await timed(client, f"/dashboard/models/{job.model.id}", args.n),
                    ),
                    line("/dashboard (overview)", await timed(client, "/dashboard", args.n)),
                    line(
                        f"/dashboard/overview/gateway ({args.requests} requests in the hour)",
                        await timed(client, "/dashboard/overview/gateway", args.n),
                    ),
                ]
                if trajectory is not None:
                    results.append(
                        line(
                            f"/dashboard/captures ({args.captures} captures)",
                            await timed(client, f"/dashboard/captures?trajectory_id={trajectory}", args.n),
                        )
                    )
        backend = "postgres" if args.postgres else "sqlite"
        load = os.getloadavg()
        print(f"backend {backend}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for result in results:
            print(result)
    finally:
        if args.postgres:
            await _pg(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
