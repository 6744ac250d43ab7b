"""Concurrent writes through the API all succeed, on SQLite and on Postgres.

The route reads then writes in one transaction through the normal session dependency
(tests/foundation/support.py). TODO(lead): add the same check on POST /v1/trajectories once
the pipeline's write route lands.
"""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from app.keys.models import ApiKey

WRITERS = 50


async def test_fifty_concurrent_writes_through_the_api_all_succeed(
    test_app: FastAPI, test_client: httpx.AsyncClient
) -> None:
    responses = await asyncio.gather(
        *(test_client.post("/v1/_test/keys", json={"name": f"writer-{i}"}) for i in range(WRITERS))
    )
    statuses = [r.status_code for r in responses]
    assert statuses == [201] * WRITERS, [r.text for r in responses if r.status_code != 201][:3]
    async with test_app.state.sessionmaker() as session:
        stored = await session.scalar(sa.select(sa.func.count()).select_from(ApiKey))
    assert stored == WRITERS
    assert len({r.json()["id"] for r in responses}) == WRITERS
