"""Connections to the game's Postgres (Prisma schema, camelCase columns that must be quoted)."""

from __future__ import annotations

import asyncpg


def asyncpg_dsn(url: str) -> str:
    """asyncpg takes `postgresql://`; settings hold the SQLAlchemy form `postgresql+asyncpg://`."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


async def connect(url: str, *, connect_timeout_s: float = 30.0) -> asyncpg.Connection:
    # command_timeout mirrors the game's own asyncpg setting (babylon-data.md §8).
    return await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout_s, command_timeout=60)
