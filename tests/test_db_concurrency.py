"""Concurrent writes through the API all succeed, on SQLite and on Postgres.

Two routes: a test route that reads then writes in one transaction through the normal session
dependency (tests/fixtures/support.py), and the product's own POST /v1/trajectories.
"""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from app.keys.models import ApiKey
from app.state import app_state

WRITERS = 50


async def test_fifty_concurrent_writes_through_the_api_all_succeed(
    test_app: FastAPI, test_client: httpx.AsyncClient
) -> None:
    responses = await asyncio.gather(
        *(test_client.post("/v1/_test/keys", json={"name": f"writer-{i}"}) for i in range(WRITERS))
    )
    statuses = [r.status_code for r in responses]
    assert statuses == [201] * WRITERS, [r.text for r in responses if r.status_code != 201][:3]
    async with app_state(test_app).sessionmaker() as session:
        stored = await session.scalar(sa.select(sa.func.count()).select_from(ApiKey))
    assert stored == WRITERS
    assert len({r.json()["id"] for r in responses}) == WRITERS


async def test_fifty_concurrent_trajectory_pushes_all_succeed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    def batch(i: int) -> dict[str, object]:
        return {
            "trajectories": [
                {
                    "messages_and_choices": [
                        {"role": "user", "content": f"state {i}"},
                        {"role": "assistant", "content": f"action {i}"},
                    ],
                    "reward": i / WRITERS,
                    "metadata": {"scenario_id": f"window-{i % 5}", "agent_id": f"agent-{i}"},
                }
            ]
        }

    responses = await asyncio.gather(
        *(client.post("/v1/trajectories", json=batch(i)) for i in range(WRITERS))
    )
    assert [r.status_code for r in responses] == [200] * WRITERS, [
        r.text for r in responses if r.status_code != 200
    ][:3]
    assert all(r.json()["accepted"] == 1 for r in responses)
    listed = []
    after = None
    while True:
        page = (
            await client.get("/v1/trajectories", params={"limit": 100, **({"after": after} if after else {})})
        ).json()
        listed += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(listed) == WRITERS
    assert sorted(t["reward"] for t in listed) == sorted(i / WRITERS for i in range(WRITERS))
