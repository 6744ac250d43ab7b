"""`training-control emulator`: its help, and a real server process answering over HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli import build_parser, main
from tests.fixtures.emulator import RemoteEmulator

REPO = Path(__file__).resolve().parents[3]
EXECUTABLE = Path(sys.executable).parent / "training-control"


def test_emulator_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["emulator", "--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--pace-s", "--gradient-steps", "--api-key", "--stream-chunks"):
        assert option in out


def test_emulator_refuses_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulator", "--port", "0", "--gradient-steps", "0"]) == 2

    assert "gradient_steps must be >= 1" in capsys.readouterr().err


def test_emulator_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        assert main(["emulator", "--port", str(port)]) == 3  # ExitCode.PORT_IN_USE

    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


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
