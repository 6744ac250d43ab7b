#!/usr/bin/env python3
"""One dataset build, measured: the service's own code path (app.datasets.service.build_dataset)
from a game database into a fresh service database, as POST /v1/datasets runs it.

    .venv/bin/python bench/pipeline/build.py --dsn postgresql://postgres@127.0.0.1:5432/babylon_bench_1m \
        [--service-db sqlite|postgres] [--scorer babylon_local] [--max-groups-per-window 1] \
        [--persist-scores used|all|none]

Timed: build_dataset() only (read, parse, score, group, build messages, write the snapshot and
scores). Not timed: migrating the fresh service DB. Prints one JSON object; peak RSS is this
process's (run it under /usr/bin/time for the kernel's figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from app import migrations
from app.config import load_settings
from app.datasets.schemas import DatasetCreate
from app.datasets.service import build_dataset, create_dataset
from app.db import create_engine, create_sessionmaker
from app.main import install_extensions

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cleanup: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="bench-pipeline-")
    if args.service_db == "sqlite":
        service_url = f"sqlite+aiosqlite:///{Path(tmp.name) / 'service.db'}"
    else:
        name = f"bench_pipeline_svc_{os.getpid()}_{secrets.token_hex(3)}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        cleanup.append(name)
        service_url = (
            PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
        )
    try:
        await asyncio.to_thread(migrations.upgrade, service_url)
        settings = load_settings(
            environment="development",
            database_url=service_url,
            babylon_database_url=args.dsn,
            run_worker=False,
        )
        engine = create_engine(settings)
        sessionmaker = create_sessionmaker(engine)
        install_extensions()  # the game's source, as the service's composition root does
        params = DatasetCreate(
            source="babylon",
            include_used=args.include_used,
            scorer=args.scorer,
            min_agents=args.min_agents,
            max_group_size=args.max_group_size,
            max_groups_per_window=args.max_groups_per_window,
            persist_scores=args.persist_scores,
        )
        async with sessionmaker() as session:
            dataset_id = (await create_dataset(session, settings, params)).id
            await session.commit()
        cpu0, t0 = time.process_time(), time.perf_counter()
        dataset = await build_dataset(sessionmaker, settings, dataset_id)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await engine.dispose()
    finally:
        for name in cleanup:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        tmp.cleanup()
    if dataset.status != "ready":
        raise SystemExit(f"build failed: {dataset.error}")
    stats = dataset.stats
    rows = stats["rows"]["read"]
    return {
        "variant": f"build-{args.scorer}-g{args.max_groups_per_window}-{args.persist_scores}-{args.service_db}",
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": rows,
        "windows": stats["windows"],
        "groups": dataset.group_count,
        "trajectories_in_groups": dataset.trajectory_count,
        "rejected": stats["rows"]["rejected"],
        "scores_persisted": stats["scores"]["persisted"],
        "bytes_read": stats["bytes_read"],
        "traj_per_s": rows / wall,
        "mb_per_s": stats["bytes_read"] / wall / 1e6,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True, help="the game database")
    p.add_argument("--service-db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--scorer", default="babylon_local")
    p.add_argument("--min-agents", type=int, default=2, help="the anchor's MIN_AGENTS")
    p.add_argument("--max-group-size", type=int, default=8)
    p.add_argument("--max-groups-per-window", type=int, default=1)
    p.add_argument("--persist-scores", choices=["used", "all", "none"], default="used")
    p.add_argument(
        "--only-unused", dest="include_used", action="store_false", help="default: every row, as the anchor"
    )
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
