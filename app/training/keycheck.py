"""Does W&B accept this process's key? One cheap authenticated read, cached.

The call: `GET {WANDB_BASE_URL}/preview/models/{id}/checkpoints?limit=1&order=desc` for a model
id that cannot exist. It is W&B's published Training API ("List Model Checkpoints",
wandb/docs training/api-reference/openapi.json, `security: HTTPBearer` like every /v1/preview
route) and the very request openpipe-art's `ServerlessBackend._get_step` makes
(art/serverless/backend.py:155-161). It is read-only, has no body and creates nothing; W&B
authenticates before it looks the model up, so 401/403 means the key is refused and 200/404
that it is accepted. Timeouts, connection errors and 5xx say nothing about the key
(`unreachable`). It is made with httpx directly: the API process must not import ART (seconds,
~190 MB) just to answer /health.

Answers are cached for `WORKER__WANDB_KEY_CHECK_TTL_S`; concurrent callers share one call, and
a stale answer is refreshed in the background while the old one is served.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

import httpx

from app.config import Settings
from app.db import utcnow
from app.outbound import Outbound
from app.queue.models import WandbKeyStatus

logger = logging.getLogger(__name__)
NO_MODEL_ID = "00000000-0000-0000-0000-000000000000"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KeyCheck:
    status: WandbKeyStatus
    checked_at: dt.datetime | None = None
    detail: str | None = None

    def public(self) -> dict[str, str | None]:
        return {
            "status": self.status.value,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "detail": self.detail,
        }


async def check_wandb_key(http: httpx.AsyncClient, base_url: str, api_key: str) -> KeyCheck:
    url = f"{base_url.rstrip('/')}/preview/models/{NO_MODEL_ID}/checkpoints"
    try:
        response = await http.get(
            url,
            params={"limit": 1, "order": "desc"},
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return KeyCheck(WandbKeyStatus.UNREACHABLE, utcnow(), f"{type(exc).__name__}: {str(exc)[:200]}")
    status = response.status_code
    if status in (401, 403):
        return KeyCheck(WandbKeyStatus.REJECTED, utcnow(), f"HTTP {status}: {response.text[:200]}")
    if status < 500 and status != 429:
        return KeyCheck(WandbKeyStatus.ACCEPTED, utcnow(), None)
    return KeyCheck(WandbKeyStatus.UNREACHABLE, utcnow(), f"HTTP {status}")


class WandbKeyChecker:
    """The cached answer for one process's key."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._http = http
        self._own_http = http is None
        self._last = KeyCheck(
            WandbKeyStatus.UNCHECKED if settings.wandb_configured else WandbKeyStatus.NOT_CONFIGURED
        )
        self._task: asyncio.Task[KeyCheck] | None = None

    @property
    def last(self) -> KeyCheck:
        return self._last

    def _stale(self) -> bool:
        if self._last.checked_at is None:
            return True
        age = (utcnow() - self._last.checked_at).total_seconds()
        return age > self._settings.worker.wandb_key_check_ttl_s

    async def _check(self) -> KeyCheck:
        key = self._settings.wandb_api_key
        assert key is not None
        if self._http is None:
            # the same proxy and trusted CAs as the training client and the gateway (app/outbound.py)
            route = Outbound.for_url(self._settings.wandb_base_url, self._settings.outbound)
            self._http = httpx.AsyncClient(
                follow_redirects=False,
                verify=route.ssl,
                trust_env=False,
                proxy=route.proxy.url_with_credentials if route.proxy is not None else None,
            )
        result = await check_wandb_key(self._http, self._settings.wandb_base_url, key.get_secret_value())
        if result.status != self._last.status:
            logger.info("wandb.key_check status=%s detail=%s", result.status, result.detail)
        self._last = result
        return result

    async def current(self, *, wait_s: float = 3.0) -> KeyCheck:
        """The cached answer; a stale one starts a refresh, awaited up to `wait_s` only when
        there is no answer at all yet."""
        if not self._settings.wandb_configured:
            return self._last
        if self._stale() and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._check(), name="wandb-key-check")
        if self._last.checked_at is None and self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=wait_s)
            if self._task in done and self._task.exception() is not None:
                logger.warning("wandb.key_check_failed error=%s", self._task.exception())
        return self._last

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._own_http and self._http is not None:
            await self._http.aclose()
