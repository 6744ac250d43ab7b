"""The `training-control` command line, run as operators run it: in subprocesses."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager

from app.cli import main
from app.config import Settings
from app.db import create_engine
from app.main import create_app
from app.migrations import head_revisions
from tests.conftest import asgi_client, make_settings
from tests.fixtures.support import CLI, clean_env, free_port, run, sync_url

pytestmark = pytest.mark.e2e

COMMANDS = ["serve", "worker", "migrate", "emulator", "demo", "keys", "jobs", "datasets", "models", "aliases"]


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


def _cli(args: list[str], db_url: str, tmp_path: Path) -> tuple[int, str, str]:
    proc = run([CLI, *args], cwd=tmp_path, env=clean_env(DATABASE_URL=sync_url(db_url)))
    return proc.returncode, proc.stdout, proc.stderr


async def _stored_rows(db_url: str) -> list[dict[str, Any]]:
    engine = create_engine(make_settings(db_url), pool=False)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT * FROM api_keys"))).mappings().all()
    finally:
        await engine.dispose()
    return [dict(r) for r in rows]


async def test_cli_key_is_printed_once_stored_hashed_and_revocable(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    code, out, err = _cli(["keys", "create", "ci-bot"], db_url, tmp_path)
    assert code == 0, err
    key = out.strip()
    assert len(out.splitlines()) == 1
    assert key.startswith("tc-")
    assert len(key) >= 40
    assert "shown only this once" in err

    rows = await _stored_rows(db_url)
    assert len(rows) == 1
    assert rows[0]["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert all(key not in str(value) for value in rows[0].values())

    code, listing, _ = _cli(["keys", "list"], db_url, tmp_path)
    assert code == 0
    assert "ci-bot" in listing
    assert key not in listing

    # No API_KEYS and production: the stored key alone lets the service start and be used.
    only_stored = make_settings(db_url, api_keys="", environment="production", auth={"key_cache_ttl_s": 0})
    app = create_app(only_stored)
    async with LifespanManager(app, startup_timeout=60), asgi_client(app, api_key=key) as client:
        assert (await client.get("/metrics")).status_code == 200

        code, out, err = _cli(["keys", "revoke", "ci-bot"], db_url, tmp_path)
        assert code == 0, err
        assert "revoked" in out

        response = await client.get("/metrics")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"

    code, _, err = _cli(["keys", "revoke", "ci-bot"], db_url, tmp_path)
    assert code == 7  # ExitCode.NOT_FOUND
    assert "no active API key" in err


def test_serve_on_a_taken_port_refuses_in_one_line_before_migrating(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(
            [CLI, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(ENVIRONMENT="development", LOG_LEVEL="INFO"),
        )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        f"training-control: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another process uses it? pick another with --port)"
    ]
    assert not (tmp_path / "data").exists(), "the port is checked before the database is touched"


def _migrate_to(revision: str, cwd: Path) -> None:
    proc = run([CLI, "migrate", revision], cwd=cwd, env=clean_env(LOG_LEVEL="WARNING"))
    assert proc.returncode == 0, proc.stderr


def test_serve_and_worker_refuse_a_schema_behind_head_in_one_line(tmp_path: Path) -> None:
    _migrate_to("0001", tmp_path)
    head = max(head_revisions())
    expected = [
        f"training-control: the database schema is at 0001 but this version needs {head}: "
        "run `training-control migrate`"
    ]
    env = clean_env(ENVIRONMENT="development", MIGRATE_ON_START="false", LOG_LEVEL="INFO")
    serve = run([CLI, "serve", "--port", str(free_port())], cwd=tmp_path, env=env)
    worker = run([CLI, "worker"], cwd=tmp_path, env=env)
    for proc in (serve, worker):
        assert proc.returncode == 4, proc.stderr
        assert proc.stderr.splitlines() == expected


def test_serve_migrates_once_and_the_app_only_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process: uvicorn's run is replaced by the app's lifespan, so the whole start-up path of
    # `serve` runs (port, migration, key check, create_app, lifespan) without serving.
    import uvicorn
    from asgi_lifespan import LifespanManager

    from app import migrations

    calls: list[str] = []
    real_upgrade = migrations.upgrade

    def counting_upgrade(url: str, revision: str = "head", **kwargs: object) -> None:
        calls.append(revision)
        real_upgrade(url, revision, **kwargs)  # type: ignore[arg-type]

    def run_lifespan(self: uvicorn.Server, sockets: object = None) -> None:
        async def go() -> None:
            async with LifespanManager(self.config.app, startup_timeout=60):
                self.started = True

        asyncio.run(go())

    monkeypatch.setattr(migrations, "upgrade", counting_upgrade)
    monkeypatch.setattr(uvicorn.Server, "run", run_lifespan)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith(("DATABASE_URL", "MIGRATE_ON_START", "API_KEYS", "RUN_WORKER")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("RUN_WORKER", "false")
    assert main(["serve", "--port", str(free_port())]) == 0
    assert calls == ["head"]
    assert (tmp_path / "data" / "training.db").is_file()
