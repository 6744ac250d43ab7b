"""The upstream clients the benchmark measures under the same gateway (bench-only).

Each variant offers what app/gateway/proxy.py uses of app.gateway.upstream.UpstreamClient
(`url`, `post`, `busy`, `aclose`; responses with `status`, `headers`, `read`, `next_data`,
`aclose`), so only the HTTP client differs between the gateway processes of one run:

- `aiohttp`: the production client, app/gateway/upstream.py (aiohttp ClientSession).
- `httpx_aiohttp`: httpx.AsyncClient over httpx-aiohttp's AiohttpTransport (the transport the
  openai SDK vendors for `DefaultAioHttpClient`).
- `httpx`: plain httpx.AsyncClient (httpcore's pool).
- `legacy`: the hand-written asyncio.Protocol + httptools client the gateway had before
  (bench/proxy/legacy_upstream.py).

Only the happy path is adapted with care: the conformance suite (tests/gateway) runs against
the production client alone.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from app.config import Settings
from app.gateway.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
)
from app.outbound import Outbound

VARIANTS = ("aiohttp", "httpx_aiohttp", "httpx", "legacy")


def _translate(exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(str(exc) or "timeout")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError(str(exc))
    return UpstreamDisconnected(str(exc) or type(exc).__name__)


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = [
            (name.lower(), value)
            for name, value in response.headers.raw
            if name.lower() != b"content-encoding"
        ]
        self._chunks: AsyncIterator[bytes] | None = None

    async def read(self) -> bytes:
        try:
            data = await self._response.aread()
        except httpx.HTTPError as exc:
            raise _translate(exc) from None
        finally:
            await self._response.aclose()
        return data

    async def next_data(self) -> bytes | None:
        if self._chunks is None:
            self._chunks = self._response.aiter_bytes()
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise _translate(exc) from None

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """httpx.AsyncClient, with its own transport (httpcore) or httpx-aiohttp's."""

    def __init__(self, settings: Settings, outbound: Outbound, *, over_aiohttp: bool) -> None:
        cfg = settings.inference
        self.base_url = settings.wandb_base_url
        self.max_connections = cfg.max_connections
        limits = httpx.Limits(
            max_connections=cfg.max_connections,
            max_keepalive_connections=cfg.max_connections,
            keepalive_expiry=cfg.keepalive_expiry_s,
        )
        transport: httpx.AsyncBaseTransport | None = None
        if over_aiohttp:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(verify=outbound.ssl, limits=limits, trust_env=False)
        self._client = httpx.AsyncClient(
            limits=limits,
            timeout=httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.pool_timeout_s),
            verify=outbound.ssl,
            trust_env=False,
            transport=transport,
            proxy=outbound.proxy.url_with_credentials if outbound.proxy else None,
        )
        self.busy = 0

    def url(self, path: str) -> str:
        return self.base_url + path

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _HttpxResponse:
        request = self._client.build_request("POST", url, content=body, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc) from None
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()


class _LegacyResponse:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        data: bytes = await self._response.read()
        return data

    async def next_data(self) -> bytes | None:
        data: bytes | None = await self._response.next_data()
        return data

    async def aclose(self) -> None:
        await self._response.aclose()


class LegacyUpstream:
    """The old hand-written client, behind the same interface (it took a prebuilt request head)."""

    def __init__(self, settings: Settings, outbound: Outbound) -> None:
        from bench.proxy.legacy_upstream import UpstreamPool

        cfg = settings.inference
        self._pool = UpstreamPool(
            settings.wandb_base_url,
            max_connections=cfg.max_connections,
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            pool_timeout=cfg.pool_timeout_s,
            keepalive_expiry=cfg.keepalive_expiry_s,
            ssl_context=outbound.ssl if isinstance(outbound.ssl, ssl.SSLContext) else None,
        )
        self.busy = 0

    def url(self, path: str) -> str:
        return str(self._pool.url(path))

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _LegacyResponse:
        lines = [f"POST {url} HTTP/1.1", f"Host: {self._pool.host_header}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return _LegacyResponse(await self._pool.request(head, body))

    async def aclose(self) -> None:
        await self._pool.aclose()


def factory(name: str) -> Any:
    """An `open_upstream(settings, outbound)` for app.gateway.lifecycle."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown client {name!r}; choose one of {', '.join(VARIANTS)}")
    from app.gateway import lifecycle

    production = lifecycle.open_upstream  # taken before serve_variant.py replaces it

    def open_upstream(settings: Settings, outbound: Outbound) -> Any:
        if name == "aiohttp":
            return production(settings, outbound)
        if name == "legacy":
            return LegacyUpstream(settings, outbound)
        return HttpxUpstream(settings, outbound, over_aiohttp=name == "httpx_aiohttp")

    return open_upstream


__all__ = ["VARIANTS", "HttpxUpstream", "LegacyUpstream", "UpstreamClient", "factory"]
