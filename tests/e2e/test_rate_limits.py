"""A key's requests-per-minute limit holds across two API replicas (real uvicorn processes on one
Postgres), and its usage equals the tokens the upstream reported, whichever replica served.

The bound (app/keys/ratelimit.py): within one minute window the replicas together admit at
most N requests (never more: the database grants at most N), and at least N − (replicas − 1) ×
chunk (a replica's unspent lease is lost to the others for that window).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.keys import service as keys_service
from app.keys.service import KeyOptions
from tests.fixtures.recording_upstream import RecordingUpstream
from tests.fixtures.support import BIN, clean_env, free_port, sync_url

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-admin-" + "k" * 24
LIMIT = 20
LEASE_FRACTION = 0.1
REPLICAS = 2
TOKENS_PER_ANSWER = 11  # the recording upstream's usage: 5 prompt + 6 completion


@pytest.fixture
async def replicas(
    settings: Settings, backend: str, recording_upstream: RecordingUpstream, tmp_path: Path
) -> AsyncIterator[list[str]]:
    if backend != "postgres":
        pytest.skip("replicas share one Postgres")
    env = clean_env(
        DATABASE_URL=sync_url(settings.database_url),
        API_KEYS=ADMIN_KEY,
        WANDB_BASE_URL=recording_upstream.base_url,
        RUN_WORKER="false",
        MIGRATE_ON_START="false",
        ENVIRONMENT="test",
        LOG_LEVEL="WARNING",
        INFERENCE__FLUSH_INTERVAL_S="0.05",
        AUTH__RATE_LEASE_FRACTION=str(LEASE_FRACTION),
    )
    ports = [free_port() for _ in range(REPLICAS)]
    procs = [_start_replica(port, env, tmp_path) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        async with httpx.AsyncClient() as http:
            for url, proc in zip(urls, procs, strict=True):
                for _ in range(300):
                    if proc.poll() is not None:
                        raise AssertionError(
                            f"replica exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                        )
                    try:
                        if (await http.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _start_replica(port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "uvicorn"), "app.main:app", "--port", str(port), "--no-access-log"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _limited_key(settings: Settings) -> str:
    engine = create_engine(settings, pool=False)
    try:
        async with create_sessionmaker(engine)() as session:
            created = await keys_service.create_key(session, "agents", KeyOptions(rpm=LIMIT))
            await session.commit()
    finally:
        await engine.dispose()
    return created.key


async def _wait_for_a_fresh_window(needed_s: float = 4.0) -> None:
    left = 60 - time.time() % 60
    if left < needed_s:
        await asyncio.sleep(left + 0.2)


async def test_a_key_limited_to_n_per_minute_gets_at_most_n_across_two_replicas(
    settings: Settings, replicas: list[str], recording_upstream: RecordingUpstream
) -> None:
    key = await _limited_key(settings)
    clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) for url in replicas]
    attempts = 3 * LIMIT
    gate = asyncio.Semaphore(8)

    refusals: list[httpx.Headers] = []

    async def one(i: int) -> bool:
        async with gate:
            try:
                await clients[i % REPLICAS].chat.completions.create(
                    model="OpenPipe/Qwen3-14B-Instruct", messages=[{"role": "user", "content": "hi"}]
                )
                return True
            except openai.RateLimitError as exc:  # the SDK's class for 429
                refusals.append(exc.response.headers)
                return False

    await _wait_for_a_fresh_window()
    window = int(time.time() // 60)
    outcomes = await asyncio.gather(*(one(i) for i in range(attempts)))
    assert int(time.time() // 60) == window, "the burst straddled a minute boundary"
    accepted = sum(outcomes)
    assert len(refusals) == attempts - accepted
    assert all(h["x-ratelimit-limit-requests"] == str(LIMIT) and int(h["retry-after"]) >= 1 for h in refusals)
    chunk = max(1, math.ceil(LIMIT * LEASE_FRACTION))
    assert LIMIT - (REPLICAS - 1) * chunk <= accepted <= LIMIT
    assert len(recording_upstream.requests) == accepted  # refused requests never reach the upstream

    # usage, read from either replica, adds up to what the upstream reported
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        for _ in range(100):
            data = (await http.get(replicas[1] + "/v1/usage")).json()["data"]
            if sum(b["requests"] for b in data) == attempts:
                break
            await asyncio.sleep(0.1)
    # one bucket for the answered requests (by model), one for the refusals (refused before the
    # body, so before the model, was read)
    assert {b["key_name"] for b in data} == {"agents"}
    assert sum(b["requests"] for b in data) == attempts
    assert sum(b["errors"] for b in data) == attempts - accepted
    assert sum(b["total_tokens"] for b in data) == accepted * TOKENS_PER_ANSWER
    for client in clients:
        await client.close()
