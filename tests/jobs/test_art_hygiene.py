"""ART's traps (art-serverless.md §7): `.env` loading on import, the W&B key, hosts other than WANDB_BASE_URL."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.factories import make_dataset
from tests.fixtures.service import StartService, wait_for_job

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
import dotenv
import dotenv.main

# art's load_dotenv() looks for a .env above the installed package (the project's, in a
# project venv): point that lookup at a .env of our own, and record what it did
dotenv.main.find_dotenv = lambda *a, **k: sys.argv[1]
real_load_dotenv = dotenv.load_dotenv
seen = {}


def recording_load_dotenv(*args, **kwargs):
    loaded = real_load_dotenv(*args, **kwargs)
    seen["key_right_after_load_dotenv"] = os.environ.get("WANDB_API_KEY")
    return loaded


dotenv.load_dotenv = recording_load_dotenv
from app.training.art_env import import_art

import_art()
seen.update({k: os.environ.get(k) for k in ("WANDB_API_KEY", "TC_FROM_DOTENV", "LITELLM_LOCAL_MODEL_COST_MAP")})
print(json.dumps(seen))
"""


def test_importing_art_through_the_service_keeps_dotenv_out_of_the_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("WANDB_API_KEY=leaked-key-from-dotenv\nTC_FROM_DOTENV=yes\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "TC_FROM_DOTENV")}
    # app/__init__.py also switches python-dotenv off; turn that off here so this test shows
    # that import_art's own environment restore is enough on its own
    env["PYTHON_DOTENV_DISABLED"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(dotenv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # the trap is real: `import art` put the .env's key into os.environ ...
    assert seen["key_right_after_load_dotenv"] == "leaked-key-from-dotenv"
    # ... and import_art took it (and everything else the .env added) out again
    assert seen["WANDB_API_KEY"] is None
    assert seen["TC_FROM_DOTENV"] is None
    assert seen["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


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
