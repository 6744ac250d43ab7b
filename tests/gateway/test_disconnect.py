"""A client that goes away cancels its upstream request (over a real uvicorn server)."""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.gateway.models import GatewayRequest
from app.main import create_app
from app.state import app_state
from tests.conftest import TEST_API_KEY
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import BASE_MODEL, gateway_settings, live_server
from tests.fixtures.recording_upstream import RecordingUpstream, Reply, chunk

BODY = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"Authorization": f"Bearer {TEST_API_KEY}"}


async def _logged(db_url: str) -> list[GatewayRequest]:
    engine = create_async_engine(db_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(GatewayRequest))).all()
    await engine.dispose()
    return rows  # type: ignore[return-value]


async def test_client_disconnect_mid_stream_closes_the_upstream_stream(
    clean_db: str, recording_upstream: RecordingUpstream
) -> None:
    recording_upstream.reply = Reply(
        events=[chunk({"content": f"piece {i} "}) for i in range(40)], event_delay_s=0.05
    )
    app = create_app(gateway_settings(clean_db, recording_upstream.base_url, "key"))
    async with live_server(app) as url:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
            async with client.stream(
                "POST", "/v1/chat/completions", json={**BODY, "stream": True}
            ) as response:
                assert response.status_code == 200
                seen = 0
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        seen += 1
                    if seen == 3:
                        break  # leaving the block closes the connection mid-stream
        await recording_upstream.wait_stream_closed()
        assert recording_upstream.streams_aborted == 1
        assert recording_upstream.streams_completed == 0
        gateway = app_state(app).gateway
        assert gateway.upstream.busy == 0  # the request released its slot; its connection was aborted
        assert gateway.metrics.client_disconnects._value.get() == 1
    [row] = await _logged(clean_db)  # shutdown flushed the request log
    assert (row.status_code, row.error_code, row.stream) == (499, "client_disconnected", True)


async def test_client_disconnect_while_waiting_for_a_non_streamed_answer_cancels_it(
    clean_db: str, emulator: EmulatorHandle
) -> None:
    emulator.inject("chat", "hang", seconds=30)
    app = create_app(gateway_settings(clean_db, emulator.base_url, emulator.api_key, read_timeout_s=60))
    async with live_server(app) as url:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=0.5) as client:
            try:
                await client.post("/v1/chat/completions", json=BODY)
            except httpx.ReadTimeout:
                pass  # the client gives up and closes its connection
        gateway = app_state(app).gateway
        for _ in range(100):  # the cancellation runs in the server task: let it happen
            if gateway.metrics.client_disconnects._value.get() == 1:
                break
            await asyncio.sleep(0.02)
        assert gateway.metrics.client_disconnects._value.get() == 1
        assert gateway.upstream.busy == 0
        # the gateway still serves
        emulator.clear_faults()
        async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
            assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
    rows = sorted(await _logged(clean_db), key=lambda r: r.id)
    assert [r.status_code for r in rows] == [499, 200]
