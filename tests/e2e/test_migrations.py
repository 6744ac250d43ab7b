"""Several processes migrate one fresh database at once (subprocesses): exactly one migrates,
the others wait on the lock and find it done."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app import migrations
from tests.fixtures.support import clean_env, sync_url
from tests.test_migrations import tables_and_heads

pytestmark = pytest.mark.e2e

PROCESSES = 3


# Process start-up takes about a second and jitters by hundreds of milliseconds, far more
# than a migration race window. Each process therefore runs its slow imports (`setup`),
# reports ready and waits for one "go" file, so all of them reach the migration within
# milliseconds of each other.
STARTING_GATE = """
import os, sys, time
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
"""


def _run_together(setup: str, action: str, env: dict[str, str], cwd: Path) -> list[tuple[int, str]]:
    go = cwd / "go"
    script = "\n".join([textwrap.dedent(setup), STARTING_GATE, textwrap.dedent(action)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(cwd / f"ready-{i}"), str(go)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    deadline = time.monotonic() + 120
    while not all((cwd / f"ready-{i}").exists() for i in range(PROCESSES)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "processes did not start"
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        _out, err = proc.communicate(timeout=240)
        results.append((proc.returncode, err))
    return results


def _assert_all_migrated(results: list[tuple[int, str]], url: str) -> None:
    for code, err in results:
        assert code == 0, err
        assert "already exists" not in err, err
        assert "Traceback" not in err, err
    tables, heads = tables_and_heads(url)
    assert heads == set(migrations.head_revisions())
    assert {"alembic_version", "api_keys"} <= tables


def test_concurrent_migrate_commands_on_one_fresh_database(fresh_db_url: str, tmp_path: Path) -> None:
    """`training-control migrate` (app.cli:main) from several processes at once."""
    env = clean_env(DATABASE_URL=sync_url(fresh_db_url), LOG_LEVEL="WARNING")
    setup = "import app.cli, app.models, alembic.command"
    results = _run_together(setup, "sys.exit(app.cli.main(['migrate']))", env, tmp_path)
    _assert_all_migrated(results, fresh_db_url)


# Each process runs the app's lifespan with MIGRATE_ON_START (the default), as several API
# replicas or uvicorn workers starting together would.
LIFESPAN_SETUP = """
import asyncio
from asgi_lifespan import LifespanManager
from app.config import load_settings
from app.main import create_app

async def start_and_stop() -> None:
    service = create_app(load_settings())
    async with LifespanManager(service, startup_timeout=240):
        pass
"""


def test_concurrent_migrate_on_start_on_one_fresh_database(fresh_db_url: str, tmp_path: Path) -> None:
    env = clean_env(
        DATABASE_URL=fresh_db_url, API_KEYS="lifespan-test-key", RUN_WORKER="false", LOG_LEVEL="WARNING"
    )
    results = _run_together(LIFESPAN_SETUP, "asyncio.run(start_and_stop())", env, tmp_path)
    _assert_all_migrated(results, fresh_db_url)
