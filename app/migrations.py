"""Alembic upgrades that are safe when several processes start at once.

On Postgres the upgrade runs under a session-level advisory lock (taken in alembic/env.py);
late arrivals wait, then find the schema at head and do nothing. On SQLite the whole upgrade
is one `BEGIN IMMEDIATE` transaction, so SQLite's write lock serialises the processes the same
way (SQLite DDL is transactional). Within one process a thread lock serialises callers too:
Alembic keeps its migration context in module globals.
"""

from __future__ import annotations

import threading
from functools import lru_cache
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
DEFAULT_LOCK_TIMEOUT_S = 300.0

_in_process_lock = threading.Lock()


class MigrationLockTimeout(RuntimeError):
    """Another process held the migration lock for longer than the configured wait."""


def alembic_config(database_url: str, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["lock_timeout_s"] = lock_timeout_s
    return cfg


def upgrade(
    database_url: str, revision: str = "head", *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> None:
    """Upgrade the schema (blocking; run it in a thread from async code)."""
    ensure_sqlite_dir(database_url)
    with _in_process_lock:
        command.upgrade(alembic_config(database_url, lock_timeout_s=lock_timeout_s), revision)


def downgrade(
    database_url: str, revision: str = "base", *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> None:
    with _in_process_lock:
        command.downgrade(alembic_config(database_url, lock_timeout_s=lock_timeout_s), revision)


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    """The newest revision(s) of the code's migration scripts (read once; they do not change)."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())
