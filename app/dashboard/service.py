"""What only the dashboard needs: its login sessions and CSRF tokens, and the overview's
aggregates (counts and percentiles no API route answers). Everything else the pages show is
read through the same service functions as the API (app/jobs, app/registry, app/datasets,
app/queue). Functions take a session, flush and never commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard.models import DashboardSession
from app.datasets.models import Dataset, DatasetStatus
from app.db import utcnow
from app.errors import BadRequest
from app.gateway.models import CapturedCompletion, GatewayRequest
from app.jobs.models import FineTuningJob, JobStatus
from app.keys.service import Authenticator, Principal, hash_key

TOKEN_BYTES = 32
CAPTURES_PAGE = 20
UNNUMBERED_STEP = 2**31 - 1  # captures without a step sort after the numbered ones
# latency percentiles are computed for this many of the hour's busiest models (two queries each)
PERCENTILE_MODELS = 10


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: an HMAC of its (secret, HttpOnly) cookie token, so a page
    from another origin can neither read nor compute it (OWASP CSRF cheat sheet, "signed
    double-submit cookie"), and nothing more is stored."""
    return hmac.new(session_token.encode(), b"dashboard-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(csrf_token(session_token), submitted or "")


@dataclass(frozen=True)
class Login:
    token: str  # goes in the cookie, never stored
    principal: Principal
    expires_at: dt.datetime


async def log_in(
    session: AsyncSession, authenticator: Authenticator, api_key: str, *, ttl_s: float
) -> Login | None:
    """A new session for a valid key (None otherwise). Only hashes are stored."""
    key = api_key.strip()
    if not key:
        return None
    principal = await authenticator.verify(key)
    if principal is None:
        return None
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = utcnow() + dt.timedelta(seconds=ttl_s)
    session.add(
        DashboardSession(
            token_hash=_token_hash(token),
            key_id=principal.key_id,
            key_hash=hash_key(key),
            expires_at=expires_at,
        )
    )
    # expired rows of anyone go with each login (indexed): the table stays as small as its users
    await session.execute(sa.delete(DashboardSession).where(DashboardSession.expires_at < utcnow()))
    await session.flush()
    return Login(token=token, principal=principal, expires_at=expires_at)


@dataclass(frozen=True)
class StoredSession:
    key_id: str
    key_hash: str


async def find_session(session: AsyncSession, token: str | None) -> StoredSession | None:
    """The live (unexpired) session a cookie's token names."""
    if not token:
        return None
    row = await session.get(DashboardSession, _token_hash(token))
    if row is None or row.expires_at <= utcnow():
        return None
    return StoredSession(row.key_id, row.key_hash)


async def session_principal(authenticator: Authenticator, found: StoredSession | None) -> Principal | None:
    """Who a session belongs to: None without one, or when its key no longer verifies (revoked:
    within AUTH__KEY_CACHE_TTL_S, as for the API). Call it with no transaction open: a stored
    key is looked up in the authenticator's own session (SQLite has one writer at a time)."""
    if found is None:
        return None
    principal = await authenticator.verify_digest(found.key_hash)
    if principal is None or principal.key_id != found.key_id:
        return None
    return principal


async def log_out(session: AsyncSession, token: str | None) -> None:
    if token:
        await session.execute(
            sa.delete(DashboardSession).where(DashboardSession.token_hash == _token_hash(token))
        )
        await session.flush()


# -- overview ---------------------------------------------------------------------------------


async def jobs_by_status(session: AsyncSession) -> dict[str, int]:
    """Every status with its count (zeros included), from the (status, created_at) index."""
    rows = await session.execute(
        sa.select(FineTuningJob.status, sa.func.count()).group_by(FineTuningJob.status)
    )
    counts = {str(s): 0 for s in JobStatus}
    counts.update({status: int(n) for status, n in rows.tuples().all()})
    return counts


async def datasets_building(session: AsyncSession, *, limit: int = 20) -> list[Dataset]:
    rows = await session.scalars(
        sa.select(Dataset)
        .where(Dataset.status.in_([DatasetStatus.QUEUED, DatasetStatus.BUILDING]))
        .order_by(Dataset.created_at.desc())
        .limit(limit)
    )
    return list(rows.all())


@dataclass
class ModelTraffic:
    model: str
    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class GatewayHour:
    minutes: list[int]  # unix seconds of each minute's start, oldest first (60 of them)
    requests_per_minute: list[int]
    captures_per_minute: list[int]
    by_model: list[ModelTraffic]
    total: int


def _minute(value: dt.datetime) -> int:
    return int(value.timestamp()) // 60 * 60


def _minute_bucket(session: AsyncSession) -> sa.ColumnElement[object]:
    """The request's minute, computed by the database: SQLite keeps UTC timestamps as
    'YYYY-MM-DD HH:MM:SS.ffffff' text, Postgres as timestamptz."""
    if session.get_bind().dialect.name == "sqlite":
        return sa.func.substr(GatewayRequest.created_at, 1, 16)
    return sa.func.date_trunc("minute", sa.func.timezone("UTC", GatewayRequest.created_at))


def _bucket_start(key: object) -> int:
    if isinstance(key, dt.datetime):
        return _minute(key if key.tzinfo else key.replace(tzinfo=dt.UTC))
    return _minute(dt.datetime.strptime(str(key), "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC))


async def gateway_last_hour(session: AsyncSession, *, now: dt.datetime | None = None) -> GatewayHour:
    """The gateway's request log over the last hour (`gateway_requests.created_at` index):
    requests and captures per minute, and per model the count, error rate and p50/p99 latency.
    A capture is a successful chat request that carried `metadata.trajectory_id` (what the
    capture writer stores), counted from the same log so no scan of the captures table is needed."""
    end = now or utcnow()
    # the last 60 whole minutes, the current one included: every request counted is in a bucket
    first = _minute(end) - 59 * 60
    start = dt.datetime.fromtimestamp(first, dt.UTC)
    minutes = [first + 60 * i for i in range(60)]
    index = {m: i for i, m in enumerate(minutes)}
    requests = [0] * 60
    captures = [0] * 60
    by_model: dict[str, ModelTraffic] = {}
    window = GatewayRequest.created_at >= start
    model_name = sa.func.coalesce(GatewayRequest.model_served, GatewayRequest.model_requested, "(none)")
    failed = sa.case((GatewayRequest.status_code >= 400, 1), else_=0)
    captured = sa.case(
        (sa.and_(GatewayRequest.trajectory_id.is_not(None), GatewayRequest.status_code < 400), 1), else_=0
    )
    bucket = _minute_bucket(session)
    # one scan for both breakdowns: at most 60 × models rows come back
    grouped = await session.execute(
        sa.select(bucket, model_name, sa.func.count(), sa.func.sum(failed), sa.func.sum(captured))
        .where(window)
        .group_by(bucket, model_name)
    )
    total = 0
    for key, model, count, errors, caps in grouped.tuples().all():
        total += int(count)
        slot = index.get(_bucket_start(key))
        if slot is not None:
            requests[slot] += int(count)
            captures[slot] += int(caps or 0)
        traffic = by_model.setdefault(str(model), ModelTraffic(str(model)))
        traffic.requests += int(count)
        traffic.errors += int(errors or 0)
    # p50 and p99, exact (nearest rank: the ⌈q·n⌉-th smallest), of the busiest models: the
    # database sorts each model's latencies and returns one row (ORDER BY … OFFSET), measured
    # faster on SQLite than window functions or fetching the latencies (bench/dashboard/README.md)
    for traffic in sorted(by_model.values(), key=lambda t: -t.requests)[:PERCENTILE_MODELS]:
        for q in (0.5, 0.99):
            rank = max(1, math.ceil(q * traffic.requests))
            value = await session.scalar(
                sa.select(GatewayRequest.latency_ms)
                .where(window, model_name == traffic.model)
                .order_by(GatewayRequest.latency_ms)
                .offset(rank - 1)
                .limit(1)
            )
            if q == 0.5:
                traffic.p50_ms = value
            else:
                traffic.p99_ms = value
    ordered = sorted(by_model.values(), key=lambda t: (-t.requests, t.model))
    return GatewayHour(minutes, requests, captures, ordered, total)


# -- captures ---------------------------------------------------------------------------------


async def trajectory_captures(
    session: AsyncSession, trajectory_id: str, *, after: str | None, limit: int = CAPTURES_PAGE
) -> tuple[list[CapturedCompletion], bool]:
    """A trajectory's captured completions in the order the dataset builder reads them (step,
    unnumbered last, then time), keyset-paged; found through the (trajectory_id, step,
    created_at) index, so a search costs the same with a million captures of others."""
    step = sa.func.coalesce(CapturedCompletion.step, UNNUMBERED_STEP)
    query = sa.select(CapturedCompletion).where(CapturedCompletion.trajectory_id == trajectory_id)
    if after is not None:
        anchor = await session.get(CapturedCompletion, after)
        if anchor is None or anchor.trajectory_id != trajectory_id:
            raise BadRequest(
                f"after: no capture {after!r} of trajectory {trajectory_id!r}",
                param="after",
                code="invalid_cursor",
            )
        anchor_step = anchor.step if anchor.step is not None else UNNUMBERED_STEP
        query = query.where(
            sa.or_(
                step > anchor_step,
                sa.and_(step == anchor_step, CapturedCompletion.created_at > anchor.created_at),
                sa.and_(
                    step == anchor_step,
                    CapturedCompletion.created_at == anchor.created_at,
                    CapturedCompletion.id > anchor.id,
                ),
            )
        )
    query = query.order_by(step, CapturedCompletion.created_at, CapturedCompletion.id).limit(limit + 1)
    rows = list((await session.scalars(query)).all())
    return rows[:limit], len(rows) > limit
