"""The gateway's own HTTP/1.1 client (app/gateway/upstream.py) against a real loopback server."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from app.gateway.upstream import (
    PoolTimeout,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    build_request_head,
)
from tests.fixtures.recording_upstream import RecordingUpstream, Reply, chunk, completion

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


async def _post(pool: UpstreamPool, body: bytes = BODY) -> UpstreamResponse:
    head = build_request_head(
        "POST",
        pool.url("/chat/completions"),
        pool.host_header,
        [("Content-Type", "application/json")],
        len(body),
    )
    return await pool.request(head, body)


async def _pool(upstream: RecordingUpstream, **options: float) -> UpstreamPool:
    return UpstreamPool(upstream.base_url, **options)  # type: ignore[arg-type]


async def test_sequential_requests_reuse_one_keep_alive_connection(
    recording_upstream: RecordingUpstream,
) -> None:
    pool = await _pool(recording_upstream)
    for _ in range(5):
        response = await _post(pool)
        assert response.status == 200
        assert orjson.loads(await response.read()) == completion()
    assert recording_upstream.connections == 1
    assert [r.path for r in recording_upstream.requests] == ["/v1/chat/completions"] * 5
    assert (pool.size, pool.idle) == (1, 1)
    await pool.aclose()


async def test_concurrent_requests_open_connections_and_then_reuse_them(
    recording_upstream: RecordingUpstream,
) -> None:
    recording_upstream.reply = Reply(json=completion(), delay_s=0.05)
    pool = await _pool(recording_upstream, max_connections=4)

    async def one() -> bytes:
        return await (await _post(pool)).read()

    await asyncio.gather(*(one() for _ in range(12)))
    assert recording_upstream.connections == 4  # capped, the rest waited for a free one
    await asyncio.gather(*(one() for _ in range(4)))
    assert recording_upstream.connections == 4
    await pool.aclose()


async def test_idle_connections_expire(recording_upstream: RecordingUpstream) -> None:
    pool = await _pool(recording_upstream, keepalive_expiry=0.05)
    await (await _post(pool)).read()
    await asyncio.sleep(0.1)
    await (await _post(pool)).read()
    assert recording_upstream.connections == 2
    await pool.aclose()


async def test_a_connection_the_server_closes_is_not_reused(recording_upstream: RecordingUpstream) -> None:
    recording_upstream.reply = Reply(json=completion(), headers=[("Connection", "close")])
    pool = await _pool(recording_upstream)
    for _ in range(3):
        assert (await _post(pool)).status == 200
        await asyncio.sleep(0.01)
    assert recording_upstream.connections == 3
    await pool.aclose()


async def test_a_silent_upstream_times_out(recording_upstream: RecordingUpstream) -> None:
    recording_upstream.reply = Reply(json=completion(), delay_s=2)
    pool = await _pool(recording_upstream, read_timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        await _post(pool)
    assert pool.size == 0  # a timed-out connection is dropped
    await pool.aclose()


async def test_waiting_too_long_for_a_connection_is_a_pool_timeout(
    recording_upstream: RecordingUpstream,
) -> None:
    recording_upstream.reply = Reply(json=completion(), delay_s=0.5)
    pool = await _pool(recording_upstream, max_connections=1, pool_timeout=0.1)
    first = asyncio.create_task(_post(pool))
    await asyncio.sleep(0.05)
    with pytest.raises(PoolTimeout):
        await _post(pool)
    assert (await (await first).read()).startswith(b"{")
    await pool.aclose()


async def test_a_stream_arrives_in_pieces_and_a_half_read_one_is_aborted(
    recording_upstream: RecordingUpstream,
) -> None:
    events = [chunk({"content": f"piece {i}"}) for i in range(30)]
    recording_upstream.reply = Reply(events=events, event_delay_s=0.02)
    pool = await _pool(recording_upstream)

    response = await _post(pool)
    pieces = []
    while (data := await response.next_data()) is not None:
        pieces.append(data)
    text = b"".join(pieces)
    assert text.count(b"data: ") == 31
    assert text.endswith(b"data: [DONE]\n\n")
    assert len(pieces) > 1  # relayed as it came, not at the end
    assert (pool.size, pool.idle) == (1, 1)

    recording_upstream.stream_closed.clear()
    half = await _post(pool)
    assert (await half.next_data() or b"").startswith(b"data: ")
    await half.aclose()  # not read to its end: the connection is aborted, not pooled
    assert pool.size == 0
    await recording_upstream.wait_stream_closed()
    assert recording_upstream.streams_aborted == 1
    await pool.aclose()
