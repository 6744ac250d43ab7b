"""Alembic upgrades that are safe when several processes start at once.

On Postgres the upgrade runs under a session-level advisory lock (taken in alembic/env.py);
late arrivals wait, then find the schema at head and do nothing. SQLite upgrades run under
SQLite's own write lock (BEGIN IMMEDIATE on the migration connection).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app.db import ensure_sqlite_dir

ROOT = Path(__file__).resolve().parent.parent
# A constant key for pg_advisory_lock, the same in every process of this service.
MIGRATION_LOCK_KEY = 0x7472_6169_6E63  # "trainc"


def alembic_config(database_url: str, *, lock_timeout_s: float = 300.0) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["lock_timeout_s"] = lock_timeout_s
    return cfg


def upgrade(database_url: str, revision: str = "head", *, lock_timeout_s: float = 300.0) -> None:
    """Upgrade the schema (blocking; run it in a thread from async code)."""
    ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url, lock_timeout_s=lock_timeout_s), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return set(script.get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())
