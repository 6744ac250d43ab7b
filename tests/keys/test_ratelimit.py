"""Leases never grant past a key's limit, however many replicas ask at once; the local budget
admits without the database and refuses with OpenAI's headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.errors import RateLimited
from app.keys import service as keys_service
from app.keys.ratelimit import RateLimiter, Resource, duration, lease
from app.keys.service import KeyOptions, Principal


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


async def _key(engine: AsyncEngine, **limits: int) -> Principal:
    async with create_sessionmaker(engine)() as session:
        created = await keys_service.create_key(session, "limited", KeyOptions(**limits))  # type: ignore[arg-type]
        await session.commit()
    return Principal(created.id, "limited", rpm=limits.get("rpm"), tpm=limits.get("tpm"))


async def test_concurrent_leases_add_up_to_the_limit_exactly(engine: AsyncEngine) -> None:
    key = await _key(engine, rpm=10)
    grants = await asyncio.gather(*(lease(engine, key.key_id, 7, Resource.requests, 3, 10) for _ in range(8)))
    assert sum(g for g, _ in grants) == 10
    assert max(total for _, total in grants) == 10
    assert await lease(engine, key.key_id, 7, Resource.requests, 3, 10) == (0, 10)
    # the next window starts over
    assert await lease(engine, key.key_id, 8, Resource.requests, 3, 10) == (3, 3)


async def test_the_limiter_admits_the_limit_then_refuses_with_retry_after(engine: AsyncEngine) -> None:
    key = await _key(engine, rpm=5)
    limiter = RateLimiter(engine, lease_fraction=0.4, clock=lambda: 60 * 1000 + 15.0)
    for expected_remaining in (4, 3, 2, 1, 0):
        headers = dict(await limiter.admit(key))
        assert headers[b"x-ratelimit-limit-requests"] == b"5"
        assert headers[b"x-ratelimit-reset-requests"] == b"45s"
        assert int(headers[b"x-ratelimit-remaining-requests"]) >= expected_remaining
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(key)
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers is not None
    assert refused.value.headers["Retry-After"] == "45"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    await limiter.aclose()


async def test_tokens_are_charged_after_the_answer_and_may_overshoot_by_the_last_one(
    engine: AsyncEngine,
) -> None:
    key = await _key(engine, tpm=100)
    limiter = RateLimiter(engine, lease_fraction=1.0, clock=lambda: 60 * 2000 + 1.0)
    await limiter.admit(key)
    limiter.charge(key, 90)
    await limiter.admit(key)  # 10 left: admitted, its size is not known yet
    limiter.charge(key, 40)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(key)
    assert refused.value.type == "tokens"
    await limiter.aclose()


def test_reset_durations_are_written_as_openai_does() -> None:
    assert [duration(s) for s in (0.25, 1.0, 17.2, 60.0, 359.5)] == ["250ms", "1s", "18s", "1m0s", "6m0s"]
