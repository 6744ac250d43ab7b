"""`training-control emulator`: its help, and a real server process answering over HTTP."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main

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
