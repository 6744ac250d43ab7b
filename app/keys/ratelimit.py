"""Per-key requests- and tokens-per-minute limits that hold across API replicas.

The budget of a key for one minute (a fixed window: `int(unix_time // 60)`, the same on every
replica whose clock is in sync) lives in one row of `api_key_rate_windows`. A replica never asks
the database per request: it **leases a chunk** of the budget (`AUTH__RATE_LEASE_FRACTION` of
the limit, at least 1) with one atomic `UPDATE … SET granted = granted + grant … RETURNING`
(SQLite ≥ 3.35 and Postgres alike; the row lock makes concurrent leases from several
replicas add up exactly), spends it locally, and leases the next chunk in the background when
half of the current one is gone. Only the first request of a window, or one arriving when the
local chunk is spent before the background lease returned, waits for a lease: one round trip
per chunk, not per request.

Bounds (stated and measured by tests/e2e/test_rate_limits.py):

- **requests**: the database never grants more than the limit in a window, and a replica admits
  only what it was granted, so the replicas together admit **at most N requests per window**
  (0 over). A fixed window admits up to 2N in the 60 s that straddle a window boundary. Granted
  chunks a replica does not use are lost for that window, so a key may be refused with up to
  (replicas − 1) × chunk of its budget unused.
- **tokens**: a request is admitted while its replica's token budget is positive; its tokens are
  known, and charged, only when its answer ends (streams included), so the window's tokens may
  exceed the limit by the tokens of the requests in flight when it ran out (on all replicas),
  at most. Tokens charged past a window's end count against the next window.
- **database unreachable**: a replica that cannot lease grants itself the rest of the limit for
  that window and logs it; the limit then holds per replica (≤ N × replicas), not per key.

Headers: the `x-ratelimit-*` OpenAI sends (https://platform.openai.com/docs/guides/rate-limits,
"Rate limits in headers"): `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
`x-ratelimit-reset-requests` (a duration such as `1s` or `6m0s`), the same for `-tokens`, and on
a 429 `Retry-After` in seconds (RFC 9110 §10.2.3). `remaining` is this replica's view: the
limit minus what the database had granted at its last lease, plus what it has left of its own
chunk (exact with one replica; with more it may be high by other replicas' unspent chunks).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import RateLimited
from app.keys.models import RateWindow
from app.keys.service import Principal

logger = logging.getLogger(__name__)

WINDOW_S = 60
Headers = list[tuple[bytes, bytes]]


class Resource(StrEnum):
    requests = "requests"
    tokens = "tokens"


_GRANTED = {Resource.requests: RateWindow.requests_granted, Resource.tokens: RateWindow.tokens_granted}
_LAST = {Resource.requests: RateWindow.last_requests_grant, Resource.tokens: RateWindow.last_tokens_grant}
_TABLE: sa.Table = RateWindow.__table__  # type: ignore[assignment]
_LIMIT_HEADER = {r: f"x-ratelimit-limit-{r.value}".encode() for r in Resource}
_REMAINING_HEADER = {r: f"x-ratelimit-remaining-{r.value}".encode() for r in Resource}
_RESET_HEADER = {r: f"x-ratelimit-reset-{r.value}".encode() for r in Resource}


@dataclass(slots=True)
class _Pool:
    """One resource of one key in one window, as this replica sees it."""

    limit: int
    chunk: int
    local: int = 0  # granted to this replica and not yet spent (tokens: may go negative)
    granted_total: int = 0  # what the database had granted (all replicas) at the last lease
    exhausted: bool = False  # the database granted nothing more this window
    lease: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Budget:
    window: int
    requests: _Pool | None
    tokens: _Pool | None
    limits: Headers = field(default_factory=list)


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: `17s`, `1m0s`, `250ms`."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class RateLimiter:
    """The leases and local budgets of one process (module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease_fraction: float = 0.1,
        clock: Callable[[], float] = time.time,
        max_keys: int = 10_000,
    ) -> None:
        self._engine = engine
        self._fraction = lease_fraction
        self._clock = clock
        self._max_keys = max_keys
        self._budgets: dict[str, _Budget] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the hot path
    async def admit(self, principal: Principal) -> Headers:
        """Admit one request of a limited key, or raise 429; returns the x-ratelimit headers."""
        now = self._clock()
        budget = self._budget(principal, now)
        tokens = budget.tokens
        if tokens is not None and tokens.local <= 0:
            if not tokens.exhausted:
                await self._fill(principal.key_id, budget, Resource.tokens, tokens)
            if tokens.local <= 0:
                raise self._refusal(Resource.tokens, budget, now)
        requests = budget.requests
        if requests is not None:
            if requests.local <= 0:
                if not requests.exhausted:
                    await self._fill(principal.key_id, budget, Resource.requests, requests)
                if requests.local <= 0:
                    raise self._refusal(Resource.requests, budget, now)
            requests.local -= 1
            self._maybe_refill(principal.key_id, budget, Resource.requests, requests)
        return self._headers(budget, now)

    def charge(self, principal: Principal, tokens: int) -> None:
        """Charge a finished request's tokens to its key (the current window)."""
        if principal.tpm is None or tokens <= 0:
            return
        budget = self._budget(principal, self._clock())
        pool = budget.tokens
        assert pool is not None
        pool.local -= tokens
        self._maybe_refill(principal.key_id, budget, Resource.tokens, pool)

    def _budget(self, principal: Principal, now: float) -> _Budget:
        window = int(now // WINDOW_S)
        budget = self._budgets.get(principal.key_id)
        if budget is not None and budget.window == window:
            return budget
        if len(self._budgets) >= self._max_keys:
            self._budgets = {k: b for k, b in self._budgets.items() if b.window == window}
        debt = min(0, budget.tokens.local) if budget is not None and budget.tokens is not None else 0
        budget = _Budget(window, self._pool(principal.rpm), self._pool(principal.tpm))
        if budget.tokens is not None:
            budget.tokens.local = debt  # tokens charged after the window they were admitted in
        budget.limits = [
            (_LIMIT_HEADER[r], b"%d" % pool.limit)
            for r, pool in ((Resource.requests, budget.requests), (Resource.tokens, budget.tokens))
            if pool is not None
        ]
        self._budgets[principal.key_id] = budget
        return budget

    def _pool(self, limit: int | None) -> _Pool | None:
        if limit is None:
            return None
        return _Pool(limit=limit, chunk=max(1, math.ceil(limit * self._fraction)))

    def _headers(self, budget: _Budget, now: float) -> Headers:
        reset = duration((budget.window + 1) * WINDOW_S - now).encode()
        headers = list(budget.limits)
        for resource, pool in ((Resource.requests, budget.requests), (Resource.tokens, budget.tokens)):
            if pool is not None:
                remaining = max(0, pool.limit - pool.granted_total + max(0, pool.local))
                headers.append((_REMAINING_HEADER[resource], b"%d" % remaining))
                headers.append((_RESET_HEADER[resource], reset))
        return headers

    def _refusal(self, resource: Resource, budget: _Budget, now: float) -> RateLimited:
        pool = budget.requests if resource is Resource.requests else budget.tokens
        assert pool is not None
        wait = (budget.window + 1) * WINDOW_S - now
        headers = {k.decode(): v.decode() for k, v in self._headers(budget, now)}
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        per = "requests per min (RPM)" if resource is Resource.requests else "tokens per min (TPM)"
        return RateLimited(
            f"Rate limit reached for this API key on {per}: Limit {pool.limit}. "
            f"Please try again in {duration(wait)}.",
            type_=resource.value,
            headers=headers,
        )

    # ------------------------------------------------------------------ leases
    def _maybe_refill(self, key_id: str, budget: _Budget, resource: Resource, pool: _Pool) -> None:
        if pool.local * 2 < pool.chunk and not pool.exhausted and pool.lease is None:
            task = asyncio.get_running_loop().create_task(self._lease(key_id, budget, resource, pool))
            pool.lease = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self, key_id: str, budget: _Budget, resource: Resource, pool: _Pool) -> None:
        """Wait for a lease (the one under way, or a new one); a second one if others spent it."""
        for _ in range(2):
            task = pool.lease
            if task is None:
                task = asyncio.get_running_loop().create_task(self._lease(key_id, budget, resource, pool))
                pool.lease = task
            await asyncio.shield(task)
            if pool.local > 0 or pool.exhausted:
                return

    async def _lease(self, key_id: str, budget: _Budget, resource: Resource, pool: _Pool) -> None:
        want = pool.chunk + max(0, -pool.local)  # a token debt is leased on top of the chunk
        try:
            granted, total = await lease(self._engine, key_id, budget.window, resource, want, pool.limit)
        except Exception as exc:
            logger.warning(
                "ratelimit.lease_failed key_id=%s resource=%s error=%s; this replica enforces the limit alone",
                key_id,
                resource.value,
                type(exc).__name__,
            )
            granted, total = max(0, pool.limit - pool.granted_total), pool.limit
        finally:
            pool.lease = None
        pool.granted_total = total
        pool.local += granted
        if granted < want:
            pool.exhausted = True

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def lease(
    engine: AsyncEngine, key_id: str, window: int, resource: Resource, want: int, limit: int
) -> tuple[int, int]:
    """Take up to `want` of `resource` from the key's budget for `window`, atomically.

    Returns (granted, granted in total by every replica so far). Never grants past `limit`."""
    granted_col, last_col = _GRANTED[resource], _LAST[resource]
    room = limit - granted_col
    grant = sa.case((room < want, room), else_=want)
    # In an UPDATE every right-hand side reads the row as it was: `last` and `granted` see the same
    # old value, and the row lock serialises concurrent leases of the same key and window.
    update = (
        sa.update(_TABLE)
        .where(_TABLE.c.key_id == key_id, _TABLE.c.window == window, granted_col < limit)
        .values({last_col.key: grant, granted_col.key: granted_col + grant})
        .returning(_TABLE.c[last_col.key], _TABLE.c[granted_col.key])
    )
    async with engine.begin() as conn:
        row = (await conn.execute(update)).first()
        if row is not None:
            return int(row[0]), int(row[1])
        first = min(want, limit)
        values = {
            "key_id": key_id,
            "window": window,
            "requests_granted": 0,
            "tokens_granted": 0,
            "last_requests_grant": 0,
            "last_tokens_grant": 0,
            granted_col.key: first,
            last_col.key: first,
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        inserted = (
            await conn.execute(
                dialect.insert(_TABLE).values(values).on_conflict_do_nothing().returning(_TABLE.c.window)
            )
        ).first()
        if inserted is not None:
            # a new window: the key's older rows are of no further use
            await conn.execute(sa.delete(_TABLE).where(_TABLE.c.key_id == key_id, _TABLE.c.window < window))
            return first, first
        # another replica created the row meanwhile: lease from it, or it is already spent
        row = (await conn.execute(update)).first()
        if row is not None:
            return int(row[0]), int(row[1])
        total = await conn.scalar(
            sa.select(_TABLE.c[granted_col.key]).where(_TABLE.c.key_id == key_id, _TABLE.c.window == window)
        )
        return 0, int(total or limit)
