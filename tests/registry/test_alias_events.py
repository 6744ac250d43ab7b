"""Every alias move is recorded (`model_alias_events`): what it pointed at before and after,
and who moved it — the key of an API or dashboard move, nobody (the policy) for latest/best."""

from __future__ import annotations

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from app.registry.models import AliasEvent
from app.state import app_state
from tests.fixtures.gateway import seed_model


async def events(app: FastAPI) -> list[tuple[str, str, str | None, str | None]]:
    async with app_state(app).sessionmaker() as session:
        rows = (await session.scalars(sa.select(AliasEvent).order_by(AliasEvent.id))).all()
    return [(e.alias, e.checkpoint_id, e.previous_checkpoint_id, e.actor) for e in rows]


async def test_an_api_alias_move_is_recorded_with_its_key_and_a_repeat_is_not(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    seeded = await seed_model(app, None, steps=(1, 2), aliases={"latest": 2})
    step1, step2 = seeded.checkpoints[1].id, seeded.checkpoints[2].id
    assert await events(app) == [("latest", step2, None, None)]  # seeded by the policy's path
    for _ in range(2):  # the second move changes nothing and records nothing
        moved = await client.post("/v1/models/agent/aliases", json={"alias": "production", "checkpoint": 1})
        assert moved.status_code == 200, moved.text
    moved = await client.post("/v1/models/agent/aliases", json={"alias": "production", "checkpoint": "step2"})
    assert moved.status_code == 200, moved.text
    assert (await events(app))[1:] == [
        ("production", step1, None, "bootstrap-0"),
        ("production", step2, step1, "bootstrap-0"),
    ]
