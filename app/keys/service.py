"""API keys: creation (shown once), revocation, expiry, and verification of Bearer tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import is_unavailable, utcnow
from app.errors import NotFound
from app.ids import new_id
from app.keys.models import ApiKey
from app.keys.scopes import ALL_SCOPES, ModelAccess, Scope, check_pattern, decode_scopes, encode_scopes
from app.pagination import created_page

KEY_PREFIX = "tc-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# rpm and tpm are INTEGER columns (32-bit on Postgres)
MAX_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class KeyOptions:
    """What a new key may do. The defaults are a full-access key without limits."""

    scopes: frozenset[Scope] = ALL_SCOPES
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not self.scopes:
            raise ValueError("a key needs at least one scope")
        for name, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and not 0 < value <= MAX_LIMIT:
                raise ValueError(f"{name} must be a whole number from 1 to {MAX_LIMIT}, got {value}")
        if self.models is not None:
            object.__setattr__(self, "models", tuple(check_pattern(p) for p in self.models))


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    key: str


async def create_key(session: AsyncSession, name: str, options: KeyOptions | None = None) -> CreatedKey:
    """Store a new key's hash and return the key itself, which is never stored."""
    options = options or KeyOptions()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        name=name,
        prefix=key[:10],
        key_hash=hash_key(key),
        scopes=encode_scopes(options.scopes),
        models=list(options.models) if options.models is not None else None,
        rpm=options.rpm,
        tpm=options.tpm,
        expires_at=options.expires_at,
    )
    session.add(row)
    await session.flush()
    return CreatedKey(id=row.id, name=name, key=key)


def _usable(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(ApiKey.revoked_at.is_(None), sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))


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
    """Keys that can authenticate now (neither revoked nor expired)."""
    count = await session.scalar(sa.select(sa.func.count()).select_from(ApiKey).where(_usable(utcnow())))
    return int(count or 0)


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list((await session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at))).all())


async def list_keys_page(
    session: AsyncSession, *, after: str | None, limit: int
) -> tuple[list[ApiKey], bool]:
    """Keys, oldest first, keyset-paged on (created_at, id)."""
    query = sa.select(ApiKey)
    return await created_page(
        session, query, ApiKey, after=after, limit=limit, newest_first=False, what="API key"
    )


async def get_key(session: AsyncSession, key_id: str) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id", code="key_not_found")
    return row


async def key_names(session: AsyncSession, key_ids: Sequence[str]) -> dict[str, str]:
    if not key_ids:
        return {}
    rows = await session.execute(sa.select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(list(key_ids))))
    return {row.id: row.name for row in rows}


def key_status(row: ApiKey, now: dt.datetime | None = None) -> Literal["active", "expired", "revoked"]:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request and what it may do: a stored key, or `bootstrap-<n>` for a key from
    API_KEYS. `expires_at` is Unix seconds (None: never)."""

    key_id: str
    name: str = ""
    scopes: frozenset[Scope] = ALL_SCOPES
    models: ModelAccess = field(default_factory=ModelAccess)
    rpm: int | None = None
    tpm: int | None = None
    expires_at: float | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


class Authenticator:
    """Verifies Bearer tokens against API_KEYS and stored keys.

    Stored keys are cached for `ttl_s` seconds so the inference proxy's hot path does not
    query the database per request; a revoked key stops working within that time, an expired
    one at its `expires_at` (checked on every cache hit, not only when the entry is refreshed).
    """

    def __init__(
        self,
        bootstrap_keys: list[str],
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        ttl_s: float = 5.0,
        max_cached: int = 10_000,
        bootstrap_scopes: frozenset[Scope] = ALL_SCOPES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._bootstrap = [
            (hash_key(k), Principal(f"bootstrap-{i}", f"bootstrap-{i}", bootstrap_scopes))
            for i, k in enumerate(bootstrap_keys)
        ]
        self._sessionmaker = sessionmaker
        self._ttl_s = ttl_s
        self._max_cached = max_cached
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self.stale_served = 0  # answers given from an expired entry while the database was away

    @property
    def has_bootstrap_keys(self) -> bool:
        return bool(self._bootstrap)

    async def verify(self, token: str) -> Principal | None:
        return await self.verify_digest(hash_key(token))

    async def verify_digest(self, digest: str) -> Principal | None:
        """Like `verify`, from the key's SHA-256 (what a dashboard session keeps instead of the key)."""
        for known, principal in self._bootstrap:
            if hmac.compare_digest(known, digest):
                return principal
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            found = cached[0]
        else:
            try:
                found = await self._lookup(digest)
            except Exception as exc:
                # The database is away (issue 16): a key this process has verified keeps working
                # on its last answer (expiry still checked below) until the database returns, as
                # the gateway keeps serving names it has resolved; anything else is an error.
                if cached is None or not is_unavailable(exc):
                    raise
                found = cached[0]
                self.stale_served += 1
            else:
                if len(self._cache) >= self._max_cached:
                    self._cache.clear()
                self._cache[digest] = (found, now + self._ttl_s)
        if found is not None and found.expires_at is not None and found.expires_at <= self._clock():
            return None
        return found

    def forget(self) -> None:
        """Drop every cached answer (a key was revoked through this process)."""
        self._cache.clear()

    async def _lookup(self, digest: str) -> Principal | None:
        async with self._sessionmaker() as session:
            row = await session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == digest, _usable(utcnow())))
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return principal_of(row)


def principal_of(row: ApiKey) -> Principal:
    return Principal(
        key_id=row.id,
        name=row.name,
        scopes=decode_scopes(row.scopes),
        models=ModelAccess.of(row.models),
        rpm=row.rpm,
        tpm=row.tpm,
        expires_at=row.expires_at.timestamp() if row.expires_at is not None else None,
    )
