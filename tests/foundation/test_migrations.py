"""Alembic: the chain round-trips on both databases, the models match the migrations, and
several processes migrating one fresh database at once all succeed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app import migrations
from app.db import create_engine
from app.models import Base
from tests.conftest import make_settings, run_blocking
from tests.foundation.support import clean_env, sync_url

PROCESSES = 3


async def _tables_and_heads(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(make_settings(url), pool=False)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
            heads = await conn.run_sync(migrations.current_revisions)
    finally:
        await engine.dispose()
    return tables, heads


def tables_and_heads(url: str) -> tuple[set[str], set[str]]:
    result: tuple[set[str], set[str]] = run_blocking(_tables_and_heads, url)
    return result


def test_upgrade_downgrade_upgrade_round_trip(fresh_db_url: str) -> None:
    migrations.upgrade(fresh_db_url)
    tables, heads = tables_and_heads(fresh_db_url)
    assert heads == set(migrations.head_revisions())
    assert {"alembic_version", "api_keys"} <= tables

    migrations.downgrade(fresh_db_url, "base")
    after_down, heads = tables_and_heads(fresh_db_url)
    assert heads == set()
    assert after_down <= {"alembic_version"}, f"downgrade left tables behind: {after_down}"

    migrations.upgrade(fresh_db_url)
    again, heads = tables_and_heads(fresh_db_url)
    assert heads == set(migrations.head_revisions())
    assert again == tables


async def _diff(url: str) -> list[Any]:
    engine = create_engine(make_settings(url), pool=False)
    try:
        async with engine.connect() as conn:

            def compare(sync_conn: sa.Connection) -> list[Any]:
                context = MigrationContext.configure(
                    sync_conn,
                    opts={"compare_type": True, "render_as_batch": sync_conn.dialect.name == "sqlite"},
                )
                return list(compare_metadata(context, Base.metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def test_models_match_the_migrations(db_url: str) -> None:
    """`alembic check`, in-process: autogenerate against a DB at head finds nothing to do.
    A model change without its migration (or the reverse) shows up here."""
    tables, _heads = tables_and_heads(db_url)
    assert sorted(set(Base.metadata.tables) - tables) == [], "tables without a migration"
    diff = run_blocking(_diff, db_url)
    assert diff == [], "models and migrations differ:\n" + "\n".join(map(repr, diff))


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
