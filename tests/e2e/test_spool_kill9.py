"""A kill -9 of an API replica loses no answered capture or request-log row: a real uvicorn
replica whose writer would not flush for an hour answers completions (plain and streamed)
through the openai SDK, is SIGKILLed with every row still in its memory, and the replica
started next on the same spool directory stores each of them exactly once
(app/gateway/spool.py)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.gateway.models import CapturedCompletion, GatewayRequest
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.support import BIN, clean_env, free_port, sync_url

pytestmark = pytest.mark.e2e

API_KEY = "e2e-spool-" + "k" * 24
BASE = "OpenPipe/Qwen3-14B-Instruct"
ANSWERS = 12


def _spawn(port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "uvicorn"), "app.main:app", "--port", str(port), "--no-access-log"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _start(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = _spawn(port, env, cwd)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"replica exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if (await http.get(url + "/healthz")).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("replica did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _stored(settings: Settings) -> tuple[list[str | None], list[str | None]]:
    captured, logged, _choices = await _rows(settings)
    return captured, logged


async def _rows(settings: Settings) -> tuple[list[str | None], list[str | None], list[Any]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            captured = (await conn.scalars(sa.select(CapturedCompletion.trajectory_id))).all()
            choices = (await conn.scalars(sa.select(CapturedCompletion.choice))).all()
            logged = (
                await conn.scalars(
                    sa.select(GatewayRequest.trajectory_id).where(GatewayRequest.trajectory_id.is_not(None))
                )
            ).all()
    finally:
        await engine.dispose()
    return list(captured), list(logged), list(choices)


async def test_a_replica_killed_before_its_flush_loses_no_answered_capture_or_log_row(
    settings: Settings, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    env = clean_env(
        DATABASE_URL=sync_url(settings.database_url),
        API_KEYS=API_KEY,
        WANDB_BASE_URL=emulator.base_url,
        WANDB_API_KEY=emulator.api_key,
        RUN_WORKER="false",
        MIGRATE_ON_START="false",
        ENVIRONMENT="test",
        LOG_LEVEL="WARNING",
        INFERENCE__FLUSH_INTERVAL_S="3600",  # nothing reaches the database before the kill
        INFERENCE__SPOOL_DIR=str(spool),
    )
    first, url = await _start(env, tmp_path)
    answered: list[str | None] = []
    try:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        for i in range(ANSWERS):
            trajectory = f"t-{i}"
            messages: list[openai.types.chat.ChatCompletionMessageParam] = [
                {"role": "user", "content": f"move {i}?"}
            ]
            if i % 2:
                stream = await client.chat.completions.create(
                    model=BASE, messages=messages, metadata={"trajectory_id": trajectory}, stream=True
                )
                chunks = [chunk async for chunk in stream]
                assert chunks[-1].choices[0].finish_reason is not None
            else:
                answer = await client.chat.completions.create(
                    model=BASE, messages=messages, metadata={"trajectory_id": trajectory}
                )
                assert answer.choices[0].message.content
            answered.append(trajectory)
        await client.close()
        assert await _stored(settings) == ([], [])  # all of it only in the replica's memory (and spool)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        _stop(first)

    second, _ = await _start(env, tmp_path)  # adopts the dead replica's spool files at start
    try:
        for _ in range(200):
            captured, logged = await _stored(settings)
            if len(captured) >= ANSWERS and len(logged) >= ANSWERS:
                break
            await asyncio.sleep(0.05)
    finally:
        _stop(second)

    captured, logged, choices = await _rows(settings)
    # stored with the logprobs the gateway asked for, though they were stripped from the answers
    assert all(choice["logprobs"]["content"] for choice in choices)
    assert collections.Counter(captured) == collections.Counter(answered)  # each exactly once
    assert collections.Counter(logged) == collections.Counter(answered)
    assert os.listdir(spool) == []  # replayed files deleted; the second replica's own at its stop
