"""Alembic: the chain round-trips on both databases, the models match the migrations, and
several processes migrating one fresh database at once all succeed."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app import migrations
from app.db import create_engine
from app.models import Base
from tests.conftest import make_settings, run_blocking


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
