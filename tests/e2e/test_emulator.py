"""The emulator as a process (`training-control emulator`), and its isolation from ART."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.emulator import RemoteEmulator
from tests.fixtures.support import CLI, REPO

pytestmark = pytest.mark.e2e
EXECUTABLE = CLI


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    process = subprocess.Popen(
        [str(EXECUTABLE), "emulator", "--port", "0", "--api-key", "cli-key", "--gradient-steps", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # printed (and flushed) before serving
    match = re.search(r"(http://\S+/v1)", line)
    assert match, f"no URL in {line!r}; stderr: {process.stderr.read() if process.stderr else ''}"
    try:
        yield process, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_emulator_process_serves_the_api_and_stops_on_sigterm(
    emulator_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, base_url = emulator_process
    # The socket listens before the URL is printed: no retry loop is needed while uvicorn starts.
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{base_url}/health").json()["status"] == "ok"
        headers = {"Authorization": "Bearer cli-key"}
        created = http.post(
            f"{base_url}/preview/models",
            headers=headers,
            json={"project": "p", "name": "n", "base_model": "OpenPipe/Qwen3-14B-Instruct"},
        )
        assert created.status_code == 200
        assert (
            http.post(f"{base_url}/preview/models", headers={"Authorization": "Bearer other"}).status_code
            == 401
        )

    remote = RemoteEmulator(base_url, "cli-key")
    assert remote.counters()["requests"]["models.create"] == 2
    remote.close()

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.stderr is not None
    assert "Shutting down" in process.stderr.read()


def test_importing_the_emulator_does_not_import_art() -> None:
    code = "import sys, app_dev.emulator, app_dev.emulator.server; print('art' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "False"
