"""The compact request log: one row per chat completion, no prompts, batched, with retention."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import openai
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.gateway.models import CapturedCompletion, GatewayRequest
from app.gateway.writer import BatchWriter, WriterMetrics, sweep_request_log
from app.state import app_state
from tests.conftest import asgi_client
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BASE_MODEL, flush_writers, seed_model

SECRET_PROMPT = "the launch code is 0000"
MESSAGES: list[Any] = [{"role": "user", "content": SECRET_PROMPT}]


async def _rows(app: FastAPI) -> list[GatewayRequest]:
    await flush_writers(app)
    async with app_state(app).sessionmaker() as session:
        return list((await session.scalars(sa.select(GatewayRequest).order_by(GatewayRequest.id))).all())


async def test_each_chat_completion_leaves_one_compact_row(
    gw_app: FastAPI, sdk: openai.AsyncOpenAI, emulator: EmulatorHandle
) -> None:
    seeded = await seed_model(gw_app, emulator, steps=(1,))
    await sdk.chat.completions.create(model="agent", messages=MESSAGES, metadata={"trajectory_id": "t-9"})
    streamed = await sdk.chat.completions.create(
        model=BASE_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    _ = [c async for c in streamed]
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="ghost", messages=MESSAGES)
    async with asgi_client(gw_app, api_key="wrong") as anon:
        await anon.post("/v1/chat/completions", json={"model": BASE_MODEL, "messages": MESSAGES})

    captured, stream, missing, unauthorized = await _rows(gw_app)
    assert captured.key_id == "bootstrap-0"
    assert (captured.model_requested, captured.model_served) == ("agent", seeded.artifact(1))
    assert (captured.status_code, captured.stream, captured.trajectory_id) == (200, False, "t-9")
    assert captured.prompt_tokens
    assert captured.completion_tokens
    assert captured.latency_ms >= captured.overhead_ms >= 0
    assert (stream.stream, stream.status_code) == (True, 200)
    assert stream.completion_tokens  # read from the stream's usage chunk
    assert (missing.status_code, missing.error_code, missing.model_served) == (404, "model_not_found", None)
    assert (unauthorized.status_code, unauthorized.key_id) == (401, None)
    # no prompt anywhere in the log
    for row in (captured, stream, missing, unauthorized):
        assert SECRET_PROMPT not in str(
            {c.name: getattr(row, c.name) for c in GatewayRequest.__table__.columns}
        )


async def test_models_routes_are_not_logged(gw_app: FastAPI, sdk: openai.AsyncOpenAI) -> None:
    await sdk.models.list()
    assert await _rows(gw_app) == []


async def test_retention_deletes_old_rows_in_batches(gw_app: FastAPI) -> None:
    now = dt.datetime.now(dt.UTC)

    def row(age_days: float) -> dict[str, Any]:
        return {
            "created_at": now - dt.timedelta(days=age_days),
            "route": "chat.completions",
            "stream": False,
            "status_code": 200,
            "latency_ms": 1.0,
            "overhead_ms": 0.1,
            "key_id": "k",
        }

    async with app_state(gw_app).engine.begin() as conn:
        await conn.execute(
            sa.insert(GatewayRequest), [row(40) for _ in range(7)] + [row(1) for _ in range(3)]
        )
    deleted = await sweep_request_log(app_state(gw_app).engine, retention_days=30, batch_size=2, now=now)
    assert deleted == 7
    remaining = await _rows(gw_app)
    assert len(remaining) == 3
    assert all(r.created_at > now - dt.timedelta(days=2) for r in remaining)
    assert await sweep_request_log(app_state(gw_app).engine, retention_days=0, batch_size=2) == 0


async def test_a_row_the_database_rejects_is_counted_and_the_rest_are_written(
    gw_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    registry = app_state(gw_app).metrics.registry
    table = CapturedCompletion.__table__
    assert isinstance(table, sa.Table)
    writer = BatchWriter(
        table,
        app_state(gw_app).engine,
        app_state(gw_app).gateway_metrics.writer,
        capacity=10,
        batch_size=10,
        interval_s=60,
    )

    def capture(id_: str, trajectory: str | None) -> dict[str, Any]:
        return {
            "id": id_,
            "created_at": dt.datetime.now(dt.UTC),
            "trajectory_id": trajectory,
            "model": "m",
            "upstream_model": "m",
            "messages": [],
            "choice": {},
        }

    caplog.set_level(logging.WARNING, logger="app.gateway.writer")
    writer.put(capture("cap-1", "t"))
    writer.put(capture("cap-2", None))  # NOT NULL violation
    writer.put(capture("cap-3", "t"))
    await writer.flush()
    async with app_state(gw_app).sessionmaker() as session:
        ids = (await session.scalars(sa.select(CapturedCompletion.id).order_by(CapturedCompletion.id))).all()
    assert ids == ["cap-1", "cap-3"]
    dropped = registry.get_sample_value(
        "gateway_writer_dropped_total", {"table": "captured_completions", "reason": "rejected"}
    )
    assert dropped == 1
    assert "gateway.writer_row_rejected table=captured_completions id=cap-2" in caplog.text
    assert isinstance(app_state(gw_app).gateway_metrics.writer, WriterMetrics)
