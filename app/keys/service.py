"""API keys: creation (shown once), revocation, and verification of Bearer tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.errors import NotFound
from app.ids import new_id
from app.keys.models import ApiKey

KEY_PREFIX = "tc-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    key: str


async def create_key(session: AsyncSession, name: str) -> CreatedKey:
    """Store a new key's hash and return the key itself, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), name=name, prefix=key[:10], key_hash=hash_key(key))
    session.add(row)
    await session.flush()
    return CreatedKey(id=row.id, name=name, key=key)


async def revoke_key(session: AsyncSession, key_id_or_name: str) -> list[ApiKey]:
    """Revoke a key by id, or every active key with that name; NotFound if none matched."""
    rows = (
        await session.scalars(
            sa.select(ApiKey).where(
                sa.or_(ApiKey.id == key_id_or_name, ApiKey.name == key_id_or_name),
                ApiKey.revoked_at.is_(None),
            )
        )
    ).all()
    if not rows:
        raise NotFound(f"no active API key with id or name {key_id_or_name!r}", code="key_not_found")
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    await session.flush()
    return list(rows)


async def count_active_keys(session: AsyncSession) -> int:
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
    )
    return int(count or 0)


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at))).all())


@dataclass(frozen=True)
class Principal:
    """Who made a request: a stored key's id, or `bootstrap-<n>` for a key from API_KEYS."""

    key_id: str


class Authenticator:
    """Verifies Bearer tokens against API_KEYS and stored keys.

    Stored keys are cached for `ttl_s` seconds so the inference proxy's hot path does not
    query the database per request; a revoked key stops working within that time.
    """

    def __init__(
        self,
        bootstrap_keys: list[str],
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl_s: float = 5.0,
        max_cached: int = 10_000,
    ) -> None:
        self._bootstrap = [(hash_key(k), f"bootstrap-{i}") for i, k in enumerate(bootstrap_keys)]
        self._sessionmaker = sessionmaker
        self._ttl_s = ttl_s
        self._max_cached = max_cached
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    @property
    def has_bootstrap_keys(self) -> bool:
        return bool(self._bootstrap)

    async def verify(self, token: str) -> Principal | None:
        return await self.verify_digest(hash_key(token))

    async def verify_digest(self, digest: str) -> Principal | None:
        """Like `verify`, from the key's SHA-256 (what a dashboard session keeps instead of the key)."""
        for known, key_id in self._bootstrap:
            if hmac.compare_digest(known, digest):
                return Principal(key_id)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self._lookup(digest)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[digest] = (principal, now + self._ttl_s)
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        async with self._sessionmaker() as session:
            row = (
                await session.execute(
                    sa.select(ApiKey.id, ApiKey.key_hash).where(
                        ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return Principal(row.id)
