"""The `training-control` command line, run as operators run it: in subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.foundation.support import CLI, clean_env, free_port, run

COMMANDS = ["serve", "worker", "migrate", "emulator", "demo", "keys"]


def test_top_level_help_lists_every_command(tmp_path: Path) -> None:
    proc = run([CLI, "--help"], cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


HELP_ALL = """
import contextlib, io, json, sys
from app.cli import main
out = {}
for command in sys.argv[1:]:
    buffer = io.StringIO()
    code = None
    with contextlib.redirect_stdout(buffer):
        try:
            main([*command.split(), "--help"])
        except SystemExit as exc:
            code = exc.code
    out[command] = [code, buffer.getvalue()]
print(json.dumps(out))
"""


def test_every_command_has_help(tmp_path: Path) -> None:
    # One interpreter for all commands (the console script is exercised above): same parser,
    # a tenth of the start-up time.
    commands = [*COMMANDS, "keys create", "keys revoke", "keys list"]
    proc = run([sys.executable, "-c", HELP_ALL, *commands], cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    helps = json.loads(proc.stdout)
    for command in commands:
        code, text = helps[command]
        assert code == 0, command
        assert text.startswith(f"usage: training-control {command}"), text
    assert not (tmp_path / "data").exists(), "--help must not touch the database"


def test_python_dash_m_app_is_the_same_cli(tmp_path: Path) -> None:
    proc = run([sys.executable, "-m", "app", "--help"], cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: training-control")


def test_migrate_creates_the_default_sqlite_database_in_data(tmp_path: Path) -> None:
    proc = run([CLI, "migrate"], cwd=tmp_path, env=clean_env(LOG_LEVEL="WARNING"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "database at head"
    assert (tmp_path / "data" / "training.db").is_file()


def test_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    proc = run([CLI, "migrate"], cwd=tmp_path, env=clean_env(DATABASE_URL=url, LOG_LEVEL="WARNING"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("training-control: database error:")


def test_serve_refuses_to_start_without_a_key_in_production(tmp_path: Path) -> None:
    proc = run([CLI, "serve", "--port", str(free_port())], cwd=tmp_path, env=clean_env(LOG_LEVEL="WARNING"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "training-control: no API key configured: set API_KEYS, create one with "
        "`training-control keys create NAME`, or set ENVIRONMENT=development"
    ]


def test_uvicorn_refuses_to_start_without_a_key_with_a_clear_line(tmp_path: Path) -> None:
    proc = run(
        [str(Path(CLI).parent / "uvicorn"), "app.main:app", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env(LOG_LEVEL="WARNING"),
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "training-control: no API key configured" in proc.stderr


def test_serve_answers_healthz_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(ENVIRONMENT="development", RUN_WORKER="false", LOG_LEVEL="INFO")
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        response = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response is not None, proc.stderr.read() if proc.stderr else "no output"
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["x-request-id"]
        assert (tmp_path / "data" / "training.db").is_file()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        # uvicorn shuts down gracefully, then re-raises the signal so a supervisor sees it.
        assert proc.returncode in (0, -signal.SIGTERM), err
        assert "service.stopped" in err  # the lifespan's shutdown ran
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
