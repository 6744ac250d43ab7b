"""ART's traps (art-serverless.md §7.2): a job contacts only WANDB_BASE_URL and never exposes the W&B key.
(The `.env`-on-import trap needs a fresh interpreter: tests/e2e/test_art_hygiene.py.)"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import pytest

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService, wait_for_job


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse (and record) any connection or name lookup that is not loopback."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test guard: connection to {address} refused")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            attempts.append(host)
            raise OSError(f"test guard: lookup of {host} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


async def test_a_job_contacts_only_wandb_base_url_and_never_exposes_the_key(
    start_service: StartService,
    emulator: EmulatorHandle,
    loopback_only: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_service() as svc:
        ds = await make_dataset(svc.sessionmaker, groups=2)
        job = await svc.sdk.fine_tuning.jobs.create(
            model="OpenPipe/Qwen3-14B-Instruct", training_file=ds.id, suffix="hygiene"
        )
        done = await wait_for_job(svc.sdk, job.id)
        assert done.status == "succeeded", done.error
        assert "WANDB_API_KEY" not in os.environ
        events = [e async for e in await svc.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert emulator.api_key not in json.dumps([e.model_dump() for e in events])
        assert emulator.api_key not in done.model_dump_json()
    assert loopback_only == []
    assert all(emulator.api_key not in record.getMessage() for record in caplog.records)
