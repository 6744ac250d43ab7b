"""`GET /v1/usage`: requests, errors and tokens per key, model and day, from the request log.

The request log (`gateway_requests`, app/gateway/writer.py) has one row per chat completion,
streamed or not, with the tokens the upstream reported (a stream's from its usage chunk), so
usage is an aggregate over it, not a second count that could disagree. It covers what the log
keeps (`INFERENCE__REQUEST_LOG_RETENTION_DAYS`) and lags the answers by the writer's flush
interval. Any key may read its own usage; reading another key's, or every key's, needs the
`admin` scope. The answer is bounded: at most `MAX_DAYS` days per query and `limit` buckets,
`has_more` saying that a narrower filter is needed for the rest.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import ANY_KEY, check_scope, require_scope
from app.deps import SessionDep
from app.errors import BadRequest, error_responses
from app.gateway.models import GatewayRequest
from app.keys.scopes import Scope
from app.keys.service import Principal, key_names
from app.pagination import ListPage

MAX_DAYS = 93
DEFAULT_DAYS = 7


class UsageBucket(BaseModel):
    object: str = "usage.bucket"
    date: str = Field(description="the UTC day, YYYY-MM-DD")
    key_id: str
    key_name: str | None = None
    model: str | None = Field(None, description="the model name the requests asked for")
    requests: int
    errors: int = Field(description="requests answered with a status >= 400 (429s included)")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _day(session: AsyncSession) -> sa.ColumnElement[str]:
    column = GatewayRequest.__table__.c.created_at
    if session.get_bind().dialect.name == "postgresql":
        # timestamptz → the UTC calendar day, whatever the session's TimeZone
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.date(column)  # SQLite keeps naive UTC (app/db.UTCDateTime)


async def usage_buckets(
    session: AsyncSession,
    *,
    key_id: str | None,
    model: str | None,
    start: dt.date,
    end: dt.date,
    limit: int,
) -> tuple[list[UsageBucket], bool]:
    """Buckets (day, key, model) between `start` and `end` (inclusive, UTC), oldest first."""
    t = GatewayRequest.__table__.c
    day = _day(session).label("day")
    since = dt.datetime.combine(start, dt.time(), dt.UTC)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    query = (
        sa.select(
            day,
            t.key_id,
            t.model_requested,
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((t.status_code >= 400, 1), else_=0)).label("errors"),
            sa.func.coalesce(sa.func.sum(t.prompt_tokens), 0).label("prompt"),
            sa.func.coalesce(sa.func.sum(t.completion_tokens), 0).label("completion"),
        )
        .where(t.key_id.is_not(None), t.created_at >= since, t.created_at < until)
        .group_by(day, t.key_id, t.model_requested)
        .order_by(day, t.key_id, t.model_requested)
        .limit(limit + 1)
    )
    if key_id is not None:
        query = query.where(t.key_id == key_id)
    if model is not None:
        query = query.where(t.model_requested == model)
    rows = (await session.execute(query)).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    names = await key_names(session, sorted({r.key_id for r in rows}))
    buckets = [
        UsageBucket(
            date=str(r.day),
            key_id=r.key_id,
            key_name=names.get(r.key_id, r.key_id if r.key_id.startswith("bootstrap-") else None),
            model=r.model_requested,
            requests=int(r.requests),
            errors=int(r.errors or 0),
            prompt_tokens=int(r.prompt),
            completion_tokens=int(r.completion),
            total_tokens=int(r.prompt) + int(r.completion),
        )
        for r in rows
    ]
    return buckets, has_more


router = APIRouter(tags=["inference"], dependencies=[require_scope(ANY_KEY)])


@router.get("/v1/usage", response_model=ListPage[UsageBucket], responses=error_responses(400, 401, 403))
async def get_usage(
    request: Request,
    session: SessionDep,
    key_id: Annotated[
        str | None, Query(max_length=40, description="a key's id; admin scope for another key's")
    ] = None,
    model: Annotated[str | None, Query(max_length=500)] = None,
    start_date: Annotated[
        dt.date | None, Query(description=f"UTC day; default {DEFAULT_DAYS - 1} days before end")
    ] = None,
    end_date: Annotated[dt.date | None, Query(description="UTC day, inclusive; default today")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListPage[UsageBucket]:
    """Chat-completion requests, errors and tokens per key, model and UTC day (streams
    included), from the request log. Without the `admin` scope a key sees only its own usage;
    with it, every key's unless `key_id` narrows it. At most 93 days per query."""
    principal: Principal = request.state.principal
    if key_id is None and Scope.admin not in principal.scopes:
        key_id = principal.key_id
    if key_id is not None and key_id != principal.key_id:
        check_scope(principal, Scope.admin)
    end = end_date or dt.datetime.now(dt.UTC).date()
    start = start_date or end - dt.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise BadRequest("start_date is after end_date", param="start_date")
    if (end - start).days >= MAX_DAYS:
        raise BadRequest(f"at most {MAX_DAYS} days per query; narrow start_date/end_date", param="start_date")
    buckets, has_more = await usage_buckets(
        session, key_id=key_id, model=model, start=start, end=end, limit=limit
    )
    return ListPage.of(buckets, has_more)
