"""Webhooks: `fine_tuning.job.succeeded|failed|cancelled` and the rollouts' decisions
(`rollout.promoted|rolled_back|expired|cancelled`, app/rollouts/service.py), signed the Standard Webhooks way.

Deliveries are an outbox: rows staged in the transaction that ends the job, then sent by a
dispatcher (in every worker) with retries and exponential backoff. Each row records its
attempts, last status code and error. Receivers verify with the `webhook-id`,
`webhook-timestamp` and `webhook-signature` headers (`v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`), e.g. with the openai SDK's `client.webhooks.unwrap`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import to_unix, utcnow
from app.ids import new_id
from app.jobs.models import FineTuningJob, JobStatus, WebhookDelivery

logger = logging.getLogger(__name__)

EVENT_TYPES: dict[str, str] = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
}
PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "failed"


def secret_bytes(secret: str) -> bytes:
    """`whsec_<base64>` secrets are base64 keys (Standard Webhooks); anything else is used as is."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def enqueue_job_notification(
    session: AsyncSession, settings: Settings, job: FineTuningJob
) -> list[WebhookDelivery]:
    """Stage one delivery per configured URL (global + the job's) for the job's terminal status."""
    event_type = EVENT_TYPES.get(job.status)
    if event_type is None:
        return []
    urls = list(dict.fromkeys([*settings.training.webhook_urls, *(job.webhook_urls or [])]))
    return enqueue_event(session, urls, event_type, {"id": job.id}, job_id=job.id)


def enqueue_event(
    session: AsyncSession,
    urls: list[str],
    event_type: str,
    data: dict[str, object],
    *,
    job_id: str | None = None,
    rollout_id: str | None = None,
) -> list[WebhookDelivery]:
    """Stage one delivery of one event (`{id, object: "event", created_at, type, data}`) per URL,
    in the caller's transaction; the dispatcher sends them (jobs' and rollouts' events alike)."""
    if not urls:
        return []
    message_id = new_id("evt")
    now = utcnow()
    payload = {
        "id": message_id,
        "object": "event",
        "created_at": to_unix(now),
        "type": event_type,
        "data": data,
    }
    rows = [
        WebhookDelivery(
            id=new_id("whd"),
            message_id=message_id,
            job_id=job_id,
            rollout_id=rollout_id,
            event_type=event_type,
            url=url,
            payload=payload,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for url in urls
    ]
    session.add_all(rows)
    return rows


async def _claim_due(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, limit: int
) -> list[tuple[str, str, str, dict[str, object]]]:
    """Take due deliveries and push their next attempt out, so other dispatchers skip them."""
    now = utcnow()
    hold = dt.timedelta(seconds=settings.training.webhook_timeout_s * 2 + 5)
    async with sessionmaker() as session:
        rows = (
            await session.scalars(
                sa.select(WebhookDelivery)
                .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        claimed = []
        for row in rows:
            row.attempts += 1
            row.next_attempt_at = now + hold
            claimed.append((row.id, row.message_id, row.url, dict(row.payload)))
        await session.commit()
    return claimed


async def _send(
    http: httpx.AsyncClient,
    secret: str,
    message_id: str,
    url: str,
    payload: dict[str, object],
    timeout_s: float,
) -> tuple[int | None, str | None]:
    body = orjson.dumps(payload)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "training-control-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
    try:
        response = await http.post(url, content=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


async def deliver_due(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    limit: int = 20,
    observe: Callable[[str], None] | None = None,
) -> int:
    """Send every due delivery once; returns how many were attempted. `observe` is told each
    attempt's outcome: delivered, retry or failed (gave up)."""
    if settings.training.webhook_secret is None:
        return 0
    secret = settings.training.webhook_secret.get_secret_value()
    claimed = await _claim_due(sessionmaker, settings, limit)
    for delivery_id, message_id, url, payload in claimed:
        status, error = await _send(
            http, secret, message_id, url, payload, settings.training.webhook_timeout_s
        )
        async with sessionmaker() as session:
            row = await session.get(WebhookDelivery, delivery_id)
            if row is None:
                continue
            row.last_status_code = status
            row.last_error = error
            now = utcnow()
            if error is None:
                row.status, row.delivered_at, row.next_attempt_at = DELIVERED, now, None
                outcome = "delivered"
                logger.info("webhook.delivered id=%s job_id=%s url=%s", row.id, row.job_id, url)
            elif row.attempts >= settings.training.webhook_max_attempts:
                row.status, row.next_attempt_at = GAVE_UP, None
                outcome = "failed"
                logger.warning(
                    "webhook.gave_up id=%s job_id=%s url=%s error=%s", row.id, row.job_id, url, error
                )
            else:
                outcome = "retry"
                delay = settings.training.webhook_backoff_s * 2 ** (row.attempts - 1)
                row.next_attempt_at = now + dt.timedelta(seconds=delay)
                logger.info(
                    "webhook.retry id=%s attempt=%s in_s=%.1f error=%s", row.id, row.attempts, delay, error
                )
            await session.commit()
        if observe is not None:
            observe(outcome)
    return len(claimed)
