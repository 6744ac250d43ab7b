"""Prepare the service's database for the gateway benchmark (bench-only).

Migrates DATABASE_URL to head and registers one model line, `bench-agent`, with a checkpoint at
step 1 and the alias `production` pointing at it, so the benchmark's model name
`bench-agent:production` goes through alias resolution like a game agent's would. Old request-log
and capture rows are deleted so each run starts from the same table sizes.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/tc_bench .venv/bin/python bench/proxy/gateway_seed.py
"""

from __future__ import annotations

import asyncio
import os
import sys

import sqlalchemy as sa

from app import migrations
from app.config import load_settings, normalise_database_url
from app.db import create_engine, create_sessionmaker
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.registry.service import get_or_create_model, record_checkpoint, set_alias


async def seed(url: str) -> None:
    settings = load_settings(database_url=url, api_keys="unused", environment="development")
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        await session.execute(sa.delete(GatewayRequest))
        await session.execute(sa.delete(CapturedCompletion))
        model = await get_or_create_model(
            session,
            entity="bench",
            project="babylon-rl",
            name="bench-agent",
            base_model="OpenPipe/Qwen3-14B-Instruct",
        )
        ckpt = await record_checkpoint(session, model, step=1, metrics={"reward_mean": 0.5})
        await set_alias(session, model, "production", ckpt)
        await session.commit()
        print(f"seeded bench-agent:production -> {ckpt.artifact_name}")
    await engine.dispose()


def main() -> None:
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("set DATABASE_URL")
    url = normalise_database_url(url)
    migrations.upgrade(url)
    asyncio.run(seed(url))


if __name__ == "__main__":
    main()
